"""Typed configs: `schema` holds the machinery, `roles` the actor roles, `jobs` one dataclass per job."""

from .jobs import (
    JOB_CONFIGS,
    DemoJob,
    DPOStage,
    EvalJob,
    GeneratePairsJob,
    LabelJob,
    PPOConfig,
    RewardConfig,
    TrainDPOJob,
    TrainPPOJob,
    TrainRMJob,
)
from .roles import (
    FeedbackPoolConfig,
    JudgeConfig,
    LearnerConfig,
    LoraConfig,
    ModelConfig,
    RateLimitConfig,
    RayConfig,
    RetryConfig,
    RolloutConfig,
    SamplingConfig,
    SyncConfig,
)
from .schema import ConfigError, apply_overrides, describe, from_dict, load, save, to_dict

__all__ = [
    "JOB_CONFIGS", "ConfigError", "DPOStage", "DemoJob", "EvalJob", "FeedbackPoolConfig", "GeneratePairsJob",
    "JudgeConfig", "LabelJob", "LearnerConfig", "LoraConfig", "ModelConfig", "PPOConfig", "RateLimitConfig",
    "RayConfig", "RetryConfig", "RewardConfig", "RolloutConfig", "SamplingConfig", "SyncConfig",
    "TrainDPOJob", "TrainPPOJob", "TrainRMJob", "apply_overrides", "describe", "from_dict", "load", "save",
    "to_dict",
]
