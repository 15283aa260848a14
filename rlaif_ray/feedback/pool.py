"""FeedbackPool: K FeedbackActors placed by a placement group (STRICT_SPREAD puts them on different nodes),
fed shards by work stealing: each actor holds a bounded backlog, and whichever finishes a shard first takes
the next (shards shrink towards the end), so a slow actor never holds the job. A shard whose actor died goes back to the queue minus what the
store already holds, and runs on a live (or restarted) actor.

    pool = FeedbackPool(pool_cfg, ray_cfg, run_dir, config_hash)
    summary = pool.label(tasks, on_progress)     # verdicts land in <run_dir>/labels/
    p_a = pool.compare([(prompt, a, b), ...])    # both-order P(a > b) or None, no store
    scores = pool.score([(prompt, response), ...])  # normalised [0, 1] or None (judge-as-reward)
    pool.nodes(); pool.shutdown()
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from ..actor_group import ActorGroup
from ..config import FeedbackPoolConfig, RayConfig
from .actor import FeedbackActor, Secrets
from .labels import orders, p_a_of
from .store import LabelStore
from .types import Task

log = logging.getLogger(__name__)
MAX_ACTOR_FAILURES = 3
MIN_SHARD = 8


class FeedbackPool:
    """Driver-side handle of the pool's actors."""

    def __init__(self, cfg: FeedbackPoolConfig, ray_cfg: RayConfig, run_dir: str | None, config_hash: str = "",
                 cpus_per_actor: float = 1.0, max_restarts: int = 3):
        self.cfg, self.run_dir, self.config_hash = cfg, run_dir, config_hash
        self.store = LabelStore(run_dir) if run_dir else None
        k, labels_dir, secrets = cfg.num_actors, str(self.store.dir) if self.store else None, Secrets.from_env()
        self.budget = _budget(cfg) if _api_kind(cfg) else None  # one rate budget for every actor, any node
        self.group = ActorGroup(FeedbackActor, k, {"CPU": cpus_per_actor}, name="feedback", kind="feedback actor",
                                timeout_s=cfg.timeout_s, strategy=ray_cfg.placement_strategy,
                                options={"max_restarts": max_restarts, "max_concurrency": 1000},
                                args=lambda i: (cfg, labels_dir, config_hash, i, 1.0 / k, secrets, self.budget))
        self.actors = self.group.actors
        self._nodes = self.group.call("info")
        self.stop_requested = False

    def nodes(self) -> list[dict[str, Any]]:
        return self._nodes

    def drain(self) -> None:
        """Stop dispatching; in-flight calls finish and are stored."""
        self.stop_requested = True
        for a in self.actors:
            a.drain.remote()

    def label(self, tasks: list[Task], on_progress: Callable[[], None] | None = None,
              budget: Callable[[int], int] | None = None) -> dict[str, Any]:
        """Judge and store `tasks`. `budget(dispatched)`: how many more calls may be sent now, given how
        many this run has sent (a spend limit); when it allows none and nothing runs, the run stops with
        `budget_stopped`."""
        import ray
        from ray.exceptions import RayActorError

        queue = deque(tasks)
        running: dict[Any, tuple[int, list[Task]]] = {}
        load = [0] * len(self.actors)
        failures = [0] * len(self.actors)
        totals = {"ok": 0, "failed": 0, "skipped": 0, "cost_usd": 0.0, "estimated_usd": 0.0, "attempts": 0,
                  "reasks": 0, "requeued_shards": 0, "budget_stopped": False,
                  "usage": {"input": 0, "output": 0, "cache_write": 0, "cache_read": 0}}
        dispatched = 0
        while queue or running:
            if not self.stop_requested:
                for i, actor in enumerate(self.actors):
                    while queue and load[i] < self._backlog() and failures[i] < MAX_ACTOR_FAILURES:
                        n = min(len(queue), self._shard_len(len(queue)))
                        n = n if budget is None else min(n, budget(dispatched))
                        if n <= 0:
                            break
                        shard = [queue.popleft() for _ in range(n)]
                        running[actor.label.remote(shard)] = (i, shard)
                        load[i] += len(shard)
                        dispatched += n
            if not running:
                totals["budget_stopped"] = bool(queue) and not self.stop_requested and budget is not None
                if all(f >= MAX_ACTOR_FAILURES for f in failures):
                    raise RuntimeError(f"every pool actor died {MAX_ACTOR_FAILURES} times; {len(queue)} shards left")
                break  # stop requested
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            if on_progress is not None:
                on_progress()
            for ref in done:
                i, shard = running.pop(ref)
                load[i] -= len(shard)
                try:
                    s = ray.get(ref)
                except RayActorError as e:
                    failures[i] += 1
                    left = self._not_stored(shard)
                    log.warning("pool actor %d died (%s); re-queueing %d of %d tasks", i, type(e).__name__,
                                len(left), len(shard))
                    if left:
                        queue.extendleft(reversed(left))
                        totals["requeued_shards"] += 1
                    continue
                failures[i] = 0
                for k in ("ok", "failed", "skipped", "cost_usd", "estimated_usd", "attempts", "reasks"):
                    totals[k] += s[k]
                for k, v in s["usage"].items():
                    totals["usage"][k] += v
        if on_progress is not None:
            on_progress()
        totals["limiter"] = self.limiter()
        return totals

    def _backlog(self) -> int:
        """Tasks an actor holds: enough to keep every in-flight slot busy while the next shard arrives
        (a shard returns only when its slowest call does)."""
        return max(2 * self.cfg.max_in_flight, self.cfg.shard_size)

    def _shard_len(self, remaining: int) -> int:
        """Guided self-scheduling: full shards while there is much left, then smaller ones so every actor
        finishes at about the same time (each actor only has its share of the rate limit)."""
        k = len(self.actors)
        return max(MIN_SHARD, min(self.cfg.shard_size, remaining // (4 * k)))

    def _not_stored(self, shard: list[Task]) -> list[Task]:
        if self.store is None:
            return shard
        self.store.refresh()
        return [t for t in shard if not self.store.done(t.pair_id, self.config_hash, t.order, t.sample)]

    def _spread(self, method: str, items: list) -> list:
        """Chunks of `items` round the actors, results in input order, within the pool's deadline."""
        k = len(self.actors)
        chunk = max(1, -(-len(items) // k))
        parts = [items[s:s + chunk] for s in range(0, len(items), chunk)]
        return [x for part in self.group.call(method, per_actor=[(p,) for p in parts]) for x in part]

    def compare(self, items: list[tuple[Any, Any, Any]]) -> list[float | None]:
        """Both-order P(a > b) per (prompt, a, b), or None when either order failed. Not stored."""
        tasks = [Task(str(i), p, a, b, "ab") for i, (p, a, b) in enumerate(items)]
        if "ba" in orders(self.cfg.judge):
            tasks += [Task(str(i), p, b, a, "ba") for i, (p, a, b) in enumerate(items)]
        verdicts = self._spread("judge_tasks", tasks)
        per: dict[str, list[float | None]] = {}
        for t, v in zip(tasks, verdicts, strict=True):
            per.setdefault(t.pair_id, []).append(None if v["p_first"] is None or v["error"] else
                                                 p_a_of(t.order, v["p_first"]))
        out = []
        for i in range(len(items)):
            ps = per[str(i)]
            out.append(None if any(p is None for p in ps) else sum(ps) / len(ps))
        return out

    def score(self, items: list[tuple[Any, Any]]) -> list[float | None]:
        """Pointwise judge scores normalised to [0, 1] ((s - 1) / 9), None for a failed call."""
        return [r["normalized"] for r in self.score_details(items)]

    def score_details(self, items: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        return self._spread("score", items)

    def limiter(self) -> dict[str, Any] | None:
        """What the shared rate budget learned (429s heard, limits read from headers, current rate)."""
        import ray

        return None if self.budget is None else ray.get(self.budget.snapshot.remote(), timeout=30)

    def shutdown(self) -> None:
        import ray

        self.group.shutdown()
        if self.budget is not None:
            ray.kill(self.budget)


def _api_kind(cfg: FeedbackPoolConfig) -> bool:
    return cfg.judge.kind in ("anthropic", "anthropic-batch", "openai")


def _budget(cfg: FeedbackPoolConfig):
    """The pool's RateLimiter as an async Ray actor: it holds no CPU and serves every actor's `acquire`."""
    import ray

    from .ratelimit import RateLimiter

    return ray.remote(RateLimiter).options(num_cpus=0, max_concurrency=100_000).remote(cfg.rate_limit)
