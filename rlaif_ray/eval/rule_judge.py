"""A deterministic rule judge for everyday questions, usable as `judge.kind=function
judge.function=rlaif_ray.eval.rule_judge:prefer_helpful`: fast, free, position-blind. It is a weak proxy
for helpfulness (on-topic, a sensible length, no repetition), meant for smoke runs and tests; the demo's
default judge is an LLM."""

from __future__ import annotations

import math
import re

_STOP = set("a an the and or but of to in on for with is are be do does how what why when can i my me you "
            "your it its this that should get make from at by as so if".split())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def helpfulness(prompt: str, response: str) -> float:
    """Heuristic score: topic overlap with the question, length near 15-80 words, few repeated words."""
    words = _words(response)
    if not words:
        return -5.0
    topic = {w for w in _words(prompt) if w not in _STOP}
    overlap = len(topic & set(words)) / max(len(topic), 1)
    n = len(words)
    length = 0.0 if 15 <= n <= 80 else -abs(math.log(n / (15 if n < 15 else 80)))
    repetition = 1.0 - len(set(words)) / n
    letters = sum(c.isalpha() or c.isspace() for c in response) / len(response)  # byte soup scores low
    return 2.0 * overlap + length - 3.0 * repetition + 2.0 * letters


def prefer_helpful(prompt: str, a: str, b: str) -> float:
    """P(a better than b) = sigmoid of the heuristic score difference (0.5 exactly on equal scores)."""
    return 1.0 / (1.0 + math.exp(-(helpfulness(prompt, a) - helpfulness(prompt, b))))
