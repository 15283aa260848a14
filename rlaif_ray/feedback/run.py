"""Judge the calls a label store does not hold yet: the one path `label` and `eval` share.

    pending = Pending(pool_cfg.judge, run_dir, pairs)       # every call the pairs need, and those not stored
    pending = Pending(judge, run_dir, tasks=write_tasks, chash=writer_hash(judge))  # or any calls
    summary = pending.run(pool_cfg, ray_cfg, interruptible=True)   # the Message Batches API or a FeedbackPool
    pending.store, pending.interrupted, pending.nodes

Everything a call returns lands in `<run_dir>/labels/` before it is counted, so a re-run (after a crash, a
signal or a failed call) pays only for what is missing. With `interruptible`, SIGTERM/SIGINT stop
dispatching; calls in flight finish and are stored.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from ..config import FeedbackPoolConfig, JudgeConfig, RayConfig
from ..stopping import StopSignal
from .judges import config_hash, judge_id
from .labels import tasks_for
from .store import LabelStore

log = logging.getLogger(__name__)


class Progress:
    """tqdm bar over stored judge calls with labels/s, ETA and spend so far."""

    def __init__(self, total: int, store: LabelStore, chash: str, already: int, desc: str):
        from tqdm import tqdm

        self.store, self.chash, self.start_ok = store, chash, already
        self.bar = tqdm(total=total, unit="call", desc=desc, mininterval=1.0, dynamic_ncols=True)

    def __call__(self) -> None:
        self.store.refresh()
        t = self.store.totals.get(self.chash, {"ok": 0, "failed": 0, "cost_usd": 0.0})
        self.bar.n = max(0, int(t["ok"]) - self.start_ok)
        self.bar.set_postfix(failed=int(t["failed"]), spent=f"${t['cost_usd']:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class SpendBudget:
    """`pool.max_cost_usd` as the pool's dispatch limit: a call is sent only while the store's cumulative
    spend for this config (earlier runs, failed calls and lost-body estimates included) plus the calls sent
    and not yet stored, each priced as the mean stored call, leaves room for it. Before any call is priced,
    one goes out alone."""

    def __init__(self, max_usd: float, store: LabelStore, chash: str):
        self.max_usd, self.store, self.chash = max_usd, store, chash
        self.records_at_start = store.spent(chash)[0]

    def __call__(self, dispatched: int) -> int:
        self.store.refresh()  # new bytes only
        records, spent = self.store.spent(self.chash)
        in_flight = max(0, dispatched - (records - self.records_at_start))
        if records == 0:
            return 1 if in_flight == 0 and spent < self.max_usd else 0
        mean = spent / records
        if mean <= 0:
            return 1 << 30
        return max(0, int((self.max_usd - spent) / mean) - in_flight)


class Pending:
    def __init__(self, judge: JudgeConfig, run_dir: str, pairs: list | None = None, tasks: list | None = None,
                 chash: str | None = None, store: LabelStore | None = None):
        """`store`: the run dir's store, already read (one chunk of a streamed input after another)."""
        self.judge, self.run_dir = judge, run_dir
        self.chash, self.judge_id = chash or config_hash(judge), judge_id(judge)
        self.store = store or LabelStore(run_dir)
        self.store.refresh()
        self.tasks = tasks if tasks is not None else tasks_for(pairs or [], judge)
        self.todo = [t for t in self.tasks if not self.store.done(t.pair_id, self.chash, t.order, t.sample)]
        self.interrupted, self.nodes = False, []
        log.info("%d judge calls, %d already stored, %d to run (judge %s, config %s)", len(self.tasks),
                 len(self.tasks) - len(self.todo), len(self.todo), self.judge_id, self.chash)

    def run(self, pool_cfg: FeedbackPoolConfig, ray_cfg: RayConfig, interruptible: bool = False,
            desc: str = "labeling", pool=None) -> dict[str, Any]:
        """Run the calls not stored; the pool's (or the batches') summary. The store is refreshed after.
        `pool`: a FeedbackPool (built with this config hash) to run on and leave running; else one is
        started for this run and shut down after it."""
        if not self.todo:
            return {}
        already = int(self.store.totals.get(self.chash, {}).get("ok", 0))  # any calls of this config, these or others
        progress = Progress(len(self.todo), self.store, self.chash, already, desc)
        try:
            if self.judge.kind == "anthropic-batch":
                from .batch import run_batches

                return run_batches(self.judge, pool_cfg.retry, self.run_dir, self.chash, self.store, self.todo,
                                   progress)
            return self._run_pool(pool_cfg, ray_cfg, interruptible, progress, pool)
        finally:
            progress.close()
            self.store.refresh()

    def _run_pool(self, pool_cfg, ray_cfg, interruptible: bool, progress, pool=None) -> dict[str, Any]:
        from ..cluster import init_ray
        from .pool import FeedbackPool

        owned = pool is None
        if owned:
            init_ray(ray_cfg, shared={"run_dir": self.run_dir})
            pool = FeedbackPool(pool_cfg, ray_cfg, self.run_dir, self.chash)
        self.nodes = pool.nodes()

        stop = StopSignal((signal.SIGTERM, signal.SIGINT), pool.drain, "finishing calls in flight, then exiting")
        try:
            budget = None if pool_cfg.max_cost_usd is None else SpendBudget(pool_cfg.max_cost_usd, self.store,
                                                                            self.chash)
            if not interruptible:
                return pool.label(self.todo, progress, budget)
            with stop:
                try:
                    return pool.label(self.todo, progress, budget)
                finally:
                    self.interrupted = stop.requested
        finally:
            if owned:
                pool.shutdown()
