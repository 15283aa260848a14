"""Function judge: `module:function(prompt, a, b) -> P(a > b)` and `module:function(prompt, response) ->
score in [1, 10]`, for verifiable tasks, tests and cluster smoke jobs."""

from __future__ import annotations

import importlib
from typing import Any

from ..config import JudgeConfig
from ..data import text_of
from .judges import Judge
from .retry import describe
from .types import ScoreResult, Task, Verdict


def load_function(spec: str, key: str):
    """Import `module:function` named by config key `key` (judges and rewards); errors name the key."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"{key}: {spec!r} is not 'module:function'")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{key}: cannot load {spec!r}: {e}") from None


class FunctionJudge(Judge):
    """Calls a Python function; an exception or an out-of-range value is a failed label."""

    def __init__(self, cfg: JudgeConfig):
        super().__init__(cfg)
        self.pair_fn = load_function(cfg.function, "judge.function") if cfg.function else None
        self.score_fn = load_function(cfg.score_function, "judge.score_function") if cfg.score_function else None

    async def judge(self, task: Task) -> Verdict:
        if self.pair_fn is None:
            return Verdict(None, error="judge.function is not set (module:function(prompt, a, b))")
        try:
            p = float(self.pair_fn(text_of(task.prompt), text_of(task.first), text_of(task.second)))
        except Exception as e:  # noqa: BLE001 - a user function's failure is a failed label
            return Verdict(None, error=describe(e))
        if not 0.0 <= p <= 1.0:
            return Verdict(None, raw=str(p), error=f"function returned {p}, outside [0, 1]")
        return Verdict(p, raw=repr(p))

    async def score(self, prompt: Any, response: Any, rubric: str | None = None) -> ScoreResult:  # noqa: ARG002 - a function scores by itself
        if self.score_fn is None:
            return ScoreResult(None, error="judge.score_function is not set (module:function(prompt, response))")
        try:
            s = float(self.score_fn(text_of(prompt), text_of(response)))
        except Exception as e:  # noqa: BLE001
            return ScoreResult(None, error=describe(e))
        if not 1.0 <= s <= 10.0:
            return ScoreResult(None, raw=str(s), error=f"score_function returned {s}, outside [1, 10]")
        return ScoreResult(s, raw=repr(s))
