"""Rewards for PPO: the RewardScorer actor (batched RM), judge-as-reward, function rewards."""

from .format import format_for_rm
from .scorer import RewardScorer
from .sources import build_reward_source

__all__ = ["RewardScorer", "build_reward_source", "format_for_rm"]
