"""FeedbackActor: one Ray async actor of the pool. It runs a judge on its own event loop with up to
`max_in_flight` calls at once (a slow call holds one slot, never the others), draws every request from the
pool's one rate budget, and writes every verdict to its own fsync'd shard before reporting it."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from ..config import FeedbackPoolConfig
from .judges import judge_id, make_judge
from .ratelimit import RateLimiter, SharedLimiter
from .store import GroupCommitWriter, InflightTally, ShardWriter, record_of
from .types import Task, Usage, WriteTask

SECRET_ENV = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


class Secrets(dict):
    """API keys from the driver's environment, handed to actors on other nodes as constructor arguments
    (kept in memory for restarts, never in a runtime_env, a config or a log); repr never shows them."""

    @classmethod
    def from_env(cls) -> Secrets:
        return cls({k: os.environ[k] for k in SECRET_ENV if os.environ.get(k)})

    def __repr__(self) -> str:
        return f"Secrets({sorted(self)})"

    __str__ = __repr__


class FeedbackActor:
    """Wrapped with `ray.remote(max_restarts=..)` by FeedbackPool; also usable in-process in tests."""

    def __init__(self, cfg: FeedbackPoolConfig, labels_dir: str | None, config_hash: str, index: int, share: float,
                 secrets: Secrets | None = None, budget=None):
        for name, value in (secrets or {}).items():  # API keys live only in this process's environment
            os.environ[name] = value
        self.cfg, self.config_hash, self.index = cfg, config_hash, index
        self.labels_dir, self.share, self.budget = labels_dir, share, budget
        self.judge = None
        self.writer: GroupCommitWriter | None = None
        self.stopping = False

    async def _ready(self) -> None:
        if self.judge is None:  # built on the actor's loop: async SDK clients bind to it
            # The pool's one budget (a Ray actor) when there is one; else this actor's share of the limits.
            rl = self.cfg.rate_limit
            unlimited = not (rl.requests_per_min or rl.input_tokens_per_min or rl.output_tokens_per_min)
            self.limiter = (SharedLimiter(self.budget, unlimited) if self.budget is not None
                            else RateLimiter(self.cfg.rate_limit, self.share))
            self.sem = asyncio.Semaphore(self.cfg.max_in_flight)
            self.judge = make_judge(self.cfg.judge, self.cfg.retry, self.limiter)
            if self.labels_dir:
                self.writer = GroupCommitWriter(ShardWriter(self.labels_dir, f"actor{self.index}"))
                base = self.judge
                while getattr(base, "inner", None) is not None:  # wrappers (pointwise, calibrated) call inner
                    base = base.inner
                if hasattr(base, "tally"):  # API judges: what a kill cuts off mid-flight may be billed
                    base.tally = InflightTally(self.labels_dir, self.writer.writer.name, self.config_hash)

    async def info(self) -> dict[str, Any]:
        """Where this actor runs; also builds the judge so the first shard does not pay for it."""
        import ray

        await self._ready()

        ctx = ray.get_runtime_context()
        return {"index": self.index, "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(), "pid": os.getpid()}

    async def drain(self) -> None:
        """Start no new call; calls in flight finish and are stored (graceful stop of the driver)."""
        self.stopping = True

    async def label(self, tasks: list[Task] | list[WriteTask]) -> dict[str, Any]:
        """Judge (a Task) or write (a WriteTask: critique-revise) and store every task of the shard; returns
        counts, tokens and dollars of this shard."""
        await self._ready()
        summary = {"ok": 0, "failed": 0, "skipped": 0, "usage": Usage(), "cost_usd": 0.0, "estimated_usd": 0.0,
                   "attempts": 0, "reasks": 0}
        jid = judge_id(self.cfg.judge)
        writes = bool(tasks) and isinstance(tasks[0], WriteTask)
        answer, answer_many = ((self.judge.write, self.judge.write_many) if writes else
                               (self.judge.judge, self.judge.judge_many))

        async def store(task, verdict):
            await self.writer.put(record_of(task, verdict, self.config_hash, jid, self.writer.writer.name))
            summary["ok" if verdict.ok else "failed"] += 1
            summary["usage"].add(verdict.usage)
            for k in ("cost_usd", "estimated_usd", "attempts", "reasks"):
                summary[k] += getattr(verdict, k)

        async def one(task: Task):
            async with self.sem:
                if self.stopping:
                    summary["skipped"] += 1
                    return
                await store(task, await answer(task))

        if self.judge.batched:  # local engine: the shard through one engine call
            if self.stopping:
                summary["skipped"] += len(tasks)
            else:
                for task, verdict in zip(tasks, await answer_many(tasks), strict=True):
                    await store(task, verdict)
        else:
            await asyncio.gather(*(one(t) for t in tasks))
        summary["usage"] = vars(summary["usage"])
        return summary

    async def judge_tasks(self, tasks: list[Task]) -> list[dict[str, Any]]:
        """Verdicts without the store (eval, online use)."""
        await self._ready()
        return [v.to_dict() for v in await self._bounded(self.judge.judge_many, tasks)]

    async def score(self, items: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        """Pointwise scores (judge-as-reward): dicts with score (1-10, logp(Yes) - logp(No), or None),
        normalized ([0, 1]), error, cost."""
        await self._ready()
        results = await self._bounded(self.judge.score_many, items)
        return [{"score": r.score, "normalized": r.normalized, "error": r.error, "raw": r.raw,
                 "cost_usd": r.cost_usd, "usage": vars(r.usage)} for r in results]

    async def _bounded(self, many, items: list) -> list:
        """`many` over items in windows of max_in_flight (API judges) or at once (local engine)."""
        if self.judge.batched:
            return await many(items)
        out: list = []
        step = self.cfg.max_in_flight
        for i in range(0, len(items), step):
            out += await many(items[i:i + step])
        return out
