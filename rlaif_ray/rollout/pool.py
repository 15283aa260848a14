"""RolloutPool: N RolloutWorker actors; a batch of prompts is split into N contiguous chunks and the
results come back in input order. Counts of truncated / rejected (too long) prompts accumulate in
`stats`."""

from __future__ import annotations

import logging
import time

from ..actor_group import ActorGroup
from ..config import RolloutConfig, SamplingConfig
from .engine import Prompt, Sample
from .worker import RolloutWorker

log = logging.getLogger(__name__)


def _chunks(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """Contiguous (start, end) ranges, sizes differing by at most one, empty ranges dropped."""
    base, extra = divmod(n_items, n_parts)
    out, start = [], 0
    for i in range(n_parts):
        end = start + base + (i < extra)
        if end > start:
            out.append((start, end))
        start = end
    return out


class RolloutPool:
    """The workers' `ActorGroup`; `generate` fans out and gathers in order."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "fp32",
                 strategy: str = "PACK", name: str = "rollout"):
        self.cfg, self.model_path, self.dtype = cfg, model_path, dtype
        self.stats = {"prompts": 0, "truncated": 0, "rejected": 0}
        t0 = time.perf_counter()
        # Tensor parallel on GPUs: one bundle per GPU of a worker, the actor in the first; vLLM's Ray
        # executor fills the worker's bundles (STRICT_PACK keeps a worker's GPUs on one node).
        gpu_tp = cfg.tensor_parallel_size > 1 and cfg.gpus_per_worker > 0
        gpus = 1.0 if gpu_tp else cfg.gpus_per_worker
        bundle = {"CPU": cfg.cpus_per_worker, **({"GPU": gpus} if gpus else {}), **cfg.resources}
        self.group = ActorGroup(RolloutWorker, cfg.num_workers, bundle, name=name, kind="rollout worker",
                                timeout_s=cfg.timeout_s, args=lambda i: (model_path, cfg, seed + i, dtype),
                                strategy=strategy, bundles_per_actor=cfg.tensor_parallel_size if gpu_tp else 1)
        self.workers, self.names = self.group.actors, self.group.names
        self.infos = self.group.call("info")
        self.startup_s = time.perf_counter() - t0
        log.info("%d rollout workers ready in %.1fs", len(self.workers), self.startup_s)

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig) -> list[list[Sample]]:
        """n samples per prompt, in input order; a prompt rejected as too long gets []."""
        return self.gather(self.submit(prompts, sampling))

    def submit(self, prompts: list[Prompt], sampling: SamplingConfig) -> list:
        """Start `generate` on the workers and return at once (the refs for `gather`). A worker runs its
        calls in order, so a weight push sent after this reaches the engines after these samples."""
        for i, p in enumerate(prompts):
            if not (p.strip() if isinstance(p, str) else p):
                raise ValueError(f"prompt {i}: empty prompt")
        parts = _chunks(len(prompts), len(self.workers))
        return self.group.submit("generate", per_actor=[(prompts[a:b], sampling, a) for a, b in parts])

    def gather(self, refs: list) -> list[list[Sample]]:
        """The results of `submit`, in input order, counted into `stats`."""
        results = [r for chunk in self.group.wait(refs, "generate", list(range(len(refs)))) for r in chunk]
        self.stats["prompts"] += len(results)
        self.stats["rejected"] += sum(1 for r in results if not r)
        self.stats["truncated"] += sum(1 for r in results if r and r[0].prompt_truncated)
        return results

    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> list[dict[str, float]]:
        parts = _chunks(len(prompts), len(self.workers))
        chunks = self.group.call("next_token_logprobs", per_actor=[(prompts[a:b], candidates) for a, b in parts])
        return [r for chunk in chunks for r in chunk]

    def engine_ranks(self) -> list[int]:
        """Processes holding the model per worker (tensor-parallel size): each joins the weight transfer."""
        return [info["engine_ranks"] for info in self.infos]

    def versions(self) -> list[int]:
        return self.group.call("get_version")

    def shutdown(self) -> None:
        self.group.shutdown("shutdown")
        self.workers = []
