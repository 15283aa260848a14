"""A gold that is not the judge, and how far AI labels agree with it (the RLAIF paper's "AI labeler
alignment").

    gold = gold_preferences(gold_cfg, pairs)     # P_gold(a > b) per pair, None where the gold has no verdict
    stats = agreement(p_ai, gold)                # agreement, Cohen's kappa, agreement by the AI's confidence

A gold is a scorer `(prompt, response) -> float` (pairs within `margin` are gold ties, left out), a pairwise
function `(prompt, a, b) -> P(a > b)`, or a file of gold preferences (human labels from `label-human`, or
any prompt/chosen/rejected file) joined to the pairs by content.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..config import GoldConfig
from ..data import read_preferences, text_of

CONFIDENCE_BINS = (0.5, 0.6, 0.75, 0.9, 1.0)  # of the AI's confidence max(p, 1 - p)


def vader_sentiment(prompt: Any, response: Any) -> float:
    """VADER's compound sentiment of the response in [-1, 1] (Hutto & Gilbert 2014; lexicon bundled): a gold
    for a friendly-tone rubric that shares nothing with a language-model judge."""
    from vader import polarity_scores

    return polarity_scores(text_of(response))["compound"]


def gold_preferences(cfg: GoldConfig, pairs: Sequence) -> list[float | None]:
    """P_gold(response_a > response_b) for every pair (PairRecord-like: prompt, response_a, response_b, id):
    1 / 0 / a soft probability, 0.5 for a gold tie, None for a pair missing from the file."""
    from ..feedback.judge_function import load_function

    if cfg.file is not None:
        return _from_file(cfg.file, pairs)
    if cfg.function is not None:
        fn = load_function(cfg.function, "gold.function")
        return [float(fn(text_of(p.prompt), text_of(p.response_a), text_of(p.response_b))) for p in pairs]
    fn = load_function(cfg.score_function, "gold.score_function")
    return [_by_margin(fn(text_of(p.prompt), text_of(p.response_a)), fn(text_of(p.prompt), text_of(p.response_b)),
                       cfg.margin) for p in pairs]


def gold_scores(cfg: GoldConfig, prompts: Sequence, answers: dict[str, list]) -> dict[str, list[float]] | None:
    """{policy: [gold score or nan per prompt]} with a score_function gold (None for the other golds)."""
    from ..feedback.judge_function import load_function

    if cfg.score_function is None:
        return None
    fn = load_function(cfg.score_function, "gold.score_function")
    return {m: [math.nan if a is None else float(fn(text_of(p.prompt), text_of(a)))
                for p, a in zip(prompts, ans, strict=True)] for m, ans in answers.items()}


def _by_margin(s_a: float, s_b: float, margin: float) -> float:
    return 0.5 if abs(s_a - s_b) <= margin else 1.0 if s_a > s_b else 0.0


def _from_file(path: str, pairs: Sequence) -> list[float | None]:
    gold: dict[str, tuple[str, float]] = {}
    for rec in read_preferences(path):
        gold[rec.id] = (text_of(rec.chosen), rec.p_chosen)
    out: list[float | None] = []
    for p in pairs:
        hit = gold.get(p.id)
        if hit is None:
            out.append(None)
            continue
        chosen, p_chosen = hit
        out.append(p_chosen if chosen == text_of(p.response_a) else 1.0 - p_chosen)
    return out


def agreement(p_ai: Sequence[float | None], p_gold: Sequence[float | None],
              bins: Sequence[float] = CONFIDENCE_BINS) -> dict[str, Any]:
    """How often the AI picks the gold's side, over the pairs both labeled (a gold tie is left out).

    agreement: share of those pairs where the AI's P(a > b) falls on the gold's side of 0.5 (an AI tie counts
    half). kappa: Cohen's kappa of the two labelers over the choices {a, b, tie}: 0 is chance, 1 perfect.
    by_confidence: n and agreement per bin of the AI's confidence max(p, 1 - p), showing whether confident
    labels are the right ones."""
    both = [(a, g) for a, g in zip(p_ai, p_gold, strict=True) if a is not None and g is not None and g != 0.5]
    n = len(both)
    out: dict[str, Any] = {"n": n, "n_pairs": len(p_ai), "gold_missing_or_tie": sum(g is None or g == 0.5
                                                                                   for g in p_gold)}
    if n == 0:
        return {**out, "agreement": None, "kappa": None, "by_confidence": []}
    ai = [_choice(a) for a, _ in both]
    gold = [_choice(g) for _, g in both]
    hits = [1.0 if x == y else 0.5 if x == "tie" else 0.0 for x, y in zip(ai, gold, strict=True)]
    observed = sum(x == y for x, y in zip(ai, gold, strict=True)) / n
    expected = sum((ai.count(c) / n) * (gold.count(c) / n) for c in ("a", "b", "tie"))
    kappa = (observed - expected) / (1 - expected) if expected < 1 else None
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        inside = [h for (a, _), h in zip(both, hits, strict=True)
                  if lo <= max(a, 1 - a) < hi or (hi == bins[-1] and max(a, 1 - a) == hi)]
        rows.append({"confidence": [lo, hi], "n": len(inside),
                     "agreement": sum(inside) / len(inside) if inside else None})
    return {**out, "agreement": sum(hits) / n, "kappa": kappa, "by_confidence": rows}


def _choice(p: float) -> str:
    return "a" if p > 0.5 else "b" if p < 0.5 else "tie"
