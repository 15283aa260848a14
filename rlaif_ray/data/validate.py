"""Validate a whole prompts / pairs / preferences file and gather the statistics of its report.

Unlike the readers, which stop at the first bad row, `validate_file` streams the file once and collects
every problem as a `DataError` (`file:row:field: problem`): invalid JSON, missing field, wrong type,
empty text, chosen == rejected / response_a == response_b, duplicate ids and duplicate content (both
rows named), over-length text (given a token counter and a limit). Memory holds per-row lengths and
id hashes (what the statistics and duplicate checks need), never the rows themselves.

Position balance reads labeled pairs: a pair with `p_a` = P(response_a wins), or a preference that
kept `response_a`/`response_b` (or `p_a`) beside chosen/rejected. Agreement compares preferences with
a human-labeled file on shared ids (accuracy and Cohen's kappa).
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import iter_rows, split_side
from .schemas import KIND_FIELDS, DataError, PreferenceRecord, Text, check_row, detect_kind, text_of

MAX_STORED_ERRORS = 10_000  # a file of a million bad rows is counted in full, but only this many are kept
RESPONSE_FIELDS = {"prompts": (), "pairs": ("response_a", "response_b"), "preferences": ("chosen", "rejected")}


class LengthStats:
    """Lengths of one field over a file (4 bytes per row) and their min/mean/p50/p95/max."""

    def __init__(self) -> None:
        self.values = array("I")

    def add(self, n: int) -> None:
        self.values.append(n)

    def summary(self) -> dict[str, float]:
        if not self.values:
            return {}
        s = sorted(self.values)

        def pct(q: float) -> int:  # nearest rank
            return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

        return {"n": len(s), "min": s[0], "mean": round(sum(s) / len(s), 1), "p50": pct(0.5),
                "p95": pct(0.95), "max": s[-1]}


@dataclass
class LabelStats:
    """Soft-label balance of preferences: how sure the labels are and how many are hard (0 or 1)."""

    n: int = 0
    hard: int = 0
    total: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * 10)  # p_chosen in [0, .1), ..., [.9, 1]

    def add(self, p: float) -> None:
        self.n += 1
        self.hard += p in (0.0, 1.0)
        self.total += p
        self.histogram[min(9, int(p * 10))] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "hard": self.hard, "soft": self.n - self.hard,
                "hard_share": round(self.hard / self.n, 4) if self.n else None,
                "mean_p_chosen": round(self.total / self.n, 4) if self.n else None,
                "histogram": self.histogram}


@dataclass
class PositionStats:
    """How often the response shown first (A) won: a judge with position bias drifts from 0.5."""

    outcomes: dict[str, int] = field(default_factory=lambda: {"a_wins": 0, "b_wins": 0, "ties": 0})
    total_p_a: float = 0.0

    def add(self, p_a: float) -> None:
        self.total_p_a += p_a
        self.outcomes["a_wins" if p_a > 0.5 else "b_wins" if p_a < 0.5 else "ties"] += 1

    def to_dict(self) -> dict[str, Any]:
        a, b = self.outcomes["a_wins"], self.outcomes["b_wins"]
        n, decided = sum(self.outcomes.values()), a + b
        share = a / decided if decided else None
        # Two-sided 95% check against a fair coin: |share - 0.5| within 1.96 standard errors.
        balanced = None if share is None else abs(share - 0.5) <= 1.96 * math.sqrt(0.25 / decided)
        return {"n": n, **self.outcomes, "a_share": round(share, 4) if share is not None else None,
                "mean_p_a": round(self.total_p_a / n, 4) if n else None, "balanced_95": balanced}


def cohen_kappa(x: list[int], y: list[int]) -> float | None:
    """Cohen's kappa of two raters' labels; None when chance agreement is 1 (both raters constant)."""
    if len(x) != len(y):
        raise ValueError("raters labeled different numbers of items")
    if not x:
        return None
    n = len(x)
    observed = sum(a == b for a, b in zip(x, y, strict=True)) / n
    expected = sum((x.count(c) / n) * (y.count(c) / n) for c in set(x) | set(y))
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _preferred_text(rec: PreferenceRecord) -> str | None:
    if rec.p_chosen == 0.5:
        return None
    return text_of(rec.chosen if rec.p_chosen > 0.5 else rec.rejected)


@dataclass
class Agreement:
    """AI labels against human labels on shared ids (or shared content). Each item's class is 'the human's response_a
    (or the first text in sorted order) is preferred', so kappa does not depend on chosen/rejected."""

    human_file: str
    human: dict[str, PreferenceRecord]
    ai_labels: list[int] = field(default_factory=list)
    human_labels: list[int] = field(default_factory=list)
    shared: int = 0
    ties: int = 0
    mismatched: int = 0  # same id, different responses: the files disagree on what was compared
    by_content: dict[str, PreferenceRecord] | None = None

    def add(self, ai: PreferenceRecord) -> None:
        # By id; else by content, so a file with its own ids still meets its human labels.
        h = self.human.get(ai.id) or self._by_content().get(ai.content_key())
        if h is None:
            return
        self.shared += 1
        texts = {text_of(h.chosen), text_of(h.rejected)}
        if {text_of(ai.chosen), text_of(ai.rejected)} != texts:
            self.mismatched += 1
            return
        ref = h.meta.get("response_a")
        first = text_of(ref) if isinstance(ref, (str, list)) and text_of(ref) in texts else min(texts)
        pa, ph = _preferred_text(ai), _preferred_text(h)
        if pa is None or ph is None:
            self.ties += 1
            return
        self.ai_labels.append(int(pa == first))
        self.human_labels.append(int(ph == first))

    def _by_content(self) -> dict[str, PreferenceRecord]:
        if self.by_content is None:
            self.by_content = {h.content_key(): h for h in self.human.values()}
        return self.by_content

    def to_dict(self) -> dict[str, Any]:
        n = len(self.ai_labels)
        agree = sum(a == b for a, b in zip(self.ai_labels, self.human_labels, strict=True))
        kappa = cohen_kappa(self.ai_labels, self.human_labels)
        return {"human_file": self.human_file, "human_labels": len(self.human), "shared_ids": self.shared,
                "compared": n, "ties": self.ties, "mismatched_content": self.mismatched,
                "accuracy": round(agree / n, 4) if n else None,
                "kappa": round(kappa, 4) if kappa is not None else None}


