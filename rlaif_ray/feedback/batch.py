"""Anthropic Message Batches labeling (half price, for large jobs), run by the driver.

Chunks pending tasks to the API's limits (100,000 requests or 256 MB), records each batch id and its
custom_id -> task map in `<run_dir>/batches.json` the moment the API returns it (before any polling),
polls, streams the unordered results, joins them on custom_id and stores each one. Errored, expired and
canceled items are stored as failed and resubmitted in a later round; a restarted driver first resumes
polling its recorded batches and never resubmits a task that sits in a batch still running. With
protocol=pointwise a task is two score requests (one per response) in the same batch, joined into one verdict.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import JudgeConfig, RetryConfig
from ..data import content_id
from .constitution import task_rubric
from .cost import cost_usd, prices_of
from .judge_api import AnthropicJudge
from .judges import judge_id, verdict_of_scores
from .parsing import ParseError, parse_letter, parse_score, rationale_of
from .prompts import pair_system, pair_user, score_system, score_user
from .retry import GaveUp, with_retry
from .store import LabelStore, ShardWriter, record_of
from .types import ScoreResult, Task, Verdict

log = logging.getLogger(__name__)
MAX_BATCH_BYTES = 256 * 2**20


def custom_id(task: Task, part: int | None = None) -> str:
    """16 hex (within ^[a-zA-Z0-9_-]{1,64}$); `part` 0/1 = the first/second response's pointwise request."""
    return content_id(task.pair_id, task.order, task.sample, *([] if part is None else [part]))


