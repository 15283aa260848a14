"""One reward interface for PPO, whichever source `RewardConfig.source` names:

    reward = build_reward_source(cfg.reward, ray_cfg)
    scores = reward(prompts, responses)     # list[float]; NaN where a judge call failed
    reward.close()

- rm:       the RewardScorer actor on `rm_path` (ours from train-rm or any HF sequence classifier);
- judge:    the labeling pool's judges asked for a 1-10 score, normalised to [0, 1] (d-RLAIF);
- function: `module:function(prompt, response) -> float`, called in the driver.
A failed judge call is NaN, never a default score: the PPO driver stops naming the sample.
"""

from __future__ import annotations

import math

from ..config import FeedbackPoolConfig, RayConfig
from ..config.jobs import RewardConfig
from ..feedback.judge_function import load_function


class FunctionReward:
    def __init__(self, spec: str):
        self.fn = load_function(spec, "reward.function")

    def __call__(self, prompts: list, responses: list) -> list[float]:
        return [float(self.fn(p, r)) for p, r in zip(prompts, responses, strict=True)]

    def close(self) -> None:
        pass


class ModelReward:
    """Driver handle of a RewardScorer actor; every call has a timeout."""

    def __init__(self, cfg: RewardConfig):
        import ray

        from .scorer import RewardScorer

        if not cfg.rm_path:
            raise ValueError("reward.rm_path: required for reward.source=rm")
        cpus = max(1, int(cfg.num_cpus))
        self.timeout_s = cfg.timeout_s
        self.actor = ray.remote(RewardScorer).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus).remote(
            cfg.rm_path, cfg.batch_size, cfg.max_length, cfg.dtype, cpus)

    def __call__(self, prompts: list, responses: list) -> list[float]:
        import ray

        return ray.get(self.actor.score.remote(prompts, responses), timeout=self.timeout_s)

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


class JudgeReward:
    """The FeedbackPool's pointwise score API; missing scores become NaN."""

    def __init__(self, cfg: RewardConfig, ray_cfg: RayConfig):
        from ..feedback.pool import FeedbackPool

        self.pool = FeedbackPool(FeedbackPoolConfig(num_actors=cfg.judge_actors, judge=cfg.judge), ray_cfg, None)

    def __call__(self, prompts: list, responses: list) -> list[float]:
        scores = self.pool.score(list(zip(prompts, responses, strict=True)))
        return [math.nan if s is None else float(s) for s in scores]

    def close(self) -> None:
        self.pool.shutdown()


def build_reward_source(cfg: RewardConfig, ray_cfg: RayConfig | None = None):
    if cfg.source == "function":
        if not cfg.function:
            raise ValueError("reward.function: required for reward.source=function (module:function)")
        return FunctionReward(cfg.function)
    if cfg.source == "rm":
        return ModelReward(cfg)
    return JudgeReward(cfg, ray_cfg or RayConfig())
