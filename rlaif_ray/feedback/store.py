"""Durable label store: append-only JSONL shards under `<run_dir>/labels/`, one per writer (actor
incarnation or driver), each record fsync'd before it counts. The index maps
(pair id, judge config hash, order, sample) to the record; it is rebuilt by reading the shards
(incrementally: `refresh()` reads only new bytes), and a torn last line from a killed writer is skipped.

A stored "ok" record is final; a "failed" one (error kept) is retried by the next run. The index keeps
the newest record per key; the ledger keeps the cost of every record ever written (a failed call replaced
by a later ok one was billed too), so cumulative cost is what the provider billed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from .types import Task, Verdict, WriteTask, Writing

Key = tuple[str, str, str, int]  # pair id, config hash, order, sample


def record_of(task: Task | WriteTask, verdict: Verdict | Writing, config_hash: str, judge_id: str, writer: str) -> dict[str, Any]:
    v = verdict.to_dict()
    return {"pair_id": task.pair_id, "config_hash": config_hash, "order": task.order, "sample": task.sample,
            **({"principle": task.principle} if task.principle else {}), "status": "ok" if verdict.ok else "failed", "judge": judge_id, "writer": writer, "t": time.time(), **v}


def key_of(record: dict[str, Any]) -> Key:
    return (record["pair_id"], record["config_hash"], record["order"], int(record["sample"]))


class ShardWriter:
    """One append-only shard file; `write(records)` returns after the bytes are fsync'd."""

    def __init__(self, labels_dir: str | Path, name: str):
        self.name = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        Path(labels_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(labels_dir) / f"{self.name}.jsonl"
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


class InflightTally:
    """Judge attempts in flight, kept on disk beside an actor's shard: one byte '+' when an attempt is sent
    and '-' when it ends, after a header line with the config hash. No fsync: a killed process's writes
    survive in the page cache. What is still open once the writer is gone was cut off by a kill (the
    provider may have billed it): `LabelStore.ledger` adds an estimate for each."""

    SUFFIX = ".inflight"

    def __init__(self, labels_dir: str | Path, name: str, config_hash: str):
        self._fh = (Path(labels_dir) / f"{name}{self.SUFFIX}").open("ab", buffering=0)
        self._fh.write(f"{config_hash}\n".encode())

    def sent(self) -> None:
        self._fh.write(b"+")

    def done(self) -> None:
        self._fh.write(b"-")


class GroupCommitWriter:
    """Async front of a ShardWriter: concurrent `put`s share one write+fsync (group commit), and each
    `put` returns only once its record is on disk."""

    def __init__(self, writer: ShardWriter):
        self.writer = writer
        self._pending: list[dict[str, Any]] = []
        self._next: asyncio.Future | None = None
        self._lock = asyncio.Lock()

    async def put(self, record: dict[str, Any]) -> None:
        self._pending.append(record)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            asyncio.ensure_future(self._flush())
        await asyncio.shield(self._next)

    async def _flush(self) -> None:
        async with self._lock:
            batch, done = self._pending, self._next
            self._pending, self._next = [], None
            if done is None:
                return
            try:
                await asyncio.to_thread(self.writer.write, batch)
                done.set_result(None)
            except Exception as e:  # noqa: BLE001 - every waiter sees the disk error
                done.set_exception(e)


class LabelStore:
    """Reader/index of every shard of a run directory (driver side)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / "labels"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[Key, dict[str, Any]] = {}
        self._offsets: dict[Path, int] = {}
        self.torn_lines = 0
        self.totals: dict[str, dict[str, float]] = {}  # config hash -> ok / failed / cost_usd (progress)
        self._billed: dict[str, list[dict[str, Any]]] = {}  # config hash -> cost fields of every record read

    def refresh(self) -> int:
        """Read new complete lines of every shard; returns how many records were new."""
        new = 0
        for path in sorted(self.dir.glob("*.jsonl")):
            start = self._offsets.get(path, 0)
            with path.open("rb") as fh:
                fh.seek(start)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a line without its newline is still being written (or torn)
            for line in data[:end].splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    self.torn_lines += 1
                    continue
                new += self._add(rec)
            self._offsets[path] = start + end
        return new

    def _add(self, rec: dict[str, Any]) -> int:
        self._billed.setdefault(rec["config_hash"], []).append(
            {k: rec.get(k, d) for k, d in (("usage", {}), ("cost_usd", 0.0), ("estimated_usd", 0.0),
                                           ("attempts", 1), ("reasks", 0))})
        key = key_of(rec)
        old = self.index.get(key)
        if old is not None and old["status"] == "ok":
            return 0  # an ok label is final
        self.index[key] = rec
        t = self.totals.setdefault(rec["config_hash"], {"ok": 0, "failed": 0, "cost_usd": 0.0})
        if old is not None:
            t["failed"] -= 1
        t["ok" if rec["status"] == "ok" else "failed"] += 1
        t["cost_usd"] += rec["cost_usd"]
        return 1

    def spent(self, config_hash: str) -> tuple[int, float]:
        """(records ever stored, their dollars) for a config: what a spend budget counts, cheaply."""
        rs = self._billed.get(config_hash, [])
        return len(rs), self.totals.get(config_hash, {}).get("cost_usd", 0.0)

    def ledger(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        """Cost fields of every record ever stored (for `labels.cost_of`), replaced ones included, and one
        estimated entry per config for the attempts a kill cut off (`InflightTally`), each priced as the
        mean delivered answer. Call it when no writer of the run is live (their calls are open)."""
        open_calls: dict[str, int] = {}
        for path in self.dir.glob(f"*{InflightTally.SUFFIX}"):
            head, _, marks = path.read_bytes().partition(b"\n")
            h = head.decode()
            open_calls[h] = open_calls.get(h, 0) + max(0, marks.count(b"+") - marks.count(b"-"))
        out = []
        for h, rs in self._billed.items():
            if config_hash is not None and h != config_hash:
                continue
            out += rs
            delivered = [(r["cost_usd"] - r["estimated_usd"]) / (1 + r["reasks"]) for r in rs
                         if sum(r["usage"].values()) > 0]  # per answer read
            n = open_calls.get(h, 0)
            if n and delivered:
                est = n * sum(delivered) / len(delivered)
                out.append({"usage": dict.fromkeys(("input", "output", "cache_write", "cache_read"), 0),
                            "cost_usd": est, "estimated_usd": est, "attempts": n, "reasks": 0, "calls": 0})
        return out

    def done(self, pair_id: str, config_hash: str, order: str, sample: int) -> bool:
        rec = self.index.get((pair_id, config_hash, order, sample))
        return rec is not None and rec["status"] == "ok"

    def get(self, pair_id: str, config_hash: str, order: str, sample: int) -> dict[str, Any] | None:
        return self.index.get((pair_id, config_hash, order, sample))

    def records(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.index.values() if config_hash is None or r["config_hash"] == config_hash]
