"""Weight transfer learner -> rollout engines, checked by a probe sequence's logprobs."""

from .probe import Probe, make_probe, reference_logprobs
from .weight_sync import SyncReport, WeightSync, WeightSyncError

__all__ = ["Probe", "SyncReport", "WeightSync", "WeightSyncError", "make_probe", "reference_logprobs"]
