"""The judge interface and its factory. Every judge answers a pairwise `Task` with a `Verdict`
(P(first shown is better)) and a pointwise (prompt, response) with a `ScoreResult` (1-10, or
logp(Yes) - logp(No)). With `protocol=pointwise` the factory wraps the judge in `PointwiseJudge`, whose
verdicts come from scoring each response alone.

    judge = make_judge(judge_cfg, retry_cfg, limiter)   # inside an event loop
    verdict = await judge.judge(Task(pair_id, prompt, first, second, order="ab"))
    result = await judge.score(prompt, response)          # result.score in [1, 10] or None
    verdicts = await judge.judge_many(tasks)              # local judges batch these
    writing = await judge.write(WriteTask(...))           # free text (critiques, revisions): API and local
A judge never raises for a failed call: the Verdict/ScoreResult carries `error` and a None value.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from dataclasses import asdict
from typing import Any

from ..config import JudgeConfig, RetryConfig
from .ratelimit import RateLimiter
from .types import ScoreResult, Task, Usage, Verdict, WriteTask, Writing

# Fields that change what a judge answers; the rest (prices, poll intervals, batching) do not.
_ANSWER_FIELDS = ("model", "function", "score_function", "rubric", "cot", "temperature", "max_tokens")
# Answer fields added later: hashed only when set away from their default, so a store labeled before they
# existed keeps its hash (its answers are not bought again).
_LATER_ANSWER_FIELDS = {"protocol": "pairwise", "scale": "ten", "pointwise_temperature": 1.0, "calibrate": False,
                        "contrast_prompts": []}


def config_hash(cfg: JudgeConfig) -> str:
    """Stable id of the judge's answering behaviour (store key): Messages and Batches share it."""
    from .rubrics import load_rubric

    fields = {k: v for k, v in asdict(cfg).items()
              if k in _ANSWER_FIELDS or (k in _LATER_ANSWER_FIELDS and v != _LATER_ANSWER_FIELDS[k])}
    fields["kind"] = "anthropic" if cfg.kind == "anthropic-batch" else cfg.kind
    fields["rubric"] = load_rubric(cfg.rubric)
    if cfg.constitution:  # its text, not its path: an edited constitution is another judge
        from .constitution import file_text

        fields["constitution"] = file_text(cfg.constitution)
        fields["principles_per_pair"] = cfg.principles_per_pair
    if fields["max_tokens"] is None:  # the default was 16: a bigger budget only completes answers 16 cut off,
        fields["max_tokens"] = 16     # so a store labeled then keeps its hash and its ok labels

    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def writer_hash(cfg: JudgeConfig) -> str:
    """Store key of a judge's free-text answers (critique-revise): only the model and its sampling shape
    them; the request itself (prompts, max_tokens) is in each WriteTask's id."""
    fields = {"kind": "anthropic" if cfg.kind == "anthropic-batch" else cfg.kind, "model": cfg.model,
              "temperature": cfg.temperature, "writes": True}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def judge_id(cfg: JudgeConfig) -> str:
    if cfg.kind == "function":
        return f"function:{cfg.function or cfg.score_function}"
    return f"{cfg.kind}:{cfg.model}"


class Judge:
    """Base: one call at a time per task; subclasses implement `judge` and `score`. A `batched` judge
    (a local engine) wants a whole shard in one `judge_many` call."""

    batched = False

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.id = judge_id(cfg)

    async def judge(self, task: Task) -> Verdict:
        raise NotImplementedError

    async def score(self, prompt: Any, response: Any, rubric: str | None = None) -> ScoreResult:
        """`rubric`: judge by this instead of the configured rubric (a constitution's principle)."""
        raise NotImplementedError

    async def write(self, task: WriteTask) -> Writing:
        return Writing(None, error=f"judge kind {self.cfg.kind!r} cannot write text (use anthropic, openai or local)")

    async def judge_many(self, tasks: list[Task]) -> list[Verdict]:
        return list(await asyncio.gather(*(self.judge(t) for t in tasks)))

    async def score_many(self, items: list[tuple[Any, Any]], rubric: str | None = None) -> list[ScoreResult]:
        return list(await asyncio.gather(*(self.score(p, r, rubric) for p, r in items)))

    async def write_many(self, tasks: list[WriteTask]) -> list[Writing]:
        return list(await asyncio.gather(*(self.write(t) for t in tasks)))

    async def close(self) -> None:
        return None


class _Wrapper(Judge):
    """A judge that changes how `inner`'s pairwise verdicts are made (`judge_many`); scores pass through."""

    def __init__(self, inner: Judge):
        super().__init__(inner.cfg)
        self.inner, self.batched = inner, inner.batched

    async def judge(self, task: Task) -> Verdict:
        return (await self.judge_many([task]))[0]

    async def score(self, prompt: Any, response: Any, rubric: str | None = None) -> ScoreResult:
        return await self.inner.score(prompt, response, rubric)

    async def score_many(self, items: list[tuple[Any, Any]], rubric: str | None = None) -> list[ScoreResult]:
        return await self.inner.score_many(items, rubric)

    async def write(self, task: WriteTask) -> Writing:
        return await self.inner.write(task)

    async def write_many(self, tasks: list[WriteTask]) -> list[Writing]:
        return await self.inner.write_many(tasks)

    async def close(self) -> None:
        await self.inner.close()


