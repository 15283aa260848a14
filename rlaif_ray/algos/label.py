"""`rlaif-ray label`: unlabeled pairs -> FeedbackPool (or the Message Batches API) -> preference dataset.

The loop: read pairs, list the judge calls not yet in the label store, run them, consolidate every stored
verdict into TRL prompt/chosen/rejected rows with soft labels, write the summary. Re-running the same
command resumes: stored answers are skipped (never paid twice), failed ones are retried.
SIGTERM/SIGINT stop dispatching; calls in flight finish and are stored before exit.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

from ..config import LabelJob

log = logging.getLogger(__name__)


class _Progress:
    """tqdm bar over stored judge calls with labels/s, ETA and spend so far."""

    def __init__(self, total: int, store, config_hash: str, already: int):
        from tqdm import tqdm

        self.store, self.config_hash = store, config_hash
        self.bar = tqdm(total=total, unit="call", desc="labeling", mininterval=1.0, dynamic_ncols=True)
        self.start_ok = already

    def __call__(self) -> None:
        self.store.refresh()
        t = self.store.totals.get(self.config_hash, {"ok": 0, "failed": 0, "cost_usd": 0.0})
        self.bar.n = max(0, int(t["ok"]) - self.start_ok)
        self.bar.set_postfix(failed=int(t["failed"]), spent=f"${t['cost_usd']:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run(cfg: LabelJob, args) -> int:
    from ..data import read_pairs, write_rows
    from ..feedback import LabelStore, config_hash, consolidate, judge_id, tasks_for
    from ..feedback.labels import cost_of
    from ..feedback.store import key_of

    for noisy in ("httpx", "httpx2"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    jcfg = cfg.pool.judge
    pairs = read_pairs(cfg.input, limit=cfg.max_examples)
    chash, jid = config_hash(jcfg), judge_id(jcfg)
    store = LabelStore(run_dir)
    store.refresh()
    all_tasks = tasks_for(pairs, jcfg)
    todo = [t for t in all_tasks if not store.done(t.pair_id, chash, t.order, t.sample)]
    stored_before = {(key_of(r), r["t"]) for r in store.records(chash)}
    log.info("%d pairs, %d judge calls, %d already stored, %d to run (judge %s, config %s)",
             len(pairs), len(all_tasks), len(all_tasks) - len(todo), len(todo), jid, chash)
    progress = _Progress(len(todo), store, chash, len(all_tasks) - len(todo))
    t0 = time.perf_counter()
    interrupted, nodes, run_summary = False, [], {}
    if todo and jcfg.kind == "anthropic-batch":
        from ..feedback.batch import run_batches

        run_summary = run_batches(jcfg, cfg.pool.retry, str(run_dir), chash, store, todo, progress)
    elif todo:
        from ..cluster import init_ray
        from ..feedback.pool import FeedbackPool

        init_ray(cfg.ray, shared={"run_dir": str(run_dir)})
        pool = FeedbackPool(cfg.pool, cfg.ray, str(run_dir), chash)
        nodes = pool.nodes()

        def stop(signum, _frame):
            nonlocal interrupted
            interrupted = True
            log.warning("signal %d: finishing calls in flight, then exiting (re-run to resume)", signum)
            pool.drain()

        old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            run_summary = pool.label(todo, progress)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            pool.shutdown()
    progress.close()
    seconds = time.perf_counter() - t0
    store.refresh()
    rows, stats = consolidate(pairs, store, jcfg, chash, jid)
    output = Path(cfg.output or run_dir / "preferences.jsonl")
    write_rows(output, rows)
    new_records = [r for r in store.records(chash) if (key_of(r), r["t"]) not in stored_before]
    summary = {"output": str(output), "judge": jid, "judge_config_hash": chash, "interrupted": interrupted,
               "calls_total": len(all_tasks), "calls_run": len(todo), "seconds": round(seconds, 3),
               "calls_per_s": round(len(new_records) / seconds, 3) if seconds > 0 else None,
               **stats, "cost_run": cost_of(new_records), "cost_cumulative": cost_of(store.records()),
               "pool": run_summary, "nodes": nodes, "torn_lines": store.torn_lines}
    summary_path = run_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    print(f"labeled {stats['labeled']}/{len(pairs)} pairs ({stats['unlabeled']} unlabeled) -> {output}; "
          f"run cost ${summary['cost_run']['cost_usd']:.4f}, cumulative ${summary['cost_cumulative']['cost_usd']:.4f}; "
          f"position consistency {stats['position_consistency']}; summary {summary_path}")
    if interrupted:
        return 130
    return 0 if stats["unlabeled"] == 0 else 1
