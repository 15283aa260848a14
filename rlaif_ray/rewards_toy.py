"""Verifiable toy rewards for PPO smoke runs: `reward.source=function reward.function=rlaif_ray.rewards_toy:NAME`.

Each is `f(prompt, response) -> float` in [0, 1], cheap and exact, so a run's rising reward proves that
the whole loop (rollout -> reward -> update -> sync) learns, with no reward model in the way.
"""

from __future__ import annotations


def letter_fraction(prompt: str, response: str) -> float:
    """Fraction of the response's characters that are ASCII letters. A random tiny model emits mostly
    digits and byte soup (≈0.3 with std ≈0.14 per 16-token sample), so the signal is dense."""
    if not response:
        return 0.0
    return sum(c.isascii() and c.isalpha() for c in response) / len(response)


def target_word_fraction(prompt: str, response: str, word: str = "the") -> float:
    """Fraction of the response's whitespace-separated words equal to `word` (case-insensitive)."""
    words = response.lower().split()
    return sum(w == word for w in words) / len(words) if words else 0.0


def length_fraction(prompt: str, response: str, target_chars: int = 64) -> float:
    """min(len(response), target) / target: be longer, up to a target."""
    return min(len(response), target_chars) / target_chars


def prefer_letters(prompt: str, a: str, b: str) -> float:
    """A pairwise judge for the toy task: P(a > b) = sigmoid(10 (letters(a) - letters(b)))."""
    import math

    return 1.0 / (1.0 + math.exp(-10.0 * (letter_fraction(prompt, a) - letter_fraction(prompt, b))))


def mostly_letters(prompt: str, response: str, threshold: float = 0.4) -> float:
    """1 if at least `threshold` of the characters are letters, else 0: a pass/fail verifier like a math
    checker's. Many prompts' samples all fail (or later all pass) alike, which ppo.dynamic_sampling drops."""
    return float(letter_fraction(prompt, response) >= threshold)
