"""AI feedback: judges (Anthropic Messages/Batches, OpenAI-compatible, local vLLM, function), prompt
templates and rubrics, verdict parsing, both-order soft labels, rate limiting, retries, the durable label
store, cost accounting and the FeedbackPool of Ray actors."""

from .judges import Judge, config_hash, judge_id, make_judge
from .labels import consolidate, tasks_for
from .store import LabelStore
from .types import ScoreResult, Task, Usage, Verdict

__all__ = ["FeedbackPool", "Judge", "LabelStore", "ScoreResult", "Task", "Usage", "Verdict", "config_hash",
           "consolidate", "judge_id", "make_judge", "tasks_for"]


def __getattr__(name):  # the pool pulls in Ray: import it only when asked for
    if name == "FeedbackPool":
        from .pool import FeedbackPool

        return FeedbackPool
    raise AttributeError(name)