class PointwiseJudge(_Wrapper):
    """protocol=pointwise: both responses of a task are scored alone under the rubric by `inner`, and
    P(first > second) = sigmoid((s_first - s_second) / T). No response is shown beside another, so position
    bias cannot enter; a (prompt, response) met twice in one call is scored once. Under a constitution each
    response is scored by its task's principle (`score` question), one inner call per principle."""

    async def judge_many(self, tasks: list[Task]) -> list[Verdict]:
        from ..data import text_of
        from .constitution import task_rubric

        keys = [(t.principle, text_of(t.prompt), text_of(r)) for t in tasks for r in (t.first, t.second)]
        scored = {}
        for principle, task in {t.principle: t for t in tasks}.items():
            unique = list(dict.fromkeys(k[1:] for k in keys if k[0] == principle))
            rubric = task_rubric(None, self.cfg, task, pointwise=True)
            results = await self.inner.score_many(unique, rubric)
            scored.update({(principle, *k): s for k, s in zip(unique, results, strict=True)})
        return [verdict_of_scores(scored[keys[2 * i]], scored[keys[2 * i + 1]], self.cfg.pointwise_temperature)
                for i in range(len(tasks))]


class CalibratedJudge(_Wrapper):
    """calibrate=true (pairwise): P(first) moved by the judge's content-free prior, logit p - logit p0, where
    p0 = P(first) for the prompt and both responses "N/A" (asked once, then cached). A judge that leans to
    the first slot whatever it reads has that lean taken out of every soft label."""

    CONTENT_FREE = Task("content-free", "N/A", "N/A", "N/A")

    def __init__(self, inner: Judge):
        super().__init__(inner)
        self.prior: float | None = None
        self._unbilled: Verdict | None = None  # the content-free call, until its cost joins a stored verdict
        self._lock = asyncio.Lock()

    async def _prior(self) -> float | None:
        async with self._lock:
            if self.prior is None:
                v = (await self.inner.judge_many([self.CONTENT_FREE]))[0]
                self.prior, self._unbilled = (v.p_first if v.ok else None), v
            return self.prior

    async def judge_many(self, tasks: list[Task]) -> list[Verdict]:
        prior = await self._prior()
        verdicts = await self.inner.judge_many(tasks)
        if self._unbilled is not None and verdicts:  # the ledger counts every billed call
            verdicts[0].cost_usd += self._unbilled.cost_usd
            verdicts[0].usage.add(self._unbilled.usage)
            self._unbilled = None
        for v in verdicts:
            if v.ok and prior is None:
                v.p_first, v.error = None, "calibrate: the content-free call failed"
            elif v.ok:
                v.p_first = _sigmoid(_logit(v.p_first) - _logit(prior))
                v.raw += f" [calibrated: content-free P(first)={prior:.6f}]"
        return verdicts


def _logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1 - eps)  # a hard 0/1 verdict stays (almost) hard
    return math.log(p) - math.log(1 - p)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def verdict_of_scores(first: ScoreResult, second: ScoreResult, temperature: float) -> Verdict:
    """One pairwise verdict from two pointwise scores (their usage and cost added; failed if either is)."""
    usage = Usage()
    usage.add(first.usage)
    usage.add(second.usage)
    rationale = "\n---\n".join(r.rationale for r in (first, second) if r.rationale) or None
    v = Verdict(None, raw=f"{first.raw}\n---\n{second.raw}", rationale=rationale, usage=usage,
                cost_usd=first.cost_usd + second.cost_usd, answer_format=first.answer_format,
                error=first.error or second.error, scores=[first.score, second.score],
                attempts=first.attempts + second.attempts, reasks=first.reasks + second.reasks,
                estimated_usd=first.estimated_usd + second.estimated_usd)
    if v.error is None and first.score is not None and second.score is not None:
        v.p_first = _sigmoid((first.score - second.score) / temperature)
    elif v.error is None:
        v.error = "no score"
    return v


def make_judge(cfg: JudgeConfig, retry: RetryConfig | None = None, limiter: RateLimiter | None = None) -> Judge:
    """The judge `cfg.kind` names, wrapped in `PointwiseJudge` for protocol=pointwise or `CalibratedJudge`
    for calibrate=true (anthropic-batch judges single calls through the Messages API; the batch path lives
    in `batch.py`)."""
    judge = _make_base(cfg, retry or RetryConfig(), limiter)
    if cfg.protocol == "pointwise":
        return PointwiseJudge(judge)
    return CalibratedJudge(judge) if cfg.calibrate else judge


def _make_base(cfg: JudgeConfig, retry: RetryConfig, limiter: RateLimiter | None) -> Judge:
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
