"""From generated answers and judge verdicts to the eval results: win rates, matrix, scores,
position bias, similarity and reward summaries (`summarise`), the text report (`format_report`) and
the best/worst qualitative examples (`select_examples`)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from .stats import (
    Comparison,
    bootstrap_ci,
    normalised_scores,
    paired_bootstrap_pvalue,
    position_bias,
    win_rate,
    win_rate_matrix,
)


def model_pairs(models: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """(x, y) pairs to judge: every model against the baseline, or every unordered pair."""
    if baseline is not None:
        if baseline not in models:
            raise ValueError(f"baseline: {baseline!r} is not one of the policies {models}")
        return [(m, baseline) for m in models if m != baseline]
    return list(itertools.combinations(models, 2))


def per_model_summary(values: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, dict]:
    """Mean and bootstrap CI of a per-prompt metric of each model."""
    out = {}
    for m, v in values.items():
        v = np.asarray(v, dtype=float)
        v = v[~np.isnan(v)]
        out[m] = {"mean": float(v.mean()) if len(v) else math.nan, "ci": list(bootstrap_ci(v, n_boot, seed)),
                  "n": int(len(v))}
    return out


def paired_tests(values: dict[str, np.ndarray], pairs: list[tuple[str, str]], n_boot: int, seed: int) -> list[dict]:
    """Paired bootstrap test of mean(x - y) = 0 over prompts where both have a value."""
    out = []
    for x, y in pairs:
        d = np.asarray(values[x], dtype=float) - np.asarray(values[y], dtype=float)
        d = d[~np.isnan(d)]
        out.append({"x": x, "y": y, "n": int(len(d)), "mean_diff": float(d.mean()) if len(d) else math.nan,
                    "ci": list(bootstrap_ci(d, n_boot, seed)), "p": paired_bootstrap_pvalue(d, n_boot, seed)})
    return out


def summarise(models: list[str], baseline: str | None, comparisons: list[Comparison],
              similarity: dict[str, np.ndarray] | None = None, reward: dict[str, np.ndarray] | None = None,
              kl: dict[str, np.ndarray] | None = None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Every statistic of one eval as a JSON-ready dict (per-prompt metrics are aligned by prompt)."""
    pairs = model_pairs(models, baseline)
    by_pair = {p: [c for c in comparisons if (c.x, c.y) == p] for p in pairs}
    rates = [win_rate(cs, n_boot, seed) for cs in by_pair.values() if cs]
    matrix = win_rate_matrix(rates, models)
    res = {
        "models": models, "baseline": baseline, "n_comparisons": len(comparisons),
        "n_failed": sum(1 for c in comparisons if c.outcome is None),
        "win_rates": [r.to_dict() for r in rates],
        "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in matrix],
        "scores": normalised_scores(comparisons, models),
        "position_bias": position_bias(comparisons, n_boot, seed).to_dict(),
    }
    if baseline is not None:  # flat rows for tables: each policy against the baseline
        res["vs_baseline"] = [{"policy": r.x, "win_rate": r.win_rate, "ci_low": r.ci[0], "ci_high": r.ci[1],
                               "n": r.n, "sign_test_p": r.sign_test_p} for r in rates]
    for name, values in (("similarity", similarity), ("reward", reward), ("kl", kl)):
        if values:
            res[name] = per_model_summary(values, n_boot, seed)
            if name != "kl":
                res[f"{name}_tests"] = paired_tests(values, pairs, n_boot, seed)
    return res


def select_examples(comparisons: list[Comparison], answers: dict[str, list[str]], prompts: list[str],
                    prompt_index: dict[str, int], references: list[str | None] | None = None,
                    k: int = 3) -> list[dict]:
    """Per judged model pair, the k prompts where x looked best and the k where it looked worst."""
    out = []
    pairs = dict.fromkeys((c.x, c.y) for c in comparisons)
    for x, y in pairs:
        cs = sorted((c for c in comparisons if (c.x, c.y) == (x, y) and c.p_x is not None), key=lambda c: c.p_x)
        picked = [("best", c) for c in reversed(cs[-k:])] + [("worst", c) for c in cs[:k] if c not in cs[-k:]]
        for kind, c in picked:
            i = prompt_index[c.prompt_id]
            out.append({"kind": kind, "x": x, "y": y, "p_x": c.p_x, "prompt": prompts[i],
                        "answer_x": answers[x][i], "answer_y": answers[y][i],
                        "reference": references[i] if references else None})
    return out


