"""Robust verdict parsing: text answers (Claude) and next-token logprobs (OpenAI-compatible servers).

Text: the verdict is the last explicit 'Verdict: X' (CoT), else a bare letter answer; a rationale inside
<rationale> tags is returned separately. Anything ambiguous is a parse failure, never a guess.
"""

from __future__ import annotations

import math
import re

_VERDICT = re.compile(r"verdict\s*[:\-]?\s*\**\s*\(?\s*(?:response\s*)?\[?([AB])\b", re.I)
_BARE = re.compile(r"^\W*(?:response\s*)?\(?([AB])\)?\W*$", re.I)
_LEADING = re.compile(r"^\s*(?:response\s*)?\(?([AB])\)?(?:[\s.:,)]|$)", re.I)
_SCORE = re.compile(r"score\s*[:\-]?\s*\**\s*(\d+(?:\.\d+)?)", re.I)
_RATIONALE = re.compile(r"<rationale>(.*?)</rationale>", re.S | re.I)


class ParseError(ValueError):
    """The judge's answer holds no unambiguous verdict."""


def rationale_of(text: str) -> str | None:
    m = _RATIONALE.search(text)
    return m.group(1).strip() if m else None


def parse_letter(text: str) -> str:
    """'A' or 'B' from a judge answer; raises ParseError when absent or ambiguous."""
    body = _RATIONALE.sub(" ", text)
    found = _VERDICT.findall(body)
    if found:
        return found[-1].upper()
    stripped = body.strip()
    for pattern in (_BARE, _LEADING):
        m = pattern.match(stripped)
        if m:
            return m.group(1).upper()
    last = stripped.splitlines()[-1] if stripped else ""
    m = _BARE.match(last)
    if m:
        return m.group(1).upper()
    raise ParseError(f"no verdict in answer {text[:200]!r}")


def parse_score(text: str) -> float:
    """A 1-10 score from a judge answer; raises ParseError when absent or out of range."""
    body = _RATIONALE.sub(" ", text)
    found = _SCORE.findall(body)
    value = found[-1] if found else None
    if value is None:
        m = re.fullmatch(r"\W*(\d+(?:\.\d+)?)\W*", body.strip())
        value = m.group(1) if m else None
    if value is None:
        raise ParseError(f"no score in answer {text[:200]!r}")
    score = float(value)
    if not 1.0 <= score <= 10.0:
        raise ParseError(f"score {score} outside [1, 10] in answer {text[:200]!r}")
    return score


def answer_token(token: str) -> str:
    """A token as an answer: spaces, quotes and JSON punctuation stripped, upper case (' a', '"A' -> 'A')."""
    return token.strip().strip('{}:"\'').strip().upper()


def p_from_logprobs(top: dict[str, float]) -> float:
    """P(A) renormalised over the A/B mass among the top tokens (' A', 'a', '"A' count as A)."""
    mass = {"A": 0.0, "B": 0.0}
    for token, lp in top.items():
        t = answer_token(token)
        if t in mass:
            mass[t] += math.exp(lp)
    total = mass["A"] + mass["B"]
    if total <= 0:
        raise ParseError(f"neither A nor B among the top logprobs {sorted(top)[:10]}")
    return mass["A"] / total


def score_from_logprobs(top: dict[str, float]) -> float:
    """Expected 1-10 score from the digit tokens among the top logprobs (d-RLAIF)."""
    mass: dict[int, float] = {}
    for token, lp in top.items():
        t = answer_token(token)
        if t.isdigit() and 1 <= int(t) <= 10:
            mass[int(t)] = mass.get(int(t), 0.0) + math.exp(lp)
    total = sum(mass.values())
    if total <= 0:
        raise ParseError(f"no score token among the top logprobs {sorted(top)[:10]}")
    return sum(v * w for v, w in mass.items()) / total


def yes_no_from_logprobs(top: dict[str, float]) -> float:
    """logp(Yes) - logp(No) at the answer position ('yes', ' Yes' count as Yes). When one answer is not among
    the top tokens its logprob is at most the smallest listed one, which is used: a bound, not a guess of 0."""
    mass = {"YES": 0.0, "NO": 0.0}
    for token, lp in top.items():
        t = answer_token(token)
        if t in mass:
            mass[t] += math.exp(lp)
    if mass["YES"] <= 0 and mass["NO"] <= 0:
        raise ParseError(f"neither Yes nor No among the top logprobs {sorted(top)[:10]}")
    floor = min(top.values())
    return (math.log(mass["YES"]) if mass["YES"] > 0 else floor) - (math.log(mass["NO"]) if mass["NO"] > 0 else floor)
