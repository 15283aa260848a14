"""`rlaif-ray bench sync`: learner -> rollout engine weight sync of the ~100M model, against the raw
transport of the same bytes over the same group and an in-process memcpy, in one run.

A one-rank learner group holds the model built with seed 1; the rollout worker (vLLM) starts on the seed-0
model, so the first push really changes the engine's weights and the probe proves it. `seconds` is
`WeightSync.push` end to end (learner rank 0 packs buckets, the transfer group carries them, the engine
reloads them in place), best of `--repeats`; `transport_s` broadcasts one flat buffer of the same bytes
over the same group (no packing, no loading); `memcpy_s` copies the same bytes within one process. The
probe check runs after every push (`verify_s`, apart). `driver_rss_growth_bytes` is the driver's peak
resident memory during the pushes minus its resident memory before the first one: no weights pass
through the driver, so it stays far below the model's bytes.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time


def add_arguments(p) -> None:
    p.add_argument("--params", type=int, default=100_000_000, help="model size (quick: 10M)")
    p.add_argument("--repeats", type=int, default=3, help="pushes timed (best is reported)")


class PeakRSS:
    """Samples this process's resident memory every 10 ms while in the `with` block."""

    def __enter__(self):
        import psutil

        self.proc, self.start, self.peak, self._stop = psutil.Process(), 0, 0, threading.Event()
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    import torch

    src, dst = torch.ones(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return best


def run(args) -> int:
    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import LearnerConfig, ModelConfig, RayConfig, RolloutConfig, SyncConfig
    from rlaif_ray.learner.group import LearnerGroup
    from rlaif_ray.learner.objectives import DPOObjective
    from rlaif_ray.models import tiny_model_path
    from rlaif_ray.rollout import RolloutPool
    from rlaif_ray.sync import WeightSync

    params = 10_000_000 if args.quick else args.params
    engine_path, learner_path = (str(tiny_model_path(params, seed=s)) for s in (0, 1))
    init_ray(RayConfig(object_store_mb=512))
    cores = len(os.sched_getaffinity(0))
    pool = RolloutPool(engine_path, RolloutConfig(num_workers=1, cpus_per_worker=cores, max_model_len=256), dtype="fp32")
    learners = LearnerGroup(LearnerConfig(num_ranks=1, zero_stage=0, cpus_per_rank=cores, shm_comm=False),
                            ModelConfig(path=learner_path), {"dpo": DPOObjective(beta=0.1)}, name="bench-sync")
    try:
        sync = WeightSync(pool, SyncConfig(verify_every=1, tolerance=1e-3), learners)
        reports = []
        with PeakRSS() as rss:
            for version in range(1, args.repeats + 1):
                reports.append(sync.push(version))
        nbytes = reports[-1].bytes
        transport = min(sync.transport_seconds(nbytes) for _ in range(args.repeats))
    finally:
        learners.shutdown()
        pool.shutdown()
    memcpy = memcpy_seconds(nbytes, args.repeats)
    times = [r.seconds for r in reports]
    best = min(times)
    result = {"transfer": reports[-1].transfer, "model_params": params, "bytes": nbytes,
              "seconds": round(best, 4), "seconds_median": round(statistics.median(times), 4),
              "first_push_s": round(times[0], 4), "verified": all(r.verified for r in reports),
              "max_abs_diff": max(r.max_abs_diff for r in reports),
              "verify_s": round(statistics.median(r.verify_seconds for r in reports), 4),
              "driver_rss_growth_bytes": rss.growth, "driver_rss_growth_vs_model": round(rss.growth / nbytes, 4),
              "transport_s": round(transport, 4), "overhead_vs_transport": round(best / transport, 2),
              "memcpy_s": round(memcpy, 4), "slowdown_vs_memcpy": round(best / memcpy, 2), "workers": 1,
              # the names earlier versions wrote
              "sync_s": round(best, 4), "sync_s_median": round(statistics.median(times), 4)}
    print(f"{'transfer':>8} {'bytes':>13} {'sync s':>7} {'raw s':>7} {'x raw':>6} {'memcpy s':>9} {'x memcpy':>8} "
          f"{'verify s':>8} {'driver RSS +MB':>14} verified")
    print(f"{result['transfer']:>8} {nbytes:>13,} {best:>7.3f} {transport:>7.3f} {result['overhead_vs_transport']:>6.2f} "
          f"{memcpy:>9.4f} {result['slowdown_vs_memcpy']:>8.1f} {result['verify_s']:>8.3f} "
          f"{rss.growth / 2**20:>14.1f} {result['verified']}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0
