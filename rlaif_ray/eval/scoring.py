"""Per-answer scores beside the judge's comparisons: similarity to reference answers and reward-model
scores, each {policy: [score or nan per prompt]} (None when not configured)."""

from __future__ import annotations

from ..config import EvalJob


def similarity_to_references(cfg: EvalJob, prompts, answers) -> dict | None:
    import numpy as np

    from .similarity import load_embedder, similarity

    if not cfg.embedding_model or not any(p.reference for p in prompts):
        return None
    embedder = load_embedder(cfg.embedding_model)
    keep = [i for i, p in enumerate(prompts) if p.reference]
    out = {}
    for name, ans in answers.items():
        sims = np.full(len(prompts), np.nan)
        idx = [i for i in keep if ans[i] is not None]
        sims[idx] = similarity(embedder, [ans[i] for i in idx], [prompts[i].reference for i in idx])
        out[name] = sims
    return out


def reward_scores(cfg: EvalJob, prompts, answers) -> dict | None:
    """{policy: [RM score or nan per prompt]} from one RewardScorer actor (None without reward_model)."""
    import numpy as np
    import ray

    from ..reward import RewardScorer
    from .answers import resolve_policy

    if not cfg.reward_model:
        return None
    scorer = ray.remote(RewardScorer).options(num_cpus=1).remote(resolve_policy(cfg.reward_model, "fp32"))
    out = {}
    try:
        for name, ans in answers.items():
            idx = [i for i, a in enumerate(ans) if a is not None]
            scores = np.full(len(ans), np.nan)
            scores[idx] = ray.get(scorer.score.remote([prompts[i].prompt for i in idx], [ans[i] for i in idx]),
                                  timeout=cfg.rollout.timeout_s)
            out[name] = scores
    finally:
        ray.kill(scorer)
    return out
