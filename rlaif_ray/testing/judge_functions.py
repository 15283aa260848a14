"""Example function judges (`judge.kind=function judge.function=rlaif_ray.testing.judge_functions:NAME`)
for tests and cluster smoke jobs: deterministic, instant, no network."""

from __future__ import annotations

from .fake_api import p_first, score_of


def fake_preference(prompt: str, a: str, b: str) -> float:
    """P(a > b) of the loopback fake's judge (same numbers as its OpenAI logprobs)."""
    return p_first(a, b)


def fake_score(prompt: str, response: str) -> float:
    """The fake judge's 1-10 score."""
    return float(score_of(response))


def prefer_longer(prompt: str, a: str, b: str) -> float:
    return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5


def length_score(prompt: str, response: str) -> float:
    return float(min(10, max(1, len(response))))


def broken(prompt: str, a: str, b: str) -> float:
    raise ZeroDivisionError("this judge always fails")
