"""Record schemas for prompts, unlabeled pairs and preferences, and their parsing from raw rows.

Accepted shapes (users bring TRL data unchanged):
- prompt:      {"prompt": str | [messages]}  (+ optional "id", "reference")
- pair:        {"prompt", "response_a", "response_b"}  (+ optional "id")
- preference:  TRL standard {"prompt", "chosen", "rejected"} or conversational (lists of messages,
               where chosen/rejected hold the assistant turn(s)); optional "p_chosen" soft label in [0, 1].
A message list is [{"role": "system"|"user"|"assistant", "content": str}, ...].

Every parse error is a `DataError` naming file, row and field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

Text = str | list[dict[str, str]]  # plain text or a list of chat messages


class DataError(ValueError):
    """Bad input: `file:row:field: problem`."""

    def __init__(self, file: str, row: int, field_name: str, problem: str):
        self.file, self.row, self.field, self.problem = file, row, field_name, problem
        super().__init__(f"{file}:{row}:{field_name}: {problem}")


def content_id(*parts: Any) -> str:
    """Stable 16-hex-digit id from content (dedup and resume key); dict key order does not matter."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def text_of(value: Text) -> str:
    """Flatten a message list to plain text (for length checks and equality)."""
    if isinstance(value, str):
        return value
    return "\n".join(f"{m['role']}: {m['content']}" for m in value)


@dataclass
class PromptRecord:
    prompt: Text
    id: str = ""
    reference: str | None = None

    def __post_init__(self):
        self.id = self.id or content_id(self.prompt)


@dataclass
class PairRecord:
    prompt: Text
    response_a: Text
    response_b: Text
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # Order-insensitive id: (a, b) and (b, a) are the same comparison.
        self.id = self.id or content_id(self.prompt, sorted([text_of(self.response_a), text_of(self.response_b)]))


@dataclass
class PreferenceRecord:
    prompt: Text
    chosen: Text
    rejected: Text
    id: str = ""
    p_chosen: float = 1.0  # soft label P(chosen > rejected); 1.0 for a hard label
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.id = self.id or content_id(self.prompt, sorted([text_of(self.chosen), text_of(self.rejected)]))

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("meta"))
        return row


KIND_FIELDS = {
    "prompts": ("prompt",),
    "pairs": ("prompt", "response_a", "response_b"),
    "preferences": ("prompt", "chosen", "rejected"),
}


def detect_kind(row: dict[str, Any]) -> str | None:
    """Which schema a row belongs to, from its fields (preferences > pairs > prompts)."""
    for kind in ("preferences", "pairs", "prompts"):
        if all(k in row for k in KIND_FIELDS[kind]):
            return kind
    return None


def _check_text(value: Any, file: str, row: int, name: str, allow_messages: bool = True) -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(file, row, name, "empty text")
        return value
    if allow_messages and isinstance(value, list):
        if not value:
            raise DataError(file, row, name, "empty message list")
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(file, row, f"{name}[{i}]", "expected {'role': str, 'content': str}")
            if m["role"] not in ("system", "user", "assistant"):
                raise DataError(file, row, f"{name}[{i}].role", f"unknown role {m['role']!r}")
        if not any(m["content"].strip() for m in value):
            raise DataError(file, row, name, "empty text")
        return value
    expected = "a string or a list of messages" if allow_messages else "a string"
    raise DataError(file, row, name, f"wrong type: expected {expected}, got {type(value).__name__}")


def _require(row: dict[str, Any], name: str, file: str, n: int) -> Any:
    if name not in row or row[name] is None:
        raise DataError(file, n, name, "missing field")
    return row[name]


def _optional_id(row: dict[str, Any], file: str, n: int) -> str:
    value = row.get("id")
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise DataError(file, n, "id", f"wrong type: expected a string, got {type(value).__name__}")
    return str(value)


def parse_prompt(row: dict[str, Any], file: str, n: int) -> PromptRecord:
    prompt = _check_text(_require(row, "prompt", file, n), file, n, "prompt")
    ref = row.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise DataError(file, n, "reference", f"wrong type: expected a string, got {type(ref).__name__}")
    return PromptRecord(prompt=prompt, id=_optional_id(row, file, n), reference=ref)


def parse_pair(row: dict[str, Any], file: str, n: int) -> PairRecord:
    prompt = _check_text(_require(row, "prompt", file, n), file, n, "prompt")
    a = _check_text(_require(row, "response_a", file, n), file, n, "response_a")
    b = _check_text(_require(row, "response_b", file, n), file, n, "response_b")
    if text_of(a) == text_of(b):
        raise DataError(file, n, "response_b", "identical to response_a")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "response_a", "response_b", "id")}
    return PairRecord(prompt=prompt, response_a=a, response_b=b, id=_optional_id(row, file, n), meta=meta)


def parse_preference(row: dict[str, Any], file: str, n: int) -> PreferenceRecord:
    prompt = _check_text(_require(row, "prompt", file, n), file, n, "prompt")
    chosen = _check_text(_require(row, "chosen", file, n), file, n, "chosen")
    rejected = _check_text(_require(row, "rejected", file, n), file, n, "rejected")
    if text_of(chosen) == text_of(rejected):
        raise DataError(file, n, "rejected", "identical to chosen")
    p = row.get("p_chosen", 1.0)
    if p is None:
        p = 1.0
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise DataError(file, n, "p_chosen", f"wrong type: expected a number, got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:
        raise DataError(file, n, "p_chosen", f"{p} is outside [0, 1]")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "id", "p_chosen")}
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, id=_optional_id(row, file, n),
                            p_chosen=float(p), meta=meta)


PARSERS = {"prompts": parse_prompt, "pairs": parse_pair, "preferences": parse_preference}
