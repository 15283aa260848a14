"""`rlaif-ray eval`: compare checkpoints on held-out prompts.

The loop: each policy answers every prompt on rollout workers (greedy by default; answers cached per
policy in `answers/`: `eval/answers.py`), every compared pair of answers goes to the judge with the models'
positions randomised per prompt and both orders judged (verdicts land in the durable label store, so a
re-run pays for nothing twice: `eval/compare.py`), then the statistics (`eval/stats.py`): win rates with bootstrap CIs and paired tests,
the win-rate matrix, Bradley-Terry scores, the judge's position bias, similarity to reference answers,
optional KL to a reference policy; with a `gold`, the same win rates decided by the gold and the judge's
agreement with it. Writes results.json, report.txt, examples.md/.jsonl, comparisons.jsonl,
plots/*.png, metrics.jsonl and TensorBoard scalars in run_dir.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..config import EvalJob

log = logging.getLogger(__name__)


def evaluate(cfg: EvalJob) -> dict:
    """The whole eval; returns the results dict also written to run_dir/results.json."""
    import numpy as np

    from ..cluster import init_ray
    from ..data import read_prompts, write_rows
    from ..eval import format_examples, format_report, select_examples, summarise
    from ..eval.answers import generate_answers
    from ..eval.compare import build_pairs, gold_comparisons, judge
    from ..eval.gold import agreement, gold_scores
    from ..eval.plots import plot_gold_vs_kl, plot_heatmap, plot_similarity, plot_win_rates
    from ..eval.report import per_model_summary
    from ..eval.scoring import reward_scores, similarity_to_references

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(cfg.prompts, limit=cfg.max_prompts)
    models = list(cfg.policies)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    init_ray(cfg.ray, shared={"run_dir": str(run_dir)})
    samples, kl = generate_answers(cfg, prompts, run_dir)
    answers = {m: [s.text if s is not None else None for s in samples[m]] for m in models}
    times["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = build_pairs(cfg, prompts, answers)
    comparisons, labeling = judge(cfg, pairs, run_dir)
    times["judge"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sims = similarity_to_references(cfg, prompts, answers)
    times["similarity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewards = reward_scores(cfg, prompts, answers)
    if rewards is not None:
        times["reward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = summarise(models, cfg.baseline, comparisons, similarity=sims, reward=rewards,
                    kl={m: np.asarray(v, dtype=float) for m, v in kl.items()} or None,
                    n_boot=cfg.bootstrap, seed=cfg.seed)
    if cfg.gold.enabled:  # the same comparisons by the gold, and how often the judge sides with it
        gold = gold_comparisons(cfg, pairs)
        by_gold = summarise(models, cfg.baseline, gold, n_boot=cfg.bootstrap, seed=cfg.seed)
        res["gold"] = {k: by_gold[k] for k in ("win_rates", "vs_baseline", "scores") if k in by_gold}
        res["gold"]["judge_agreement"] = agreement([c.p_x for c in comparisons], [g.p_x for g in gold])
        scores = gold_scores(cfg.gold, prompts, answers)
        if scores is not None:
            res["gold"]["score"] = per_model_summary(scores, cfg.bootstrap, cfg.seed)
    res["answer_length_tokens"] = {m: float(np.mean([len(s.token_ids) for s in samples[m] if s is not None] or [0]))
                                   for m in models}
    plots = run_dir / "plots"
    files = {"results": run_dir / "results.json", "report": run_dir / "report.txt",
             "examples": run_dir / "examples.md", "comparisons": run_dir / "comparisons.jsonl",
             "win_rates_png": plot_win_rates([{"label": f"{r['x']} vs {r['y']}", **r} for r in res["win_rates"]],
                                             plots / "win_rates.png"),
             "heatmap_png": plot_heatmap(np.array(res["matrix"], dtype=float), models, plots / "win_rate_matrix.png")}
    if "score" in res.get("gold", {}) and "kl" in res:
        files["gold_vs_kl_png"] = plot_gold_vs_kl(res["gold"]["score"], res["kl"], plots / "gold_vs_kl.png")
    if sims:
        files["similarity_png"] = plot_similarity({m: v[~np.isnan(v)] for m, v in sims.items()},
                                                  plots / "similarity.png")
    index = {p.id: i for i, p in enumerate(prompts)}
    examples = select_examples(comparisons, answers, [str(p.prompt) for p in prompts], index,
                               [p.reference for p in prompts], k=cfg.examples)
    write_rows(run_dir / "examples.jsonl", examples)
    files["examples"].write_text(format_examples(examples))
    write_rows(files["comparisons"], [{**c.__dict__, "p_x": c.p_x, "outcome": c.outcome} for c in comparisons])
    times["stats"] = time.perf_counter() - t0
    res.update({"prompts": cfg.prompts, "n_prompts": len(prompts),
                "policies": {m: cfg.policies[m] for m in models}, "labeling": labeling,
                "seconds": {k: round(v, 2) for k, v in times.items()},
                "files": {k: str(v) for k, v in files.items()}})
    files["results"].write_text(json.dumps(res, indent=2, default=str))
    report = format_report(res) + (f"\nJudge {labeling['judge']}: {labeling['calls']} calls "
                                   f"({labeling['calls_run']} run now, {labeling['failed']} failed), "
                                   f"cost ${labeling['cost']['cost_usd']:.4f}\n")
    files["report"].write_text(report)
    _log_metrics(run_dir, res)
    return res


def _log_metrics(run_dir: Path, res: dict) -> None:
    """metrics.jsonl (one row per compared pair and per stage) and TensorBoard scalars."""
    from ..data import write_rows

    rows = [{"metric": f"win_rate/{r['x']}_vs_{r['y']}", "value": r["win_rate"], "ci": r["ci"]}
            for r in res["win_rates"]]
    rows += [{"metric": f"seconds/{k}", "value": v} for k, v in res["seconds"].items()]
    rows.append({"metric": "judge/first_position_rate", "value": res["position_bias"]["first_position_rate"]})
    write_rows(run_dir / "metrics.jsonl", rows)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; the JSONL metrics carry the same numbers
        return
    with SummaryWriter(str(run_dir / "tb")) as tb:
        for r in rows:
            tb.add_scalar(f"eval/{r['metric']}", r["value"], 0)


def run(cfg: EvalJob, args) -> int:
    res = evaluate(cfg)
    run_dir = Path(cfg.run_dir)
    print((run_dir / "report.txt").read_text(), end="")
    if res["position_bias"]["biased"]:
        print("warning: the judge prefers one position (CI excludes 0.5); win rates rely on both orders")
    print(f"eval: results.json, report.txt, examples.md, plots/ and config.yaml in {run_dir}")
    return 0 if res["n_failed"] < res["n_comparisons"] else 1
