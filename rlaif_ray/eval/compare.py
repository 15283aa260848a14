"""Eval comparisons: every compared pair of answers shown to the judge with the models' positions
randomised per prompt, both orders judged through the durable label store (a re-run pays for nothing twice).

    pairs = build_pairs(cfg, prompts, answers)
    comparisons, labeling = judge(cfg, pairs, run_dir)
"""

from __future__ import annotations

from pathlib import Path

from ..config import EvalJob


def build_pairs(cfg: EvalJob, prompts, answers: dict[str, list[str | None]]):
    """Per compared (x, y) and prompt: the PairRecord shown to the judge with x's position randomised,
    as (pair, prompt_id, x, y, x_is_a). The pair id hashes the shown order, so identical content in the
    same order shares a label and the opposite order never reuses it."""
    import numpy as np

    from ..data import PairRecord, content_id
    from .report import model_pairs

    rng = np.random.default_rng(cfg.seed)
    out = []
    for x, y in model_pairs(list(cfg.policies), cfg.baseline):
        for i, p in enumerate(prompts):
            ax, ay = answers[x][i], answers[y][i]
            x_is_a = bool(rng.random() < 0.5)
            if ax is None or ay is None:  # a prompt rejected as too long by an engine
                continue
            a, b = (ax, ay) if x_is_a else (ay, ax)
            out.append((PairRecord(p.prompt, a, b, id=content_id("eval", p.prompt, a, b)), p.id, x, y, x_is_a))
    return out


def judge(cfg: EvalJob, pairs, run_dir: Path) -> tuple[list, dict]:
    """Run the judge calls not yet stored; return Comparisons and the labeling summary."""
    from ..feedback.labels import cost_of, n_samples, orders
    from ..feedback.run import Pending
    from .stats import Comparison

    jcfg = cfg.pool.judge
    unique = list({pr.id: pr for pr, *_ in pairs}.values())
    pending = Pending(jcfg, str(run_dir), unique)
    summary = pending.run(cfg.pool, cfg.ray, desc="judge")
    store, chash = pending.store, pending.chash

    def p_first(pid: str, order: str) -> float | None:
        recs = [store.get(pid, chash, order, k) for k in range(n_samples(jcfg))]
        if any(r is None or r["status"] != "ok" for r in recs):
            return None
        return sum(r["p_first"] for r in recs) / len(recs)

    comparisons = []
    for pr, prompt_id, x, y, x_is_a in pairs:
        ab, ba = p_first(pr.id, "ab"), (p_first(pr.id, "ba") if "ba" in orders(jcfg) else None)
        comparisons.append(Comparison(prompt_id, x, y, ab if x_is_a else ba, ba if x_is_a else ab))
    records = [store.get(pr.id, chash, t, k) for pr in unique for t in ("ab", "ba") for k in range(n_samples(jcfg))]
    records = [r for r in records if r is not None]
    return comparisons, {"judge": pending.judge_id, "judge_config_hash": chash, "calls": len(pending.tasks),
                         "calls_run": len(pending.todo), "failed": sum(r["status"] != "ok" for r in records),
                         "cost": cost_of(records), "pool": summary}


def gold_comparisons(cfg: EvalJob, pairs) -> list:
    """The same comparisons decided by `cfg.gold`: P_gold(x > y), 0.5 for a gold tie, None where it has none."""
    from .gold import gold_preferences
    from .stats import Comparison

    p_a = gold_preferences(cfg.gold, [pr for pr, *_ in pairs])
    return [Comparison(prompt_id, x, y, None if p is None else p if x_is_a else 1.0 - p, None)
            for (_, prompt_id, x, y, x_is_a), p in zip(pairs, p_a, strict=True)]
