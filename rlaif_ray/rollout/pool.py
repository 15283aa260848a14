"""RolloutPool: N RolloutWorker actors; a batch of prompts is split into N contiguous chunks and the
results come back in input order. Counts of truncated / rejected (too long) prompts accumulate in
`stats`."""

from __future__ import annotations

import logging
import time

from ..cluster import bundle_strategy, placement_group
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
    """Owns the workers' placement group; `generate` fans out and gathers in order."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "fp32",
                 strategy: str = "PACK", name: str = "rollout"):
        import ray

        self.cfg, self.model_path, self.dtype = cfg, model_path, dtype
        self.stats = {"prompts": 0, "truncated": 0, "rejected": 0}
        t0 = time.perf_counter()
        gpu_tp = cfg.tensor_parallel_size > 1 and cfg.gpus_per_worker > 0
        # Tensor parallel: one bundle per GPU of a worker, the actor in the first; vLLM's Ray executor
        # fills the worker's bundles (STRICT_PACK keeps a worker's GPUs on one node).
        per_worker = cfg.tensor_parallel_size if gpu_tp else 1
        bundle = {"CPU": cfg.cpus_per_worker, **({"GPU": 1.0} if gpu_tp else
                                                 {"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {}),
                  **cfg.resources}
        self.pgs, self.workers = [], []
        actor_cls = ray.remote(RolloutWorker)
        for i in range(cfg.num_workers):
            if gpu_tp or i == 0:
                pg = placement_group([dict(bundle) for _ in range(per_worker if gpu_tp else cfg.num_workers)],
                                     "STRICT_PACK" if gpu_tp else strategy, f"{name}-{i}" if gpu_tp else name)
                self.pgs.append(pg)
            options = dict(num_cpus=cfg.cpus_per_worker if not gpu_tp else 0,
                           num_gpus=0 if gpu_tp else cfg.gpus_per_worker,
                           scheduling_strategy=bundle_strategy(self.pgs[-1], 0 if gpu_tp else i))
            self.workers.append(actor_cls.options(**options).remote(model_path, cfg, seed + i, dtype))
        self.infos = ray.get([w.info.remote() for w in self.workers], timeout=cfg.timeout_s)
        self.names = [f"rollout worker {i} on {info['node']}" for i, info in enumerate(self.infos)]
        self.startup_s = time.perf_counter() - t0
        log.info("%d rollout workers ready in %.1fs", len(self.workers), self.startup_s)

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig) -> list[list[Sample]]:
        """n samples per prompt, in input order; a prompt rejected as too long gets []."""
        import ray

        for i, p in enumerate(prompts):
            if not (p.strip() if isinstance(p, str) else p):
                raise ValueError(f"prompt {i}: empty prompt")
        parts = _chunks(len(prompts), len(self.workers))
        refs = [w.generate.remote(prompts[a:b], sampling, a) for w, (a, b) in zip(self.workers, parts, strict=False)]
        results = [r for chunk in ray.get(refs, timeout=self.cfg.timeout_s) for r in chunk]
        self.stats["prompts"] += len(prompts)
        self.stats["rejected"] += sum(1 for r in results if not r)
        self.stats["truncated"] += sum(1 for r in results if r and r[0].prompt_truncated)
        return results

    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> list[dict[str, float]]:
        import ray

        parts = _chunks(len(prompts), len(self.workers))
        refs = [w.next_token_logprobs.remote(prompts[a:b], candidates)
                for w, (a, b) in zip(self.workers, parts, strict=False)]
        return [r for chunk in ray.get(refs, timeout=self.cfg.timeout_s) for r in chunk]

    def engine_ranks(self) -> list[int]:
        """Processes holding the model per worker (tensor-parallel size): each joins the weight transfer."""
        return [info["engine_ranks"] for info in self.infos]

    def versions(self) -> list[int]:
        import ray

        return ray.get([w.get_version.remote() for w in self.workers], timeout=self.cfg.timeout_s)

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            try:
                ray.get(w.shutdown.remote(), timeout=60)
            except Exception as e:  # a dead worker must not keep the others alive
                log.warning("rollout worker shutdown: %s", e)
            ray.kill(w)
        for pg in self.pgs:
            ray.util.remove_placement_group(pg)
        self.workers, self.pgs = [], []
