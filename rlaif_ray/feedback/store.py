"""Durable label store: append-only JSONL shards under `<run_dir>/labels/`, one per writer (actor
incarnation or driver), each record fsync'd before it counts. The index maps (judge config hash, pair id,
order, sample) to where the record lies on disk; it is rebuilt by reading the shards (incrementally:
`refresh()` reads only new bytes), and a torn last line from a killed writer is skipped.

A stored "ok" record is final; a "failed" one (error kept) is retried by the next run. The index points at
the newest record per key; the ledger sums the cost of every record ever written (a failed call replaced
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

import msgspec

from .types import Task, Verdict, WriteTask, Writing


class _Usage(msgspec.Struct):
    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0


class _Billed:
    """Running cost sums of every record of one config hash read so far (replaced ones too)."""

    __slots__ = ("records", "input", "output", "cache_write", "cache_read", "cost_usd", "estimated_usd", "attempts",
                 "reasks", "answers_usd", "answered")

    def __init__(self):
        self.records = self.input = self.output = self.cache_write = self.cache_read = 0
        self.attempts = self.reasks = self.answered = 0
        self.cost_usd = self.estimated_usd = self.answers_usd = 0.0


class _Entry(msgspec.Struct):
    """What the index and the ledger read of a stored record; the rest (verdict text, rationale) is skipped
    while decoding and read back from disk when a label needs it (measured: 6.6x faster than json.loads of the
    whole record; a whole record read back, 3.3x)."""

    pair_id: str
    config_hash: str
    order: str
    sample: int
    status: str
    usage: _Usage | None = None
    cost_usd: float = 0.0
    estimated_usd: float = 0.0
    attempts: int = 1
    reasks: int = 0


_ENTRY, _RECORD = msgspec.json.Decoder(_Entry), msgspec.json.Decoder()


def record_of(task: Task | WriteTask, verdict: Verdict | Writing, config_hash: str, judge_id: str, writer: str) -> dict[str, Any]:
    v = verdict.to_dict()
    return {"pair_id": task.pair_id, "config_hash": config_hash, "order": task.order, "sample": task.sample,
            **({"principle": task.principle} if task.principle else {}), "status": "ok" if verdict.ok else "failed", "judge": judge_id, "writer": writer, "t": time.time(), **v}


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
    """Reader/index of every shard of a run directory (driver side), compact enough for millions of calls:
    per config hash, a key string -> one int (shard number, byte offset and length of the newest record,
    ok bit); record bodies stay on disk and `get` reads one back. Costs are running sums, not per record."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / "labels"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, dict[str, int]] = {}  # config hash -> "pair\x1forder\x1fsample" -> packed entry
        self._shards: list[Path] = []  # shard number -> file
        self._offsets: dict[Path, int] = {}  # file -> bytes read
        self._readers: dict[int, Any] = {}
        self.torn_lines = 0
        self.totals: dict[str, dict[str, float]] = {}  # config hash -> ok / failed / cost_usd (progress)
        self._billed: dict[str, dict[str, Any]] = {}  # config hash -> cost sums of every record read

    def refresh(self) -> int:
        """Read new complete lines of every shard; returns how many records were new."""
        new = 0
        for path in sorted(self.dir.glob("*.jsonl")):
            if path not in self._offsets:
                self._offsets[path] = 0
                self._shards.append(path)
            shard = self._shards.index(path)
            with path.open("rb") as fh:
                fh.seek(self._offsets[path])
                while block := fh.read(READ_BLOCK):
                    start = self._offsets[path]
                    end = block.rfind(b"\n") + 1  # a line without its newline is still being written (or torn)
                    if end == 0:
                        if len(block) < READ_BLOCK:
                            break
                        block += fh.readline()  # one record longer than a block
                        end = block.rfind(b"\n") + 1
                        if end == 0:
                            break
                    pos = 0
                    while pos < end:
                        nl = block.index(b"\n", pos) + 1
                        if nl - pos >= 1 << 24:
                            raise ValueError(f"{path}: a record of 16 MiB or more at byte {start + pos}")
                        try:
                            rec = _ENTRY.decode(block[pos:nl])
                        except msgspec.DecodeError:  # a torn line (a killed writer's last)
                            self.torn_lines += 1
                        else:
                            new += self._add(rec, ((start + pos) << 24 | (nl - pos)) << 16 | shard)
                        pos = nl
                    self._offsets[path] = start + end
                    fh.seek(start + end)
        return new

    def _add(self, rec: _Entry, where: int) -> int:
        h, ok, u, cost = rec.config_hash, rec.status == "ok", rec.usage, rec.cost_usd
        b = self._billed.get(h) or self._billed.setdefault(h, _Billed())
        b.records += 1
        b.cost_usd += cost
        b.estimated_usd += rec.estimated_usd
        b.attempts += rec.attempts
        b.reasks += rec.reasks
        if u is not None:
            b.input, b.output, b.cache_write, b.cache_read = (b.input + u.input, b.output + u.output,
                                                              b.cache_write + u.cache_write, b.cache_read + u.cache_read)
            if u.input or u.output or u.cache_write or u.cache_read:  # an answer was read: its price, per
                b.answers_usd += (cost - rec.estimated_usd) / (1 + rec.reasks)  # answer, prices calls a kill cut off
                b.answered += 1
        index, key = self.index.setdefault(h, {}), _key(rec.pair_id, rec.order, rec.sample)
        old = index.get(key)
        if old is not None and old & 1:
            return 0  # an ok label is final
        index[key] = where << 1 | ok
        t = self.totals.setdefault(h, {"ok": 0, "failed": 0, "cost_usd": 0.0})
        if old is not None:
            t["failed"] -= 1
        t["ok" if ok else "failed"] += 1
        t["cost_usd"] += cost
        return 1

    def spent(self, config_hash: str) -> tuple[int, float]:
        """(records ever stored, their dollars) for a config: what a spend budget counts, cheaply."""
        b = self._billed.get(config_hash)
        return (b.records if b else 0), self.totals.get(config_hash, {}).get("cost_usd", 0.0)

    def ledger(self, config_hash: str | None = None, cut_off: bool = True) -> list[dict[str, Any]]:
        """Cost sums of every record ever stored (for `labels.cost_of`), replaced ones included, one entry per
        config, and (`cut_off`) one estimated entry per config for the attempts a kill cut off
        (`InflightTally`), each priced as the mean delivered answer. Call it when no writer of the run is live
        (their calls are open)."""
        open_calls: dict[str, int] = {}
        for path in self.dir.glob(f"*{InflightTally.SUFFIX}") if cut_off else ():
            head, _, marks = path.read_bytes().partition(b"\n")
            h = head.decode()
            open_calls[h] = open_calls.get(h, 0) + max(0, marks.count(b"+") - marks.count(b"-"))
        out = []
        for h, b in self._billed.items():
            if config_hash is not None and h != config_hash:
                continue
            out.append({"usage": {k: getattr(b, k) for k in USAGE}, "cost_usd": b.cost_usd,
                        "estimated_usd": b.estimated_usd, "attempts": b.attempts, "reasks": b.reasks, "calls": b.records})
            n = open_calls.get(h, 0)
            if n and b.answered:
                est = n * b.answers_usd / b.answered
                out.append({"usage": dict.fromkeys(USAGE, 0), "cost_usd": est, "estimated_usd": est, "attempts": n,
                            "reasks": 0, "calls": 0})
        return out

    def done(self, pair_id: str, config_hash: str, order: str, sample: int) -> bool:
        return bool(self.index.get(config_hash, {}).get(_key(pair_id, order, sample), 0) & 1)

    def get(self, pair_id: str, config_hash: str, order: str, sample: int) -> dict[str, Any] | None:
        where = self.index.get(config_hash, {}).get(_key(pair_id, order, sample))
        return None if where is None else self._read(where >> 1)

    def records(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        """The newest record of every key (read back from disk)."""
        return [self._read(w >> 1) for h, index in self.index.items() if config_hash in (None, h)
                for w in index.values()]

    def _read(self, where: int) -> dict[str, Any]:
        shard, length, offset = where & 0xFFFF, (where >> 16) & 0xFFFFFF, where >> 40
        fh = self._readers.get(shard)
        if fh is None:
            fh = self._readers[shard] = self._shards[shard].open("rb")
        return _RECORD.decode(os.pread(fh.fileno(), length, offset))


USAGE = ("input", "output", "cache_write", "cache_read")
READ_BLOCK = 8 << 20  # bytes of a shard read at a time


def _key(pair_id: str, order: str, sample: int) -> str:
    return f"{pair_id}\x1f{order}\x1f{sample}"
