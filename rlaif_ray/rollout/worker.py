"""RolloutWorker: a Ray actor that owns one generation engine and a weight version number.

On GPUs with tensor_parallel_size > 1 the actor itself takes no GPU: it runs inside a placement group
of `tensor_parallel_size` GPU bundles and vLLM's Ray executor places its TP workers in those bundles.
"""

from __future__ import annotations

import os
import time

from ..config import RolloutConfig, SamplingConfig
from .engine import Prompt, Sample, build_engine


class RolloutWorker:
    """Serves `generate` / logprob queries from its engine; `receive_weights` takes the learner's weights
    from the transfer group (`rlaif_ray.sync`), `load_weights` a dir on the shared filesystem."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "fp32"):
        t0 = time.perf_counter()
        if cfg.backend == "hf":  # Ray pins actors to one thread; the HF engine may use its reserved CPUs
            import torch

            torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
        self.model_path, self.cfg = model_path, cfg
        self.engine = build_engine(model_path, cfg, seed, dtype)
        self.version = 0
        self.startup_s = time.perf_counter() - t0

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "version": self.version,
                "startup_s": self.startup_s, "max_model_len": self.engine.max_model_len,
                "backend": type(self.engine).__name__, "engine_ranks": self.engine.ranks,
                "kv_block_size": self.engine.kv_block_size}

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, seed_offset: int = 0) -> list[list[Sample]]:
        return self.engine.generate(prompts, sampling, seed_offset)

    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> list[dict[str, float]]:
        return self.engine.next_token_logprobs(prompts, candidates)

    def sequence_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        return self.engine.sequence_logprobs(prompt_ids, completion_ids)

    def load_weights(self, weights_dir: str, version: int, timeout_s: float | None = None) -> float:
        """Reload from a safetensors dir every node sees (e.g. an exported policy on the shared
        filesystem), reset the prefix cache, set the version; returns the seconds it took."""
        t0 = time.perf_counter()
        self.engine.reload_weights(weights_dir, timeout_s)
        self.version = version
        return time.perf_counter() - t0

    # Weight transfer from learner rank 0 (rlaif_ray.sync): this worker's engine ranks join its group.
    def join_transfer(self, host: str, port: int, rank_base: int, world: int, timeout_s: float) -> None:
        backend = "nccl" if self.cfg.gpus_per_worker > 0 else "gloo"
        self.engine.join_transfer(host, port, rank_base, world, backend, timeout_s)

    def receive_weights(self, version: int, timeout_s: float) -> float:
        """Take the weights learner rank 0 is sending now; returns the seconds it took."""
        t0 = time.perf_counter()
        self.engine.receive_weights(timeout_s)
        self.version = version
        return time.perf_counter() - t0

    def receive_raw(self, nbytes: int, timeout_s: float) -> None:
        self.engine.receive_raw(nbytes, timeout_s)

    def memory_mb(self) -> dict:
        """Resident memory of this worker and its engine processes; GPU memory in use where there is one."""
        import psutil

        me = psutil.Process()
        rss = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)] if p.is_running())
        out = {"rss_mb": rss / 2**20}
        try:
            import torch

            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                out["gpu_used_mb"] = (total - free) / 2**20
        except Exception:  # noqa: BLE001 - a CPU build or no device: RSS only
            pass
        return out

    def get_version(self) -> int:
        return self.version

    def shutdown(self) -> None:
        self.engine.close()
