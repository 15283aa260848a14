"""`rlaif-ray label`: unlabeled pairs -> FeedbackPool (or the Message Batches API) -> preference dataset.

The loop: read pairs, list the judge calls not yet in the label store, run them, consolidate every stored
verdict into TRL prompt/chosen/rejected rows with soft labels, write the summary (with `gold`: the labels'
agreement with it, Cohen's kappa and agreement by confidence). Re-running the same
command resumes: stored answers are skipped (never paid twice), failed ones are retried.
SIGTERM/SIGINT stop dispatching; calls in flight finish and are stored before exit.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..config import LabelJob

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="estimate tokens and dollars of the calls the input still needs (4 characters a token, "
                        "the judge's own prompts and price table), judging nothing; writes run_dir/dry_run.json")


def _dry_run(cfg: LabelJob, pending, run_dir: Path) -> int:
    """Tokens and dollars of every call not yet stored, from the prompts the judge would send: input at 4
    characters a token (no request is made, so no provider's count_tokens), the system prefix billed as a
    cache write then reads when Anthropic prompt caching is on, output between 1 token and max_tokens per
    call, half price on the Batches API."""
    from ..feedback.cost import cost_usd, prices_of
    from ..feedback.judge_api import estimate_tokens, max_tokens_of
    from ..feedback.prompts import pair_system, pair_user, score_system, score_user
    from ..feedback.rubrics import load_rubric
    from ..feedback.types import Usage

    j = cfg.pool.judge
    rubric = load_rubric(j.rubric)
    if j.protocol == "pointwise":
        system = score_system(rubric, j.cot, j.scale)
        users = [score_user(t.prompt, text, j.scale) for t in pending.todo for text in (t.first, t.second)]
    else:
        system = pair_system(rubric, j.cot)
        users = [pair_user(t.prompt, t.first, t.second) for t in pending.todo]
    n = len(users)
    sys_t, user_t = estimate_tokens(system), sum(estimate_tokens(u) for u in users)
    cached = j.prompt_caching and j.kind in ("anthropic", "anthropic-batch") and n > 0
    base = Usage(input=user_t + (0 if cached else n * sys_t), cache_write=sys_t if cached else 0,
                 cache_read=(n - 1) * sys_t if cached else 0)
    max_out = max_tokens_of(j)
    prices, batch = prices_of(j), j.kind == "anthropic-batch"
    low, high = (cost_usd(Usage(input=base.input, output=n * out, cache_write=base.cache_write,
                                cache_read=base.cache_read), prices, batch) for out in (1, max_out))
    estimate = {"calls": n, "calls_stored": len(pending.tasks) - len(pending.todo), "input_tokens": base.input,
                "cache_write_tokens": base.cache_write, "cache_read_tokens": base.cache_read,
                "output_tokens_max": n * max_out, "cost_usd_min": round(low, 6), "cost_usd_max": round(high, 6),
                "token_count": "estimate: 4 characters a token", "prices_per_mtok": prices, "batch": batch}
    (run_dir / "dry_run.json").write_text(json.dumps(estimate, indent=2))
    print(f"dry run: {n} calls to make ({estimate['calls_stored']} stored), "
          f"~{base.input + base.cache_write + base.cache_read} input tokens, up to {n * max_out} output tokens: "
          f"${low:.4f}-${high:.4f} -> {run_dir / 'dry_run.json'}")
    return 0


def run(cfg: LabelJob, args) -> int:
    from ..data import read_pairs, write_rows
    from ..feedback import consolidate
    from ..feedback.cost import prices_of
    from ..feedback.labels import cost_of
    from ..feedback.run import Pending

    for noisy in ("httpx", "httpx2"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    jcfg = cfg.pool.judge
    pairs = read_pairs(cfg.input, limit=cfg.max_examples)
    pending = Pending(jcfg, str(run_dir), pairs)
    store, chash, jid = pending.store, pending.chash, pending.judge_id
    if getattr(args, "dry_run", False):
        return _dry_run(cfg, pending, run_dir)
    t0 = time.perf_counter()
    run_summary = pending.run(cfg.pool, cfg.ray, interruptible=True)
    seconds = time.perf_counter() - t0
    rows, stats = consolidate(pairs, store, jcfg, chash, jid)
    output = Path(cfg.output or run_dir / "preferences.jsonl")
    write_rows(output, rows)
    cost_run = pending.run_cost()
    summary = {"output": str(output), "judge": jid, "judge_config_hash": chash, "interrupted": pending.interrupted,
               "calls_total": len(pending.tasks), "calls_run": len(pending.todo), "seconds": round(seconds, 3),
               "calls_per_s": round(cost_run["calls"] / seconds, 3) if seconds > 0 else None,
               **stats, "cost_run": cost_run, "cost_cumulative": cost_of(store.ledger()),
               "prices_per_mtok": prices_of(jcfg),
               "stopped_by_budget": bool(run_summary.get("budget_stopped")), "pool": run_summary,
               "nodes": pending.nodes, "torn_lines": store.torn_lines}
    if cfg.gold.enabled:
        from ..eval.gold import agreement, gold_preferences

        p_a = {row["id"]: row["p_a"] for row in rows}
        summary["gold"] = agreement([p_a.get(p.id) for p in pairs], gold_preferences(cfg.gold, pairs))
        g = summary["gold"]
        print(f"agreement with the gold: {g['agreement']} (Cohen's kappa {g['kappa']}) on {g['n']} pairs "
              f"({g['gold_missing_or_tie']} gold ties or missing)")
    summary_path = run_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    print(f"labeled {stats['labeled']}/{len(pairs)} pairs ({stats['unlabeled']} unlabeled) -> {output}; "
          f"run cost ${summary['cost_run']['cost_usd']:.4f}, cumulative ${summary['cost_cumulative']['cost_usd']:.4f}; "
          f"position consistency {stats['position_consistency']}; summary {summary_path}")
    if pending.interrupted:
        return 130
    if run_summary.get("budget_stopped"):
        print(f"stopped at the spend budget (pool.max_cost_usd={cfg.pool.max_cost_usd}) with {stats['labeled']}/"
              f"{len(pairs)} pairs labeled; re-run with a higher budget to go on")
        return 3
    return 0 if stats["unlabeled"] == 0 else 1
