"""Plain records passed between judges, the pool and the label store."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Usage:
    """Tokens of one judge call, by billing kind."""

    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0

    def add(self, other: Usage) -> None:
        for k in ("input", "output", "cache_write", "cache_read"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass(slots=True)  # a million-pair input makes two million of them
class Task:
    """One judge call: a pair shown in one order ('ab': a first, 'ba': b first), sample k."""

    pair_id: str
    prompt: Any
    first: Any
    second: Any
    order: str = "ab"
    sample: int = 0
    principle: str | None = None  # judge.constitution: the principle this call judges by

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.pair_id, self.order, self.sample)


@dataclass
class WriteTask:
    """One free-form writing call (critique-revise: a critique or a revision). `pair_id` is a hash of the
    whole request, so its stored answer is found again by content after a crash; `order` names the step
    ("critique" | "revision") and `sample` the round. Store key and requeue use the same fields as Task's."""

    pair_id: str
    system: str
    user: str
    order: str
    sample: int = 0
    max_tokens: int = 256
    principle: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.pair_id, self.order, self.sample)


@dataclass(kw_only=True)
class JudgeOutput:
    """What a judge call gives beside its answer. `cost_usd` is everything the provider bills for it:
    every attempt and re-ask, with an estimate for attempts billed but lost (`estimated_usd`)."""

    raw: str = ""
    rationale: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    error: str | None = None
    answer_format: str | None = None  # how the answer was constrained (API judges): choice | json_schema | none
    attempts: int = 1          # HTTP attempts, re-asks included
    reasks: int = 0            # calls repeated because the answer held no verdict
    estimated_usd: float = 0.0  # part of cost_usd estimated: billed attempts whose answer never arrived


@dataclass
class Verdict(JudgeOutput):
    """The judge's answer for one Task. `p_first` = P(first-shown response is better), None on failure.
    `scores`: protocol=pointwise's scores of the first and the second response, each judged alone."""

    p_first: float | None
    scores: list[float | None] | None = None

    @property
    def ok(self) -> bool:
        return self.p_first is not None and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreResult(JudgeOutput):
    """Pointwise judge answer, None on failure: on scale "ten" a score in [1, 10] (the expected value when
    logprobs exist), on scale "yes_no" logp(Yes) - logp(No) at the answer position, on scale "contrast" the
    mean log-likelihood ratio of the response's tokens under the two contrast prompts."""

    score: float | None
    scale: str = "ten"

    @property
    def normalized(self) -> float | None:
        """Score mapped to [0, 1]: (s - 1) / 9, or sigmoid(s) for the log-odds of yes_no and contrast; None for
        a failed call."""
        if self.score is None:
            return None
        return 1.0 / (1.0 + math.exp(-self.score)) if self.scale != "ten" else (self.score - 1.0) / 9.0


@dataclass
class Writing(JudgeOutput):
    """The answer to a WriteTask: its text (stripped), None on failure (an empty answer is a failure)."""

    text: str | None

    @property
    def ok(self) -> bool:
        return self.text is not None and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