def format_examples(examples: list[dict]) -> str:
    lines = []
    for e in examples:
        lines += [f"## {e['kind']} for {e['x']} vs {e['y']}  (P({e['x']} better) = {e['p_x']:.2f})", "",
                  f"**Prompt:** {e['prompt']}", "", f"**{e['x']}:** {e['answer_x']}", "",
                  f"**{e['y']}:** {e['answer_y']}", ""]
        if e.get("reference"):
            lines += [f"**Reference:** {e['reference']}", ""]
    return "\n".join(lines)


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def format_report(res: dict) -> str:
    """The human-readable report of `summarise`'s dict."""
    lines = [f"Eval of {len(res['models'])} policies: {', '.join(res['models'])}"
             + (f" (baseline: {res['baseline']})" if res["baseline"] else " (all pairs)"),
             f"{res['n_comparisons']} comparisons, {res['n_failed']} without a verdict", "",
             "Win rates (ties count half; 95% bootstrap CI; sign test and paired bootstrap p):",
             f"  {'model':<16} {'vs':<16} {'n':>5} {'W/T/L':>12} {'win rate':>9} {'95% CI':>16} "
             f"{'soft':>6} {'p_sign':>8} {'p_boot':>8}"]
    for r in res["win_rates"]:
        wtl = f"{r['wins']}/{r['ties']}/{r['losses']}"
        lines.append(f"  {r['x']:<16} {r['y']:<16} {r['n']:>5} {wtl:>12} {r['win_rate']:>9.3f} "
                     f"{_ci(r['ci']):>16} {r['soft_win_rate']:>6.3f} {r['sign_test_p']:>8.3g} {r['bootstrap_p']:>8.3g}")
    lines += ["", "Normalised scores (Bradley-Terry, Elo scale, mean 0):"]
    for m, s in sorted(res["scores"].items(), key=lambda kv: -kv[1]["elo"]):
        lines.append(f"  {m:<16} {s['elo']:>8.1f}  (expected win rate vs average {s['expected_win_rate']:.3f})")
    pb = res["position_bias"]
    lines += ["", f"Judge position bias: prefers the first-shown answer in {pb['first_position_rate']:.3f} of "
              f"{pb['n_verdicts']} verdicts, 95% CI {_ci(pb['ci'])} -> "
              + ("BIASED (CI excludes 0.5)" if pb["biased"] else "no significant bias")
              + (f"; both orders agree in {pb['consistency']:.3f} of {pb['n_both_orders']} doubly-judged pairs"
                 if pb["n_both_orders"] else "; no pair was judged in both orders")]
    if "gold" in res:
        g, ag = res["gold"], res["gold"]["judge_agreement"]
        lines += ["", "Win rates by the gold (same answers, same CIs):"]
        for r in g["win_rates"]:
            lines.append(f"  {r['x']:<16} {r['y']:<16} {r['n']:>5} {r['win_rate']:>9.3f} {_ci(r['ci']):>16}")
        lines.append(f"Judge agrees with the gold on {_num(ag['agreement'])} of {ag['n']} comparisons the gold "
                     f"decides (Cohen's kappa {_num(ag['kappa'])})")
        for m, sc in g.get("score", {}).items():
            lines.append(f"  gold score {m:<16} {sc['mean']:>8.3f}  95% CI {_ci(sc['ci'])}  n={sc['n']}")
    for name, title in (("similarity", "Similarity to reference answers (cosine, MiniLM)"),
                        ("reward", "Reward-model score"), ("kl", "KL to the reference (sequence log-ratio)")):
        if name in res:
            lines += ["", f"{title}:"]
            for m, s in res[name].items():
                lines.append(f"  {m:<16} {s['mean']:>8.3f}  95% CI {_ci(s['ci'])}  n={s['n']}")
            for t in res.get(f"{name}_tests", []):
                lines.append(f"  {t['x']} - {t['y']}: {t['mean_diff']:+.3f} {_ci(t['ci'])} paired bootstrap p={t['p']:.3g}")
    return "\n".join(lines) + "\n"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
