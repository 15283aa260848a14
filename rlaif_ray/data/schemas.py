"""Record schemas for prompts, unlabeled pairs and preferences, and their parsing from raw rows.

Accepted shapes (users bring TRL data unchanged):
- prompt:      {"prompt": str | [messages]}  (+ optional "id", "reference")
- pair:        {"prompt", "response_a", "response_b"}  (+ optional "id")
- preference:  TRL standard {"prompt", "chosen", "rejected"} or conversational (lists of messages,
               where chosen/rejected hold the assistant turn(s)); optional "p_chosen" soft label in [0, 1].
A message list is [{"role": "system"|"user"|"assistant", "content": str}, ...].

A conversational preference may also omit "prompt" (TRL's implicit-prompt format): the messages
that chosen and rejected share form the prompt.

`check_row` collects every problem of a row (for `validate`); the `parse_*` functions raise the first.
Every problem is a `DataError` naming file, row and field.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

Text = str | list[dict[str, str]]  # plain text or a list of chat messages


class DataError(ValueError):
    """Bad input: `file:row:field: problem`."""

    def __init__(self, file: str, row: int, field_name: str, problem: str):
        self.file, self.row, self.field, self.problem = file, row, field_name, problem
        super().__init__(f"{file}:{row}:{field_name}: {problem}")


def content_id(*parts: Any) -> str:
    """Stable 16-hex-digit id from content (dedup and resume key); dict key order does not matter.

    The hashed bytes are `json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))`,
    as ids of stores written before were made; msgspec writes the same bytes for texts, message lists and
    ints (a test holds them equal) at a sixth of the cost, which a million-pair input pays per row."""
    return hashlib.sha256(_ID_JSON.encode(parts)).hexdigest()[:16]


_ID_JSON = msgspec.json.Encoder(order="sorted")


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
        self.id = self.id or self.content_key()

    def content_key(self) -> str:
        return content_id(self.prompt)


@dataclass
class PairRecord:
    prompt: Text
    response_a: Text
    response_b: Text
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.id = self.id or self.content_key()

    def content_key(self) -> str:
        # Order-insensitive: (a, b) and (b, a) are the same comparison, and a preference over the same
        # two responses gets the same id as its pair (the key that joins labels to pairs).
        return content_id(self.prompt, sorted([text_of(self.response_a), text_of(self.response_b)]))


@dataclass
class PreferenceRecord:
    prompt: Text
    chosen: Text
    rejected: Text
    id: str = ""
    p_chosen: float = 1.0  # soft label P(chosen > rejected); 1.0 for a hard label
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.id = self.id or self.content_key()

    def content_key(self) -> str:
        return content_id(self.prompt, sorted([text_of(self.chosen), text_of(self.rejected)]))

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("meta"))
        return row


@dataclass
class SFTRecord:
    """A supervised example: prompt -> completion (each text or messages), or a whole conversation
    (`messages`, prompt and completion None) whose assistant turns are the completion."""

    prompt: Text | None = None
    completion: Text | None = None
    messages: list[dict[str, str]] | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.id = self.id or content_id(self.prompt, self.completion, self.messages)


KIND_FIELDS = {
    "prompts": ("prompt",),
    "pairs": ("prompt", "response_a", "response_b"),
    "preferences": ("prompt", "chosen", "rejected"),
}


def detect_kind(row: dict[str, Any]) -> str | None:
    """Which schema a row belongs to, from its fields (preferences > pairs > prompts). The prompt is not
    required to decide, so a row missing it is reported as 'prompt: missing field' of the right kind."""
    if "chosen" in row and "rejected" in row:
        return "preferences"
    if "response_a" in row and "response_b" in row:
        return "pairs"
    if "prompt" in row:
        return "prompts"
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
                raise DataError(file, row, f"{name}[{i}]", "wrong type: expected {'role': str, 'content': str}")
            if m["role"] not in ("system", "user", "assistant"):
                raise DataError(file, row, f"{name}[{i}].role", f"unknown role {m['role']!r}")
        if not any(m["content"].strip() for m in value):
            raise DataError(file, row, name, "empty text")
        return value
    expected = "a string or a list of messages" if allow_messages else "a string"
    raise DataError(file, row, name, f"wrong type: expected {expected}, got {type(value).__name__}")


class _RowReader:
    """Reads the fields of one row, collecting every problem instead of stopping at the first."""

    def __init__(self, row: dict[str, Any], file: str, n: int):
        self.row, self.file, self.n = row, file, n
        self.errors: list[DataError] = []

    def fail(self, name: str, problem: str) -> None:
        self.errors.append(DataError(self.file, self.n, name, problem))

    def text(self, name: str) -> Text | None:
        value = self.row.get(name)
        if value is None:
            self.fail(name, "missing field")
            return None
        try:
            return _check_text(value, self.file, self.n, name)
        except DataError as e:
            self.errors.append(e)
            return None

    def different(self, first: str, a: Text | None, second: str, b: Text | None) -> None:
        if a is not None and b is not None and text_of(a) == text_of(b):
            self.fail(second, f"identical to {first}")

    def probability(self, name: str, default: float | None) -> float | None:
        value = self.row.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"wrong type: expected a number, got {type(value).__name__}")
            return None
        if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
            self.fail(name, f"{value} is outside [0, 1]")
            return None
        return float(value)

    def optional_str(self, name: str) -> str | None:
        value = self.row.get(name)
        if value is not None and not isinstance(value, str):
            self.fail(name, f"wrong type: expected a string, got {type(value).__name__}")
            return None
        return value

    def id(self) -> str:
        value = self.row.get("id")
        if value is None:
            return ""
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            self.fail("id", f"wrong type: expected a string, got {type(value).__name__}")
            return ""
        if isinstance(value, str) and not value.strip():
            self.fail("id", "empty text")
            return ""
        return str(value)

    def meta(self, known: tuple[str, ...]) -> dict[str, Any]:
        return {k: v for k, v in self.row.items() if k not in known}


def _split_implicit_prompt(rd: _RowReader) -> None:
    """TRL implicit prompt: chosen/rejected are whole conversations; their shared prefix is the prompt."""
    chosen, rejected = rd.row.get("chosen"), rd.row.get("rejected")
    if rd.row.get("prompt") is not None or not (isinstance(chosen, list) and isinstance(rejected, list)):
        return
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    if k > 0:
        rd.row = {**rd.row, "prompt": chosen[:k], "chosen": chosen[k:], "rejected": rejected[k:]}


def _check_prompt(rd: _RowReader) -> PromptRecord | None:
    prompt, ref, rid = rd.text("prompt"), rd.optional_str("reference"), rd.id()
    return None if rd.errors else PromptRecord(prompt=prompt, id=rid, reference=ref)


def _check_pair(rd: _RowReader) -> PairRecord | None:
    prompt, a, b = rd.text("prompt"), rd.text("response_a"), rd.text("response_b")
    rd.different("response_a", a, "response_b", b)
    rd.probability("p_a", None)  # labeled pairs may carry the judge's P(a > b); kept in meta
    rid = rd.id()
    if rd.errors:
        return None
    return PairRecord(prompt=prompt, response_a=a, response_b=b, id=rid,
                      meta=rd.meta(("prompt", "response_a", "response_b", "id")))


def _check_preference(rd: _RowReader) -> PreferenceRecord | None:
    _split_implicit_prompt(rd)
    prompt, chosen, rejected = rd.text("prompt"), rd.text("chosen"), rd.text("rejected")
    rd.different("chosen", chosen, "rejected", rejected)
    p = rd.probability("p_chosen", 1.0)
    rid = rd.id()
    if rd.errors:
        return None
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, id=rid, p_chosen=p,
                            meta=rd.meta(("prompt", "chosen", "rejected", "id", "p_chosen")))


def _check_sft(rd: _RowReader) -> SFTRecord | None:
    """TRL's SFT formats: {"prompt", "completion"} (standard or conversational) or {"messages"}."""
    rid = rd.id()
    if "messages" in rd.row:
        messages = rd.text("messages")
        if isinstance(messages, str):
            rd.fail("messages", "wrong type: expected a list of messages")
        elif messages is not None and not any(m["role"] == "assistant" for m in messages):
            rd.fail("messages", "no assistant turn: nothing to learn")
        return None if rd.errors else SFTRecord(messages=messages, id=rid, meta=rd.meta(("messages", "id")))
    prompt, completion = rd.text("prompt"), rd.text("completion")
    if rd.errors:
        return None
    return SFTRecord(prompt=prompt, completion=completion, id=rid, meta=rd.meta(("prompt", "completion", "id")))


_CHECKS = {"prompts": _check_prompt, "pairs": _check_pair, "preferences": _check_preference, "sft": _check_sft}


def check_row(kind: str, row: dict[str, Any], file: str, n: int) -> tuple[Any, list[DataError]]:
    """(record, []) for a good row, (None, every problem) for a bad one."""
    rd = _RowReader(row, file, n)
    return _CHECKS[kind](rd), rd.errors


def _parser(kind: str):
    def parse(row: dict[str, Any], file: str, n: int):
        record, errors = check_row(kind, row, file, n)
        if errors:
            raise errors[0]
        return record
    parse.__name__ = f"parse_{kind}"
    return parse


parse_prompt, parse_pair, parse_preference = _parser("prompts"), _parser("pairs"), _parser("preferences")
PARSERS = {"prompts": parse_prompt, "pairs": parse_pair, "preferences": parse_preference, "sft": _parser("sft")}
