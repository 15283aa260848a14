"""Streaming JSONL / Parquet reading and writing, and deterministic train/val splits.

Rows are numbered from 1: the JSONL line number, or the Parquet row index + 1, so every error can
name `file:row:field`. Large files stream (JSONL line by line, Parquet batch by batch via pyarrow).
`to_hf_dataset` hands records to TRL-shaped consumers as a `datasets.Dataset`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from .schemas import PARSERS, DataError, PairRecord, PreferenceRecord, PromptRecord, Text


def iter_rows(path: str | Path, on_error: Callable[[DataError], None] | None = None
              ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number, row dict). A line that is not a JSON object raises DataError, or, when
    `on_error` is given, is handed to it and skipped (validation reports every bad line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    with path.open("rb") as fh:  # bytes: a bad UTF-8 line is one bad row, not the end of the file
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = _JSON.decode(raw)  # 3x json.loads; what it refuses (NaN too), json reads or explains
            except msgspec.DecodeError:
                row = None
            try:
                row = json.loads(raw.decode("utf-8").rstrip("\r\n")) if row is None else row
            except UnicodeDecodeError as e:
                err = DataError(str(path), n, "<json>", f"invalid UTF-8 at byte {e.start}")
            except json.JSONDecodeError as e:
                err = DataError(str(path), n, "<json>", f"invalid JSON: {e.msg} at column {e.colno}")
            else:
                if isinstance(row, dict):
                    yield n, row
                    continue
                err = DataError(str(path), n, "<json>", f"expected a JSON object, got {type(row).__name__}")
            if on_error is None:
                raise err
            on_error(err)


_JSON = msgspec.json.Decoder()


def _plain(o: Any) -> Any:
    """A numpy scalar as its Python value; anything else JSON cannot hold is an error naming its type."""
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"a row holds {type(o).__name__}, which JSON cannot hold")


_JSONL = msgspec.json.Encoder(enc_hook=_plain)


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Batch by batch through pyarrow: memory holds one batch, whatever the file size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(str(path), 0, "<file>", f"not a readable Parquet file: {e}") from None
    n = 0
    for batch in reader.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def iter_chunks(path: str | Path, kind: str, size: int, limit: int | None = None) -> Iterator[list]:
    """Lists of at most `size` parsed records of `path` ('prompts' | 'pairs' | 'preferences' | 'sft'), in file
    order, the first `limit` at most: memory holds one chunk. The first bad row raises."""
    parse, file = PARSERS[kind], str(path)
    rows = iter_rows(path) if limit is None else islice(iter_rows(path), max(0, limit))  # rows after it: unread
    while True:
        with no_cyclic_gc():
            chunk = [parse(row, file, n) for n, row in islice(rows, size)]
        if not chunk:
            return
        yield chunk


@contextmanager
def no_cyclic_gc():
    """Cyclic GC off for a loop that makes millions of short-lived, acyclic dicts and lists: its collections
    traced every live object over and over (a third of a million-pair consolidation, measured); reference
    counting still frees everything."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_records(path: str | Path, kind: str, limit: int | None = None) -> list:
    """Parse every row of `path` as `kind` ('prompts' | 'pairs' | 'preferences'); first error raises."""
    return [r for chunk in iter_chunks(path, kind, 1 << 16, limit) for r in chunk]


def read_prompts(path: str | Path, limit: int | None = None) -> list[PromptRecord]:
    return read_records(path, "prompts", limit)


def read_pairs(path: str | Path, limit: int | None = None) -> list[PairRecord]:
    return read_records(path, "pairs", limit)


def read_preferences(path: str | Path, limit: int | None = None) -> list[PreferenceRecord]:
    return read_records(path, "preferences", limit)


def read_sft(path: str | Path, limit: int | None = None) -> list:
    return read_records(path, "sft", limit)


class RowWriter:
    """Rows appended chunk by chunk as JSONL or Parquet (by suffix), written to `<path>.tmp` and moved into
    place by `close()`: a reader never sees half a file, and memory holds one chunk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.parquet = self.path.suffix == ".parquet"
        self._fh: Any = None if self.parquet else self.tmp.open("wb")
        self._pq: Any = None
        self.rows = 0

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        self.rows += len(rows)
        if not self.parquet:
            self._fh.write(_JSONL.encode_lines(rows))  # UTF-8, compact; 5x json.dumps per row
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        try:
            table = pa.Table.from_pylist(rows, schema=self._pq.schema if self._pq else None)
        except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
            raise ValueError(f"{self.path}: these rows cannot share one Parquet schema (a column mixing plain "
                             f"text and message lists?): {e}. Write JSONL, or make the rows uniform.") from None
        if self._pq is None:
            self._pq = pq.ParquetWriter(self.tmp, table.schema)
        self._pq.write_table(table)

    def close(self) -> Path:
        if self._fh is not None:
            self._fh.close()
        elif self._pq is not None:
            self._pq.close()
        else:  # a Parquet file with no rows
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({}), self.tmp)
        os.replace(self.tmp, self.path)
        return self.path


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL or Parquet (by suffix), atomically: a reader never sees half a file."""
    w = RowWriter(path)
    w.write(rows)
    return w.close()


def split_side(record_id: str, val_fraction: float = 0.1, seed: int = 0) -> str:
    """'train' or 'val' for one id: a hash of (seed, id), so the side never depends on other records."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{record_id}".encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def split_by_id(records: list, val_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """Deterministic train/val split keyed on each record's content id: the same record always lands
    on the same side for a given seed, whatever the file order or the other records."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction} must be in [0, 1)")
    train, val = [], []
    for rec in records:
        (val if split_side(rec.id, val_fraction, seed) == "val" else train).append(rec)
    return train, val


def _messages(value: Text, role: str) -> list[dict[str, str]]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def to_trl_rows(records: Iterable) -> list[dict[str, Any]]:
    """Rows in TRL's formats: preferences as prompt/chosen/rejected (+ id, p_chosen), pairs as
    prompt/response_a/response_b (+ id), prompts as prompt (+ id). If any record is conversational, all
    become conversational (a column must hold one type): prompts as a user turn, answers as an
    assistant turn."""
    records = list(records)
    fields = {PromptRecord: ("prompt",), PairRecord: ("prompt", "response_a", "response_b"),
              PreferenceRecord: ("prompt", "chosen", "rejected")}
    conversational = any(isinstance(getattr(r, f), list) for r in records for f in fields[type(r)])
    rows = []
    for r in records:
        row: dict[str, Any] = {"id": r.id}
        for f in fields[type(r)]:
            value = getattr(r, f)
            row[f] = _messages(value, "user" if f == "prompt" else "assistant") if conversational else value
        if isinstance(r, PreferenceRecord):
            row["p_chosen"] = r.p_chosen
        rows.append(row)
    return rows


def to_hf_dataset(records: Iterable):
    """A `datasets.Dataset` in TRL's standard or conversational format (see `to_trl_rows`)."""
    from datasets import Dataset

    return Dataset.from_list(to_trl_rows(records))
