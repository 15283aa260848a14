"""Streaming JSONL / Parquet reading and writing, and deterministic train/val splits.

Rows are numbered from 1: the JSONL line number, or the Parquet row index + 1, so every error can
name `file:row:field`. Large files stream (JSONL line by line, Parquet batch by batch via pyarrow).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .schemas import PARSERS, DataError, PairRecord, PreferenceRecord, PromptRecord


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number, row dict); invalid JSON or a non-object row raises DataError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield n, row
        return
    with path.open("r", encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), n, "<json>", f"invalid JSON: {e.msg} at column {e.colno}") from None
            if not isinstance(row, dict):
                raise DataError(str(path), n, "<json>", f"expected a JSON object, got {type(row).__name__}")
            yield n, row


def read_records(path: str | Path, kind: str, limit: int | None = None) -> list:
    """Parse every row of `path` as `kind` ('prompts' | 'pairs' | 'preferences'); first error raises."""
    parse = PARSERS[kind]
    out = []
    for n, row in iter_rows(path):
        out.append(parse(row, str(path), n))
        if limit is not None and len(out) >= limit:
            break
    return out


def read_prompts(path: str | Path, limit: int | None = None) -> list[PromptRecord]:
    return read_records(path, "prompts", limit)


def read_pairs(path: str | Path, limit: int | None = None) -> list[PairRecord]:
    return read_records(path, "pairs", limit)


def read_preferences(path: str | Path, limit: int | None = None) -> list[PreferenceRecord]:
    return read_records(path, "preferences", limit)


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL or Parquet (by suffix), atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), tmp)
    else:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def split_by_id(records: list, val_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """Deterministic train/val split keyed on each record's content id: the same record always lands
    on the same side for a given seed, whatever the file order or the other records."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction} must be in [0, 1)")
    train, val = [], []
    for rec in records:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{rec.id}".encode()).digest()[:8], "big") / 2**64
        (val if h < val_fraction else train).append(rec)
    return train, val
