"""The judge interface and its factory. Every judge answers a pairwise `Task` with a `Verdict`
(P(first shown is better)) and a pointwise (prompt, response) with a `ScoreResult` (1-10).

    judge = make_judge(judge_cfg, retry_cfg, limiter)   # inside an event loop
    verdict = await judge.judge(Task(pair_id, prompt, first, second, order="ab"))
    result = await judge.score(prompt, response)          # result.score in [1, 10] or None
    verdicts = await judge.judge_many(tasks)              # local judges batch these
A judge never raises for a failed call: the Verdict/ScoreResult carries `error` and a None value.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict
from typing import Any

from ..config import JudgeConfig, RetryConfig
from .ratelimit import RateLimiter
from .types import ScoreResult, Task, Verdict

# Fields that change what a judge answers; the rest (prices, poll intervals, batching) do not.
_ANSWER_FIELDS = ("model", "function", "score_function", "rubric", "cot", "temperature", "max_tokens")


def config_hash(cfg: JudgeConfig) -> str:
    """Stable id of the judge's answering behaviour (store key): Messages and Batches share it."""
    from .rubrics import load_rubric

    fields = {k: v for k, v in asdict(cfg).items() if k in _ANSWER_FIELDS}
    fields["kind"] = "anthropic" if cfg.kind == "anthropic-batch" else cfg.kind
    fields["rubric"] = load_rubric(cfg.rubric)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def judge_id(cfg: JudgeConfig) -> str:
    if cfg.kind == "function":
        return f"function:{cfg.function or cfg.score_function}"
    return f"{cfg.kind}:{cfg.model}"


class Judge:
    """Base: one call at a time per task; subclasses implement `judge` and `score`."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.id = judge_id(cfg)

    async def judge(self, task: Task) -> Verdict:
        raise NotImplementedError

    async def score(self, prompt: Any, response: Any) -> ScoreResult:
        raise NotImplementedError

    async def judge_many(self, tasks: list[Task]) -> list[Verdict]:
        return list(await asyncio.gather(*(self.judge(t) for t in tasks)))

    async def score_many(self, items: list[tuple[Any, Any]]) -> list[ScoreResult]:
        return list(await asyncio.gather(*(self.score(p, r) for p, r in items)))

    async def close(self) -> None:
        return None


def make_judge(cfg: JudgeConfig, retry: RetryConfig | None = None, limiter: RateLimiter | None = None) -> Judge:
    """The judge `cfg.kind` names (anthropic-batch judges single calls through the Messages API; the
    batch path lives in `batch.py`)."""
    retry = retry or RetryConfig()
    if cfg.kind in ("anthropic", "anthropic-batch"):
        from .judge_api import AnthropicJudge

        return AnthropicJudge(cfg, retry, limiter)
    if cfg.kind == "openai":
        from .judge_api import OpenAIJudge

        return OpenAIJudge(cfg, retry, limiter)
    if cfg.kind == "local":
        from .judge_local import LocalJudge

        return LocalJudge(cfg)
    from .judge_function import FunctionJudge

    return FunctionJudge(cfg)
