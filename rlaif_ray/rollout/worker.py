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
    """Serves `generate` / logprob queries from its engine; `load_weights` swaps in synced weights."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "fp32"):
        t0 = time.perf_counter()
        if cfg.backend == "hf":  # Ray pins actors to one thread; the HF engine may use its reserved CPUs
            import torch

            torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
        self.model_path = model_path
        self.engine = build_engine(model_path, cfg, seed, dtype)
        self.version = 0
        self.startup_s = time.perf_counter() - t0

    def info(self) -> dict:
        return {"pid": os.getpid(), "version": self.version, "startup_s": self.startup_s,
                "max_model_len": self.engine.max_model_len, "backend": type(self.engine).__name__}

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, seed_offset: int = 0) -> list[list[Sample]]:
        return self.engine.generate(prompts, sampling, seed_offset)

    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> list[dict[str, float]]:
        return self.engine.next_token_logprobs(prompts, candidates)

    def sequence_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        return self.engine.sequence_logprobs(prompt_ids, completion_ids)

    def load_weights(self, weights_dir: str, version: int, timeout_s: float | None = None) -> float:
        """Reload from a safetensors dir (e.g. in /dev/shm), reset the prefix cache, set the version;
        returns the seconds it took."""
        t0 = time.perf_counter()
        self.engine.reload_weights(weights_dir, timeout_s)
        self.version = version
        return time.perf_counter() - t0

    # GPU sync (rlaif_ray.sync.nccl): vLLM's weight-transfer RPCs, called by the learner's NCCL sender.
    def init_weight_transfer_engine(self, request) -> None:
        self.engine.llm.init_weight_transfer_engine(request)

    def start_weight_update(self) -> None:
        self.engine.llm.start_weight_update()

    def update_weights(self, request) -> None:
        self.engine.llm.update_weights(request)

    def finish_weight_update(self) -> None:
        self.engine.llm.finish_weight_update()
        self.engine.llm.reset_prefix_cache()

    def set_version(self, version: int) -> None:
        self.version = version

    def get_version(self) -> int:
        return self.version

    def shutdown(self) -> None:
        self.engine.close()
