"""`rlaif-ray label`: unlabeled pairs -> FeedbackPool (or the Message Batches API) -> preference dataset.

The loop, one chunk of `chunk_pairs` pairs at a time (memory holds one chunk, the store's compact index
and running sums): list the chunk's judge calls not yet in the label store, run them on the run's one
pool, consolidate the chunk's stored verdicts into TRL prompt/chosen/rejected rows with soft labels and
append them to the output; then write the summary (with `gold`: the labels' agreement with it, Cohen's
kappa and agreement by confidence). Re-running the same command resumes: stored answers are skipped
(never paid twice), failed ones are retried.
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


class DryRun:
    """Tokens and dollars of every call not yet stored, from the prompts the judge would send, chunk by chunk:
    input at 4 characters a token (no request is made, so no provider's count_tokens), the system prefix
    billed as a cache write then reads when Anthropic prompt caching is on, output between 1 token and
    max_tokens per call, half price on the Batches API."""

    def __init__(self, cfg: LabelJob):
        from ..feedback.prompts import pair_system, score_system
        from ..feedback.rubrics import load_rubric

        self.j = j = cfg.pool.judge
        rubric = load_rubric(j.rubric)
        self.system = score_system(rubric, j.cot, j.scale) if j.protocol == "pointwise" else pair_system(rubric, j.cot)
        self.calls, self.stored, self.user_tokens = 0, 0, 0

    def add(self, pending) -> None:
        from ..feedback.judge_api import estimate_tokens
        from ..feedback.prompts import pair_user, score_user

        j = self.j
        if j.protocol == "pointwise":
            users = [score_user(t.prompt, text, j.scale) for t in pending.todo for text in (t.first, t.second)]
        else:
            users = [pair_user(t.prompt, t.first, t.second) for t in pending.todo]
        self.calls += len(users)
        self.stored += len(pending.tasks) - len(pending.todo)
        self.user_tokens += sum(estimate_tokens(u) for u in users)

    def write(self, run_dir: Path) -> int:
        from ..feedback.cost import cost_usd, prices_of
        from ..feedback.judge_api import estimate_tokens, max_tokens_of
        from ..feedback.types import Usage

        j, n = self.j, self.calls
        sys_t = estimate_tokens(self.system)
        cached = j.prompt_caching and j.kind in ("anthropic", "anthropic-batch") and n > 0
        base = Usage(input=self.user_tokens + (0 if cached else n * sys_t), cache_write=sys_t if cached else 0,
                     cache_read=(n - 1) * sys_t if cached else 0)
        max_out = max_tokens_of(j)
        prices, batch = prices_of(j), j.kind == "anthropic-batch"
        low, high = (cost_usd(Usage(input=base.input, output=n * out, cache_write=base.cache_write,
                                    cache_read=base.cache_read), prices, batch) for out in (1, max_out))
        estimate = {"calls": n, "calls_stored": self.stored, "input_tokens": base.input,
                    "cache_write_tokens": base.cache_write, "cache_read_tokens": base.cache_read,
                    "output_tokens_max": n * max_out, "cost_usd_min": round(low, 6), "cost_usd_max": round(high, 6),
                    "token_count": "estimate: 4 characters a token", "prices_per_mtok": prices, "batch": batch}
        (run_dir / "dry_run.json").write_text(json.dumps(estimate, indent=2))
        print(f"dry run: {n} calls to make ({self.stored} stored), "
              f"~{base.input + base.cache_write + base.cache_read} input tokens, up to {n * max_out} output "
              f"tokens: ${low:.4f}-${high:.4f} -> {run_dir / 'dry_run.json'}")
        return 0


def run(cfg: LabelJob, args) -> int:
    from ..data import RowWriter, iter_chunks
    from ..eval.gold import gold_preferences
    from ..feedback import LabelStore, config_hash, judge_id
    from ..feedback.cost import prices_of
    from ..feedback.labels import LabelStats, consolidate, cost_of
    from ..feedback.run import Pending

    for noisy in ("httpx", "httpx2"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    jcfg = cfg.pool.judge
    chash, jid = config_hash(jcfg), judge_id(jcfg)
    store = LabelStore(run_dir)
    store.refresh()  # once: every chunk looks its calls up in this index
    chunks = iter_chunks(cfg.input, "pairs", cfg.chunk_pairs, cfg.max_examples)
    if getattr(args, "dry_run", False):
        dry = DryRun(cfg)
        for pairs in chunks:
            dry.add(Pending(jcfg, str(run_dir), pairs, store=store))
        return dry.write(run_dir)

    before = cost_of(store.ledger(chash, cut_off=False))
    output = RowWriter(cfg.output or run_dir / "preferences.jsonl")
    stats, pool_summary, nodes, pool = LabelStats(), {}, [], None
    calls_total = calls_to_run = 0
    interrupted = budget_stopped = False
    judge_s = consolidate_s = 0.0  # in the pool (or batches), and reading verdicts back + writing rows
    gold_p_a, gold = [], []
    batched = jcfg.kind == "anthropic-batch"
    t0 = time.perf_counter()
    try:
        if batched:  # every chunk's calls go out first, so that several batches run at once
            t = time.perf_counter()
            pool_summary = _judge_by_batches(cfg, run_dir, store, chash)
            judge_s, calls_to_run = time.perf_counter() - t, pool_summary.get("calls_submitted", 0)
        for i, pairs in enumerate(chunks):
            pending = Pending(jcfg, str(run_dir), pairs, store=store)
            calls_total += len(pending.tasks)
            if pending.todo and not (batched or interrupted or budget_stopped):  # else written from the store
                calls_to_run += len(pending.todo)
                if pool is None:
                    pool = _start_pool(cfg, run_dir, chash)
                t = time.perf_counter()
                s = pending.run(cfg.pool, cfg.ray, interruptible=True, desc=f"labeling, chunk {i + 1}", pool=pool)
                judge_s += time.perf_counter() - t
                _add_summary(pool_summary, s)
                interrupted, budget_stopped = pending.interrupted, bool(s.get("budget_stopped"))
                nodes = pending.nodes or nodes
            t = time.perf_counter()
            rows, _ = consolidate(pairs, store, jcfg, chash, jid, stats)
            output.write(rows)
            consolidate_s += time.perf_counter() - t
            if cfg.gold.enabled:
                p_a = {row["id"]: row["p_a"] for row in rows}
                gold_p_a += [p_a.get(p.id) for p in pairs]
                gold += gold_preferences(cfg.gold, pairs)
    finally:
        if pool is not None:
            pool.shutdown()
    seconds = time.perf_counter() - t0
    out_path = output.close()
    store.refresh()
    totals = stats.summary()
    now = cost_of(store.ledger(chash, cut_off=False))
    cost_run = {k: round(v - before[k], 8) if isinstance(v, float) else v - before[k] for k, v in now.items()}
    summary = {"output": str(out_path), "judge": jid, "judge_config_hash": chash, "interrupted": interrupted,
               "calls_total": calls_total, "calls_run": calls_to_run, "seconds": round(seconds, 3),
               "judge_s": round(judge_s, 3), "consolidate_s": round(consolidate_s, 3),
               "calls_per_s": round(cost_run["calls"] / judge_s, 3) if judge_s > 0 else None,
               **totals, "cost_run": cost_run, "cost_cumulative": cost_of(store.ledger()),
               "prices_per_mtok": prices_of(jcfg), "stopped_by_budget": budget_stopped, "pool": pool_summary,
               "nodes": nodes, "torn_lines": store.torn_lines}
    if cfg.gold.enabled:
        from ..eval.gold import agreement

        summary["gold"] = g = agreement(gold_p_a, gold)
        print(f"agreement with the gold: {g['agreement']} (Cohen's kappa {g['kappa']}) on {g['n']} pairs "
              f"({g['gold_missing_or_tie']} gold ties or missing)")
    summary_path = run_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    print(f"labeled {totals['labeled']}/{totals['pairs']} pairs ({totals['unlabeled']} unlabeled) -> {out_path}; "
          f"run cost ${cost_run['cost_usd']:.4f}, cumulative ${summary['cost_cumulative']['cost_usd']:.4f}; "
          f"position consistency {totals['position_consistency']}; summary {summary_path}")
    if interrupted:
        return 130
    if budget_stopped:
        print(f"stopped at the spend budget (pool.max_cost_usd={cfg.pool.max_cost_usd}) with {totals['labeled']}/"
              f"{totals['pairs']} pairs labeled; re-run with a higher budget to go on")
        return 3
    return 0 if totals["unlabeled"] == 0 else 1


def _judge_by_batches(cfg: LabelJob, run_dir: Path, store, chash: str) -> dict:
    """Every call the input still needs through the Message Batches API, the input streamed chunk by chunk
    into batches (`pool.judge.batch_max_in_flight` at once), once per retry round."""
    from ..data import iter_chunks
    from ..feedback.batch import run_batches
    from ..feedback.labels import tasks_for
    from ..feedback.run import Progress

    def chunks():
        for pairs in iter_chunks(cfg.input, "pairs", cfg.chunk_pairs, cfg.max_examples):
            yield tasks_for(pairs, cfg.pool.judge)

    already = int(store.totals.get(chash, {}).get("ok", 0))
    progress = Progress(None, store, chash, already, "labeling (message batches)")
    try:
        return run_batches(cfg.pool.judge, cfg.pool.retry, str(run_dir), chash, store, chunks, progress)
    finally:
        progress.close()
        store.refresh()


def _start_pool(cfg: LabelJob, run_dir: Path, chash: str):
    """One FeedbackPool for every chunk of the run (started on the first chunk that has calls to make)."""
    from ..cluster import init_ray
    from ..feedback.pool import FeedbackPool

    init_ray(cfg.ray, shared={"run_dir": str(run_dir)})
    return FeedbackPool(cfg.pool, cfg.ray, str(run_dir), chash)


def _add_summary(total: dict, s: dict) -> None:
    """Sum one chunk's pool (or batches) summary into the run's: counts and token usage add, the rest (the
    limiter's state, flags) is the last chunk's."""
    for k, v in s.items():
        if k == "usage":
            for kk, x in v.items():
                total.setdefault(k, {})[kk] = total.get(k, {}).get(kk, 0) + x
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            total[k] = total.get(k, 0) + v
        else:
            total[k] = v