@dataclass
class FileReport:
    """Everything `validate` found in one file."""

    file: str
    kind: str | None
    rows: int = 0
    valid: int = 0
    rows_with_errors: int = 0
    error_count: int = 0
    errors: list[DataError] = field(default_factory=list)  # the first MAX_STORED_ERRORS
    duplicate_ids: int = 0
    duplicate_content: int = 0
    chars: dict[str, LengthStats] = field(default_factory=dict)
    tokens: dict[str, LengthStats] = field(default_factory=dict)
    labels: LabelStats | None = None
    position: PositionStats = field(default_factory=PositionStats)
    split: dict[str, Any] = field(default_factory=dict)
    agreement: Agreement | None = None

    def error(self, e: DataError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_STORED_ERRORS:
            self.errors.append(e)

    def to_dict(self) -> dict[str, Any]:
        pos = self.position.to_dict()
        return {
            "file": self.file, "kind": self.kind, "rows": self.rows, "valid": self.valid,
            "rows_with_errors": self.rows_with_errors, "error_count": self.error_count,
            "errors": [str(e) for e in self.errors],
            "duplicates": {"ids": self.duplicate_ids, "content": self.duplicate_content},
            "length_chars": {k: v.summary() for k, v in self.chars.items()},
            "length_tokens": {k: v.summary() for k, v in self.tokens.items()},
            "labels": self.labels.to_dict() if self.labels else None,
            "position": pos if pos["n"] else None,
            "split": self.split,
            "agreement": self.agreement.to_dict() if self.agreement else None,
        }


def token_counter(tokenizer) -> Callable[[Text], int]:
    """Count tokens as training sees them: message lists through the chat template when there is one."""
    def count(value: Text) -> int:
        if isinstance(value, list) and getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(value, tokenize=True)
            return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return len(tokenizer(text_of(value), add_special_tokens=False)["input_ids"])
    return count


def _key(text_id: str) -> int:
    """8-byte hash of an id: a million ids cost ~100 MB as ints rather than several times that as str."""
    return int.from_bytes(hashlib.blake2b(text_id.encode(), digest_size=8).digest(), "big")


def _p_a(kind: str, rec: Any) -> float | None:
    """P(response_a won) of a labeled pair or of a preference that kept its A/B order, else None."""
    meta = getattr(rec, "meta", {})  # prompts carry none
    p = meta.get("p_a")
    if isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0:
        return float(p)
    a = meta.get("response_a")
    if kind != "preferences" or not isinstance(a, (str, list)):
        return None
    if text_of(a) == text_of(rec.chosen):
        return rec.p_chosen
    if text_of(a) == text_of(rec.rejected):
        return 1.0 - rec.p_chosen
    return None


def validate_file(path: str | Path, kind: str | None = None, count_tokens: Callable[[Text], int] | None = None,
                  max_tokens: int | None = None, human: dict[str, PreferenceRecord] | None = None,
                  human_file: str = "", val_fraction: float = 0.1, seed: int = 0) -> FileReport:
    """Stream `path` once; return its report with every problem found. `kind` is detected from the
    first recognisable row unless forced. Over-length means prompt (+ a response) above `max_tokens`."""
    if kind is not None and kind not in KIND_FIELDS:
        raise ValueError(f"kind {kind!r} is not one of {list(KIND_FIELDS)}")
    file = str(path)
    rep = FileReport(file=file, kind=kind)
    if human is not None:
        rep.agreement = Agreement(human_file=human_file, human=human)
    seen_ids: dict[int, int] = {}
    seen_content: dict[int, int] = {}
    split = {"train": 0, "val": 0}
    last_bad_row = -1

    def report(e: DataError) -> None:
        nonlocal last_bad_row
        rep.error(e)
        if e.row != last_bad_row:
            rep.rows_with_errors += 1
            last_bad_row = e.row

    def on_bad_json(e: DataError) -> None:
        rep.rows += 1
        report(e)

    try:
        for n, row in iter_rows(path, on_error=on_bad_json):
            rep.rows += 1
            if rep.kind is None:
                rep.kind = detect_kind(row)
                if rep.kind is None:
                    report(DataError(file, n, "<row>", "unknown row shape: expected " + "; ".join(
                        f"{k}: {', '.join(f)}" for k, f in KIND_FIELDS.items())))
                    continue
            record, errors = check_row(rep.kind, row, file, n)
            for e in errors:
                report(e)
            if record is None:
                continue
            ok = _check_duplicates(rep, record, n, seen_ids, seen_content, report)
            ok &= _measure(rep, record, n, count_tokens, max_tokens, report)
            if not ok:
                continue
            rep.valid += 1
            split[split_side(record.id, val_fraction, seed)] += 1
            if isinstance(record, PreferenceRecord):
                rep.labels = rep.labels or LabelStats()
                rep.labels.add(record.p_chosen)
                if rep.agreement is not None:
                    rep.agreement.add(record)
            p_a = _p_a(rep.kind, record)
            if p_a is not None:
                rep.position.add(p_a)
    except DataError as e:  # the file itself is unreadable
        report(e)
    if rep.rows == 0 and not rep.errors:
        report(DataError(file, 0, "<file>", "no rows"))
    rep.split = {"val_fraction": val_fraction, "seed": seed, **split}
    return rep


def _check_duplicates(rep: FileReport, record: Any, n: int, seen_ids: dict[int, int],
                      seen_content: dict[int, int], report: Callable[[DataError], None]) -> bool:
    """A repeated id or repeated content (the dedup key) is an error naming both rows. Without an
    explicit id the id is the content id, so one check covers both."""
    content = record.content_key()
    explicit = record.id != content
    ok = True
    first = seen_ids.setdefault(_key(record.id), n)
    if first != n:
        rep.duplicate_ids += explicit
        rep.duplicate_content += not explicit
        what = f"id {record.id!r}" if explicit else f"content (content id {content})"
        report(DataError(rep.file, n, "id", f"duplicate {what} of row {first}"))
        ok = False
    if explicit:
        first = seen_content.setdefault(_key(content), n)
        if first != n:
            rep.duplicate_content += 1
            report(DataError(rep.file, n, "<content>", f"duplicate content of row {first} (content id {content})"))
            ok = False
    return ok


def _measure(rep: FileReport, record: Any, n: int, count_tokens: Callable[[Text], int] | None,
             max_tokens: int | None, report: Callable[[DataError], None]) -> bool:
    """Record char (and token) lengths; flag prompt + response over `max_tokens`."""
    fields = ("prompt",) + RESPONSE_FIELDS[rep.kind]
    for f in fields:
        rep.chars.setdefault(f, LengthStats()).add(len(text_of(getattr(record, f))))
    if count_tokens is None:
        return True
    counts = {f: count_tokens(getattr(record, f)) for f in fields}
    for f, c in counts.items():
        rep.tokens.setdefault(f, LengthStats()).add(c)
    if max_tokens is None:
        return True
    if counts["prompt"] > max_tokens:
        report(DataError(rep.file, n, "prompt", f"over-length: {counts['prompt']} tokens > limit {max_tokens}"))
        return False
    ok = True
    for f in RESPONSE_FIELDS[rep.kind]:
        total = counts["prompt"] + counts[f]
        if total > max_tokens:
            report(DataError(rep.file, n, f, f"over-length: prompt + {f} = {total} tokens > limit {max_tokens}"))
            ok = False
    return ok


def format_report(rep: FileReport, max_errors: int = 50) -> str:
    """The human-readable report of one file."""
    d = rep.to_dict()
    lines = [f"{rep.file}  ({rep.kind or 'unknown kind'}: {rep.rows} rows, {rep.valid} valid, "
             f"{rep.rows_with_errors} with errors)"]
    for title, stats in (("chars", d["length_chars"]), ("tokens", d["length_tokens"])):
        if stats:
            lines.append(f"  length ({title}):  {'min':>7} {'mean':>9} {'p50':>7} {'p95':>7} {'max':>7}")
            for f, s in stats.items():
                if s:
                    lines.append(f"    {f:<16}{s['min']:>7} {s['mean']:>9} {s['p50']:>7} {s['p95']:>7} {s['max']:>7}")
    lines.append(f"  duplicates: {rep.duplicate_ids} ids, {rep.duplicate_content} content")
    if d["labels"]:
        lb = d["labels"]
        lines.append(f"  labels: {lb['hard']} hard / {lb['soft']} soft (hard share {lb['hard_share']}), "
                     f"mean p_chosen {lb['mean_p_chosen']}")
        lines.append("    p_chosen histogram [0,.1)..[.9,1]: " + " ".join(str(c) for c in lb["histogram"]))
    if d["position"]:
        ps = d["position"]
        verdict = {True: "balanced", False: "POSITION BIAS (outside 95% of 0.5)", None: "n/a"}[ps["balanced_95"]]
        lines.append(f"  position: A won {ps['a_wins']}, B won {ps['b_wins']}, ties {ps['ties']}; "
                     f"A share {ps['a_share']}, mean P(A) {ps['mean_p_a']}: {verdict}")
    sp = d["split"]
    lines.append(f"  split (val {sp['val_fraction']}, seed {sp['seed']}): train {sp['train']}, val {sp['val']}")
    if d["agreement"]:
        ag = d["agreement"]
        lines.append(f"  human agreement vs {ag['human_file']}: {ag['shared_ids']} shared ids, {ag['compared']} "
                     f"compared, {ag['ties']} ties, {ag['mismatched_content']} mismatched; "
                     f"accuracy {ag['accuracy']}, Cohen's kappa {ag['kappa']}")
    if rep.error_count:
        lines.append(f"  errors: {rep.error_count}")
        lines.extend(f"    {e}" for e in rep.errors[:max_errors])
        if rep.error_count > max_errors:
            lines.append(f"    ... and {rep.error_count - max_errors} more (the first {MAX_STORED_ERRORS} in --json)")
    return "\n".join(lines)
