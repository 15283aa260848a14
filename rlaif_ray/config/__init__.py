"""Typed configs: `schema` holds the machinery, `roles` the actor roles, `jobs` one dataclass per job."""

from .jobs import (
    CritiqueReviseJob,
    DemoJob,
    DPOStage,
    EvalJob,
    GeneratePairsJob,
    LabelHumanJob,
    LabelJob,
    PPOConfig,
    RewardConfig,
    TrainDPOJob,
    TrainPPOJob,
    TrainRMJob,
    TrainSFTJob,
)
from .roles import (
    FeedbackPoolConfig,
    GoldConfig,
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
    "ConfigError", "CritiqueReviseJob", "DPOStage", "DemoJob", "EvalJob", "FeedbackPoolConfig", "GeneratePairsJob", "GoldConfig",
    "JudgeConfig", "LabelHumanJob", "LabelJob", "LearnerConfig", "LoraConfig", "ModelConfig", "PPOConfig",
    "RateLimitConfig", "RayConfig", "RetryConfig", "RewardConfig", "RolloutConfig", "SamplingConfig",
    "SyncConfig", "TrainDPOJob", "TrainPPOJob", "TrainRMJob", "TrainSFTJob", "apply_overrides", "describe", "from_dict",
    "load", "save", "to_dict",
]
