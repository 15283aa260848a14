"""Rollout engines (vLLM, transformers) and the Ray actors that serve them."""

from .engine import HFEngine, Sample, VLLMEngine, build_engine
from .pool import RolloutPool
from .worker import RolloutWorker

__all__ = ["HFEngine", "RolloutPool", "RolloutWorker", "Sample", "VLLMEngine", "build_engine"]
