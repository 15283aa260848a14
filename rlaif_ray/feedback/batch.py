"""Anthropic Message Batches labeling (half price, for large jobs), run by the driver, streamed.

Tasks arrive chunk after chunk (a whole input never sits in memory) and fill a batch up to the API's
limits (`batch_max_requests`, at most 100,000 requests, and 256 MB); a full batch is submitted at once,
while up to `batch_max_in_flight` batches run; when the window is full the driver collects whichever batch
ends first. Each batch's custom_id -> task map is written to `<run_dir>/batches/<n>.jsonl` and fsync'd
before the batch is created, and its id is appended to `<run_dir>/batches.json` the moment the API returns
it (before any polling). Results are read as a stream, joined on custom_id and stored in blocks. Errored,
expired and canceled items are stored as failed and resubmitted in a later round (the input streamed
again, only calls not stored); a restarted driver first collects its recorded batches and never resubmits
a task that sits in a batch still running. With protocol=pointwise a task is two score requests (one per
response) in the same batch, joined into one verdict.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..config import JudgeConfig, RetryConfig
from ..data import content_id
from .constitution import task_rubric
from .cost import cost_usd, prices_of
from .judge_api import SCORES, VERDICTS, AnthropicJudge, rationale_in
from .judges import judge_id, verdict_of_scores
from .parsing import ParseError
from .prompts import pair_system, pair_user, score_system, score_user
from .retry import GaveUp, with_retry
from .store import LabelStore, ShardWriter, record_of
from .types import ScoreResult, Task, Verdict

log = logging.getLogger(__name__)
MAX_BATCH_BYTES = 256 * 2**20
WRITE_EVERY = 4096  # stored records per fsync while a batch's results stream in


def custom_id(task: Task, part: int | None = None) -> str:
    """16 hex (within ^[a-zA-Z0-9_-]{1,64}$); `part` 0/1 = the first/second response's pointwise request."""
    return content_id(task.pair_id, task.order, task.sample, *([] if part is None else [part]))


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class _Filling:
    """The batch being filled: its requests and their map rows (custom_id, pair_id, order, sample, part,
    principle)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.rows: list[list] = []
        self.bytes = 0


class BatchLabeler:
    """Drives the Message Batches API over a stream of tasks; state survives a killed driver."""

    def __init__(self, cfg: JudgeConfig, retry: RetryConfig, run_dir: str | Path, config_hash: str,
                 store: LabelStore):
        self.cfg, self.retry, self.config_hash, self.store = cfg, retry, config_hash, store
        self.state_path = Path(run_dir) / "batches.json"
        self.maps_dir = Path(run_dir) / "batches"
        self.state: list[dict[str, Any]] = json.loads(self.state_path.read_text()) if self.state_path.exists() else []
        self.judge = AnthropicJudge(cfg, retry, limiter=None)
        self.writer = ShardWriter(store.dir, "batch")
        self.jid = judge_id(cfg)
        self.summary = {"ok": 0, "failed": 0, "batches_submitted": 0, "batches_resumed": 0, "rounds": 0,
                        "max_batches_in_flight": 0, "cost_usd": 0.0,
                        "usage": {"input": 0, "output": 0, "cache_write": 0, "cache_read": 0}}

    async def _api(self, fn, *args, **kwargs):
        result, _, _ = await with_retry(lambda: fn(*args, **kwargs), self.retry)
        return result

    def _requests(self, t: Task) -> list[tuple[list, dict]]:
        """(map row, request) of every request a task needs: one pair, or one score per response."""
        if self.cfg.protocol == "pointwise":
            system = score_system(task_rubric(self.judge.rubric, self.cfg, t, pointwise=True), self.cfg.cot)
            return [([custom_id(t, part), t.pair_id, t.order, t.sample, part, t.principle],
                     {"custom_id": custom_id(t, part),
                      "params": self.judge.params(system, score_user(t.prompt, r), answers=SCORES)})
                    for part, r in enumerate((t.first, t.second))]
        system = pair_system(task_rubric(self.judge.rubric, self.cfg, t), self.cfg.cot)
        return [([custom_id(t), t.pair_id, t.order, t.sample, None, t.principle],
                 {"custom_id": custom_id(t),
                  "params": self.judge.params(system, pair_user(t.prompt, t.first, t.second), answers=VERDICTS)})]

    async def _submit(self, batch: _Filling, in_flight: list[dict], on_progress) -> None:
        """Wait for a slot in the window, write the batch's map, create the batch, record its id."""
        while len(in_flight) >= self.cfg.batch_max_in_flight:
            await self._collect_ended(in_flight, on_progress)
        self.maps_dir.mkdir(exist_ok=True)
        name = f"{len(self.state):06d}-{os.getpid()}.jsonl"
        _fsync_write(self.maps_dir / name, "".join(json.dumps(r) + "\n" for r in batch.rows))
        created = await self._api(self.judge.client.messages.batches.create, requests=batch.requests)
        # Persisted before the first poll: a killed driver resumes this batch instead of paying again.
        entry = {"id": created.id, "collected": False, "map": name, "requests": len(batch.requests)}
        self.state.append(entry)
        _fsync_write(self.state_path, json.dumps(self.state))
        in_flight.append(entry)
        self.summary["batches_submitted"] += 1
        self.summary["max_batches_in_flight"] = max(self.summary["max_batches_in_flight"], len(in_flight))
        log.info("submitted batch %s with %d requests (%d in flight)", created.id, len(batch.requests),
                 len(in_flight))

    async def _collect_ended(self, in_flight: list[dict], on_progress) -> None:
        """Poll every batch in flight; collect those that ended, or sleep one poll interval if none has."""
        statuses = await asyncio.gather(*(self._api(self.judge.client.messages.batches.retrieve, e["id"])
                                          for e in in_flight))
        ended = [e for e, b in zip(in_flight, statuses, strict=True) if b.processing_status == "ended"]
        if not ended:
            await asyncio.sleep(self.cfg.batch_poll_s)
        for entry in ended:
            await self._collect(entry)
            in_flight.remove(entry)
            if on_progress is not None:
                on_progress()

    def _map_of(self, entry: dict) -> dict[str, list]:
        if "tasks" in entry:  # batches.json written before maps had files of their own
            return {cid: [cid, *key[:3], key[3] if len(key) > 3 else None, None] for cid, key in entry["tasks"].items()}
        rows = (json.loads(line) for line in (self.maps_dir / entry["map"]).read_text().splitlines())
        return {r[0]: r for r in rows}

    async def _collect(self, entry: dict[str, Any]) -> None:
        """Stream one ended batch's results into the store; an item missing from them is failed, not lost."""
        todo, halves, records = self._map_of(entry), {}, []

        def keep(row: list, answer: Verdict | ScoreResult) -> None:
            _, pair_id, order, sample, part, principle = row
            if part is not None:  # a pointwise half: a verdict once both responses' scores are in
                halves.setdefault((pair_id, order, sample), {})[part] = answer
                pair = halves[(pair_id, order, sample)]
                if len(pair) < 2:
                    return
                del halves[(pair_id, order, sample)]
                answer = verdict_of_scores(pair[0], pair[1], self.cfg.pointwise_temperature)
            records.append(record_of(Task(pair_id, "", "", "", order, sample, principle), answer,
                                     self.config_hash, self.jid, self.writer.name))
            if len(records) >= WRITE_EVERY:
                self._write(records)

        async for item in await self._api(self.judge.client.messages.batches.results, entry["id"]):
            row = todo.pop(item.custom_id, None)
            if row is not None:  # a custom_id seen twice, or not ours, is skipped
                keep(row, self._answer(item.result, row[4]))
        for row in list(todo.values()):
            keep(row, (Verdict if row[4] is None else ScoreResult)(None, error="missing from batch results"))
        self._write(records)
        entry["collected"] = True
        _fsync_write(self.state_path, json.dumps(self.state))

    def _write(self, records: list[dict]) -> None:
        """fsync a block of stored records and count them; empties `records`."""
        self.writer.write(records)
        for r in records:
            self.summary["ok" if r["status"] == "ok" else "failed"] += 1
            self.summary["cost_usd"] += r["cost_usd"]
            for k, v in r["usage"].items():
                self.summary["usage"][k] += v
        records.clear()

    def _answer(self, result, part: int | None) -> Verdict | ScoreResult:
        """A pair request's Verdict (part None), or a pointwise request's ScoreResult."""
        answer = Verdict(None) if part is None else ScoreResult(None)
        if result.type != "succeeded":
            err = getattr(result, "error", None)
            detail = getattr(getattr(err, "error", None), "message", "") if err is not None else ""
            answer.error = f"batch item {result.type}{': ' + detail if detail else ''}"
            return answer
        msg = result.message
        fmt = answer.answer_format = self.judge.answer_format
        answer.usage, answer.raw = AnthropicJudge._usage(msg), AnthropicJudge._text(msg)
        answer.rationale = rationale_in(answer.raw, fmt)
        answer.cost_usd = cost_usd(answer.usage, prices_of(self.cfg), batch=True)
        try:
            if part is None:  # read as the Messages path reads it
                answer.p_first = self.judge._p_first(msg, answer.raw)
            else:
                answer.score = self.judge._score(msg, answer.raw)
        except ParseError as e:
            answer.error = f"ParseError: {e}"
        return answer

    async def _round(self, chunks: Iterable[list[Task]], in_flight: list[dict], on_progress) -> int:
        """Submit every task of the stream not stored yet, batch by batch; the number of tasks submitted."""
        self.store.refresh()
        batch, submitted = _Filling(), 0
        for tasks in chunks:
            for t in tasks:
                if self.store.done(t.pair_id, self.config_hash, t.order, t.sample):
                    continue
                reqs = self._requests(t)
                size = sum(len(json.dumps(r)) for _, r in reqs)
                if batch.requests and (len(batch.requests) + len(reqs) > self.cfg.batch_max_requests
                                       or batch.bytes + size > MAX_BATCH_BYTES * 0.95):
                    await self._submit(batch, in_flight, on_progress)
                    batch = _Filling()
                for row, request in reqs:  # a task's requests stay in one batch
                    batch.rows.append(row)
                    batch.requests.append(request)
                batch.bytes += size
                submitted += 1
        if batch.requests:
            await self._submit(batch, in_flight, on_progress)
        return submitted

    async def run(self, chunks: Callable[[], Iterable[list[Task]]], on_progress=None) -> dict[str, Any]:
        """`chunks()`: a fresh pass over the tasks (called once per round)."""
        in_flight = [e for e in self.state if not e["collected"]]
        self.summary["batches_resumed"] = len(in_flight)
        try:
            while in_flight:  # before anything new: a task in a recorded batch is never submitted again
                await self._collect_ended(in_flight, on_progress)
            for _ in range(self.retry.max_attempts):
                submitted = await self._round(chunks(), in_flight, on_progress)
                while in_flight:
                    await self._collect_ended(in_flight, on_progress)
                if not submitted:
                    break
                self.summary["rounds"] += 1
                self.summary.setdefault("calls_submitted", submitted)  # the first round: calls not stored
        except GaveUp as e:
            raise RuntimeError(f"Message Batches API: {e}") from e
        finally:
            await self.judge.close()
            self.writer.close()
        return self.summary


def run_batches(cfg: JudgeConfig, retry: RetryConfig, run_dir: str, config_hash: str, store: LabelStore,
                tasks: list[Task] | Callable[[], Iterable[list[Task]]], on_progress=None) -> dict[str, Any]:
    """Label `tasks` (a list, or a function giving a fresh stream of task chunks) through Message Batches."""
    chunks = tasks if callable(tasks) else lambda: [tasks]
    t0 = time.perf_counter()
    summary = asyncio.run(BatchLabeler(cfg, retry, run_dir, config_hash, store).run(chunks, on_progress))
    summary["seconds"] = time.perf_counter() - t0
    return summary
