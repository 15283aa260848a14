"""Local judge inside a pool actor: a vLLM engine (transformers fallback) reads the next-token
probabilities of "A"/"B" after the judge prompt (no HTTP, no sampling): P(first) = p(A) / (p(A) + p(B)).
Pointwise scores are the expected value over the digit tokens 1-9 (scale "ten"), logp(Yes) - logp(No)
(scale "yes_no"), or the response's mean log-likelihood ratio under two instructions (scale "contrast").
Free text (critiques, revisions) is sampled at the judge's temperature (seeded), a batch per answer budget."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from typing import Any

from ..config import JudgeConfig, ModelConfig, RolloutConfig
from .constitution import task_rubric
from .judges import Judge
from .prompts import pair_system, pair_user, score_system, score_user
from .retry import describe
from .rubrics import contrast_prompts, load_rubric
from .types import ScoreResult, Task, Verdict, WriteTask, Writing

DIGITS = [str(d) for d in range(1, 10)]
YES_NO = ["Yes", "No"]


class LocalJudge(Judge):
    """Engine built lazily on first use (start-up takes seconds); calls batched per `local_batch_size`."""

    batched = True

    def __init__(self, cfg: JudgeConfig):
        super().__init__(cfg)
        if cfg.cot:
            raise ValueError("judge.cot: the local judge reads next-token probabilities; CoT is not supported")
        self.rubric = load_rubric(cfg.rubric)
        self.engine = None
        self._lock = asyncio.Lock()
        # One OS thread builds and drives the engine: OpenMP thread counts are per thread, and vLLM's CPU
        # attention fails ("thread_num 1 vs 2") when a call runs on another thread than the one it was set on.
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-judge")

    def model_path(self) -> str:
        from ..models import resolve_model_path

        return resolve_model_path(ModelConfig(path=self.cfg.model))

    def _build(self):
        import os

        import torch

        from ..rollout.engine import build_engine

        torch.set_num_threads(len(os.sched_getaffinity(0)))  # Ray actors start with OMP_NUM_THREADS=1

        rollout = RolloutConfig(backend=self.cfg.local_backend, max_model_len=self.cfg.local_max_model_len,
                                in_process=True, enforce_eager=True, kv_cache_gib=1.0)
        return build_engine(self.model_path(), rollout, seed=0, dtype="fp32")

    def pair_messages(self, task: Task) -> list[dict[str, str]]:
        return [{"role": "system", "content": pair_system(task_rubric(self.rubric, self.cfg, task), False)},
                {"role": "user", "content": pair_user(task.prompt, task.first, task.second)}]

    def score_messages(self, prompt: Any, response: Any, rubric: str | None = None) -> list[dict[str, str]]:
        return [{"role": "system", "content": score_system(rubric or self.rubric, False, self.cfg.scale)},
                {"role": "user", "content": score_user(prompt, response, self.cfg.scale)}]

    async def _on_engine_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _batched(self, method, prompts: list, *args) -> list:
        """`engine.<method>(prompts[i:i + local_batch_size], *args)` (or `method(...)`, a callable) over every
        batch, on the engine thread."""
        async with self._lock:  # one engine, one call at a time
            if self.engine is None:
                self.engine = await self._on_engine_thread(self._build)
            out: list = []
            step, fn = self.cfg.local_batch_size, method if callable(method) else getattr(self.engine, method)
            for i in range(0, len(prompts), step):
                out += await self._on_engine_thread(fn, prompts[i:i + step], *args)
            return out

    async def _logprobs(self, prompts: list, candidates: list[str]) -> list[dict[str, float]]:
        return await self._batched("next_token_logprobs", prompts, candidates)

    async def write_many(self, tasks: list[WriteTask]) -> list[Writing]:
        from ..config import SamplingConfig

        out: list[Writing | None] = [None] * len(tasks)
        for budget in sorted({t.max_tokens for t in tasks}):  # one engine call per answer budget
            idx = [i for i, t in enumerate(tasks) if t.max_tokens == budget]
            sampling = SamplingConfig(n=1, temperature=self.cfg.temperature, max_new_tokens=budget, seed=0)
            prompts = [[{"role": "system", "content": tasks[i].system}, {"role": "user", "content": tasks[i].user}]
                       for i in idx]
            try:
                samples = await self._batched("generate", prompts, sampling)
            except Exception as e:  # noqa: BLE001 - an engine failure fails these calls, not the actor
                samples, error = [[] for _ in idx], describe(e)
            else:
                error = "the prompt does not fit judge.local_max_model_len"
            for i, got in zip(idx, samples, strict=True):
                text = got[0].text.strip() if got else ""
                out[i] = Writing(text or None, raw=got[0].text if got else "",
                                 error=None if text else error if not got else "empty answer")
        return out  # type: ignore[return-value]

    async def write(self, task: WriteTask) -> Writing:
        return (await self.write_many([task]))[0]

    async def judge_many(self, tasks: list[Task]) -> list[Verdict]:
        try:
            lps = await self._logprobs([self.pair_messages(t) for t in tasks], ["A", "B"])
        except Exception as e:  # noqa: BLE001 - an engine failure fails these labels, not the actor
            return [Verdict(None, error=describe(e)) for _ in tasks]
        verdicts = []
        for lp in lps:
            pa, pb = math.exp(lp["A"]), math.exp(lp["B"])
            verdicts.append(Verdict(pa / (pa + pb), raw=f"logp(A)={lp['A']:.6f} logp(B)={lp['B']:.6f}"))
        return verdicts

    async def judge(self, task: Task) -> Verdict:
        return (await self.judge_many([task]))[0]

    async def score_many(self, items: list[tuple[Any, Any]], rubric: str | None = None) -> list[ScoreResult]:
        scale = self.cfg.scale
        if scale == "contrast":
            try:
                return await self._batched(self._contrast, items)
            except Exception as e:  # noqa: BLE001
                return [ScoreResult(None, error=describe(e), scale=scale) for _ in items]
        try:
            lps = await self._logprobs([self.score_messages(p, r, rubric) for p, r in items],
                                       YES_NO if scale == "yes_no" else DIGITS)
        except Exception as e:  # noqa: BLE001
            return [ScoreResult(None, error=describe(e), scale=scale) for _ in items]
        results = []
        for lp in lps:
            if scale == "yes_no":
                results.append(ScoreResult(lp["Yes"] - lp["No"], raw=str(lp), scale=scale))
                continue
            w = {int(d): math.exp(v) for d, v in lp.items()}
            results.append(ScoreResult(sum(d * p for d, p in w.items()) / sum(w.values()), raw=str(lp)))
        return results

    def _contrast(self, items: list[tuple[Any, Any]]) -> list[ScoreResult]:
        """scale=contrast, on the engine thread: each response's tokens scored after its request with the positive
        and with the negative instruction appended; s = mean over its tokens of the log-likelihood ratio."""
        from ..data import text_of

        eng, instructions = self.engine, contrast_prompts(self.cfg)
        heads: dict[tuple[str, str], list[int]] = {}  # a pair's two responses share their request
        prompts, completions = [], []
        for prompt, response in items:
            ids = eng.tokenizer.encode(text_of(response), add_special_tokens=False) or [eng.tokenizer.eos_token_id]
            for instruction in instructions:
                key = (text_of(prompt), instruction)
                if key not in heads:
                    heads[key] = eng.encode([{"role": "user", "content": f"{key[0]} {instruction}"}])
                head = heads[key]
                prompts.append(head)
                completions.append(ids[:max(1, self.cfg.local_max_model_len - len(head) - 1)])
        lps = eng.sequence_logprobs(prompts, completions)
        return [ScoreResult(math.fsum(pos) / len(pos) - math.fsum(neg) / len(neg),
                            raw=f"logp+={math.fsum(pos):.4f} logp-={math.fsum(neg):.4f} tokens={len(pos)}",
                            scale="contrast")
                for pos, neg in zip(lps[0::2], lps[1::2], strict=True)]

    async def score(self, prompt: Any, response: Any, rubric: str | None = None) -> ScoreResult:
        return (await self.score_many([(prompt, response)], rubric))[0]

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