class BatchLabeler:
    """Drives the Message Batches API for a list of tasks; state survives a killed driver."""

    def __init__(self, cfg: JudgeConfig, retry: RetryConfig, run_dir: str | Path, config_hash: str,
                 store: LabelStore):
        self.cfg, self.retry, self.config_hash, self.store = cfg, retry, config_hash, store
        self.state_path = Path(run_dir) / "batches.json"
        self.state: list[dict[str, Any]] = json.loads(self.state_path.read_text()) if self.state_path.exists() else []
        self.judge = AnthropicJudge(cfg, retry, limiter=None)
        self.writer = ShardWriter(store.dir, "batch")
        self.jid = judge_id(cfg)
        self.summary = {"ok": 0, "failed": 0, "batches_submitted": 0, "batches_resumed": 0, "cost_usd": 0.0,
                        "usage": {"input": 0, "output": 0, "cache_write": 0, "cache_read": 0}}

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(self.state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    async def _api(self, fn, *args, **kwargs):
        result, _, _ = await with_retry(lambda: fn(*args, **kwargs), self.retry)
        return result

    def _requests(self, t: Task) -> list[tuple[list, dict]]:
        """(state key, request) of every request a task needs: one pair, or one score per response."""
        key = [t.pair_id, t.order, t.sample]
        if self.cfg.protocol == "pointwise":
            system = score_system(task_rubric(self.judge.rubric, self.cfg, t, pointwise=True), self.cfg.cot)
            return [(key + [part], {"custom_id": custom_id(t, part),
                                    "params": self.judge.params(system, score_user(t.prompt, r))})
                    for part, r in enumerate((t.first, t.second))]
        system = pair_system(task_rubric(self.judge.rubric, self.cfg, t), self.cfg.cot)
        return [(key, {"custom_id": custom_id(t), "params": self.judge.params(system, pair_user(t.prompt, t.first,
                                                                                               t.second))})]

    def _chunks(self, tasks: list[Task]) -> list[list[tuple[list, dict]]]:
        """Batches within the API's limits; a task's requests stay in one batch."""
        chunks, cur, size = [], [], 0
        for t in tasks:
            reqs = self._requests(t)
            n = sum(len(json.dumps(r)) for _, r in reqs)
            if cur and (len(cur) + len(reqs) > self.cfg.batch_max_requests or size + n > MAX_BATCH_BYTES * 0.95):
                chunks.append(cur)
                cur, size = [], 0
            cur += reqs
            size += n
        return chunks + ([cur] if cur else [])

    async def _submit(self, chunk: list[tuple[list, dict]]) -> None:
        batch = await self._api(self.judge.client.messages.batches.create, requests=[r for _, r in chunk])
        # Persisted before the first poll: a killed driver resumes this batch instead of paying again.
        self.state.append({"id": batch.id, "collected": False,
                           "tasks": {r["custom_id"]: key for key, r in chunk}})
        self._save_state()
        self.summary["batches_submitted"] += 1
        log.info("submitted batch %s with %d requests", batch.id, len(chunk))

    async def _collect(self, entry: dict[str, Any], tasks_by_key: dict, on_progress: Callable[[], None] | None):
        client = self.judge.client
        while True:
            batch = await self._api(client.messages.batches.retrieve, entry["id"])
            if batch.processing_status == "ended":
                break
            await asyncio.sleep(self.cfg.batch_poll_s)
        results: dict[str, Any] = {}
        async for item in await self._api(client.messages.batches.results, entry["id"]):
            if item.custom_id in entry["tasks"]:
                results.setdefault(item.custom_id, item.result)
        answers: dict[tuple, dict[int | None, Verdict | ScoreResult]] = {}
        for cid, key in entry["tasks"].items():  # an item missing from the results is failed, not lost
            part = key[3] if len(key) > 3 else None
            result = results.get(cid)
            answer = self._answer(result, part) if result is not None else \
                (Verdict(None, error="missing from batch results") if part is None else
                 ScoreResult(None, error="missing from batch results"))
            answers.setdefault(tuple(key[:3]), {})[part] = answer
        records = []
        for key, parts in answers.items():
            verdict = parts[None] if None in parts else verdict_of_scores(
                parts.get(0) or ScoreResult(None, error="not submitted"),
                parts.get(1) or ScoreResult(None, error="not submitted"), self.cfg.pointwise_temperature)
            task = tasks_by_key.get(key) or Task(key[0], "", "", "", key[1], key[2])
            records.append(record_of(task, verdict, self.config_hash, self.jid, self.writer.name))
        self.writer.write(records)
        for r in records:
            self.summary["ok" if r["status"] == "ok" else "failed"] += 1
            self.summary["cost_usd"] += r["cost_usd"]
            for k, v in r["usage"].items():
                self.summary["usage"][k] += v
        entry["collected"] = True
        self._save_state()
        if on_progress is not None:
            on_progress()

    def _answer(self, result, part: int | None) -> Verdict | ScoreResult:
        """A pair request's Verdict (part None), or a pointwise request's ScoreResult."""
        answer = Verdict(None) if part is None else ScoreResult(None)
        if result.type != "succeeded":
            err = getattr(result, "error", None)
            detail = getattr(getattr(err, "error", None), "message", "") if err is not None else ""
            answer.error = f"batch item {result.type}{': ' + detail if detail else ''}"
            return answer
        msg = result.message
        answer.usage, answer.raw = AnthropicJudge._usage(msg), AnthropicJudge._text(msg)
        answer.rationale = rationale_of(answer.raw)
        answer.cost_usd = cost_usd(answer.usage, prices_of(self.cfg), batch=True)
        try:
            if part is None:
                answer.p_first = 1.0 if parse_letter(answer.raw) == "A" else 0.0
            else:
                answer.score = parse_score(answer.raw)
        except ParseError as e:
            answer.error = f"ParseError: {e}"
        return answer

    async def run(self, tasks: list[Task], on_progress: Callable[[], None] | None = None) -> dict[str, Any]:
        by_key = {(t.pair_id, t.order, t.sample): t for t in tasks}
        try:
            for entry in [e for e in self.state if not e["collected"]]:
                self.summary["batches_resumed"] += 1
                await self._collect(entry, by_key, on_progress)
            for _ in range(self.retry.max_attempts):
                self.store.refresh()
                pending = [t for t in tasks if not self.store.done(t.pair_id, self.config_hash, t.order, t.sample)]
                if not pending:
                    break
                for chunk in self._chunks(pending):
                    await self._submit(chunk)
                for entry in [e for e in self.state if not e["collected"]]:
                    await self._collect(entry, by_key, on_progress)
        except GaveUp as e:
            raise RuntimeError(f"Message Batches API: {e}") from e
        finally:
            await self.judge.close()
            self.writer.close()
        return self.summary


def run_batches(cfg: JudgeConfig, retry: RetryConfig, run_dir: str, config_hash: str, store: LabelStore,
                tasks: list[Task], on_progress=None) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = asyncio.run(BatchLabeler(cfg, retry, run_dir, config_hash, store).run(tasks, on_progress))
    summary["seconds"] = time.perf_counter() - t0
    return summary
