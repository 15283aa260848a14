"""Rollout engines (vLLM, transformers) and the Ray actors that serve them."""

from .engine import HFEngine, Sample, VLLMEngine, build_engine

__all__ = ["HFEngine", "Sample", "VLLMEngine", "build_engine"]
