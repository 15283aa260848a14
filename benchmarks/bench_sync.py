"""`rlaif-ray bench sync`: learner -> rollout worker weight sync of the ~100M model vs a plain memcpy of
the same bytes, in one run.

The "learner state" is the model's weights plus small noise (new weights of the same shapes), as a
dict of HF-named tensors, which is what a learner's `state_for_sync()` returns. `sync_s` is
`WeightSync.push` end to end (write /dev/shm safetensors, every worker's in-place reload, prefix-cache
reset), best of `--repeats`; `memcpy_s` copies the same tensors into preallocated buffers. The probe
check runs after every push and its time is reported apart (`verify_s`).
"""

from __future__ import annotations

import json
import os
import statistics
import time


def add_arguments(p) -> None:
    p.add_argument("--params", type=int, default=100_000_000, help="model size (quick: 10M)")
    p.add_argument("--repeats", type=int, default=3, help="pushes timed (best is reported)")


def memcpy_seconds(state: dict, repeats: int) -> float:
    import torch

    dst = {k: torch.empty_like(v) for k, v in state.items()}
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for k, v in state.items():
            dst[k].copy_(v)
        best = min(best, time.perf_counter() - t0)
    return best


def run(args) -> int:
    import torch

    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import RayConfig, RolloutConfig, SyncConfig
    from rlaif_ray.models import tiny_model_path
    from rlaif_ray.rollout import RolloutPool
    from rlaif_ray.sync import WeightSync
    from rlaif_ray.sync.weight_sync import load_safetensors_dir

    params = 10_000_000 if args.quick else args.params
    path = str(tiny_model_path(params, seed=0))
    init_ray(RayConfig(object_store_mb=512))
    cores = len(os.sched_getaffinity(0))
    pool = RolloutPool(path, RolloutConfig(num_workers=1, cpus_per_worker=cores, max_model_len=256), dtype="fp32")
    try:
        base = load_safetensors_dir(path)
        sync = WeightSync(pool, SyncConfig(verify="every", tolerance=1e-3))
        times, verify, reports = [], [], []
        for version in range(1, args.repeats + 1):
            torch.manual_seed(version)
            state = {k: v + 1e-3 * torch.randn_like(v) for k, v in base.items()}
            report = sync.push(state, version)
            times.append(report.seconds)
            verify.append(report.verify_seconds)
            reports.append(report)
        memcpy = memcpy_seconds(state, args.repeats)
    finally:
        pool.shutdown()
    nbytes = reports[-1].bytes
    result = {"model_params": sum(v.numel() for v in base.values()), "bytes": nbytes,
              "sync_s": round(min(times), 4), "sync_s_median": round(statistics.median(times), 4),
              "memcpy_s": round(memcpy, 4), "slowdown_vs_memcpy": round(min(times) / memcpy, 2),
              "verify_s": round(statistics.median(verify), 4),
              "verified": all(r.verified for r in reports),
              "max_abs_diff": max(r.max_abs_diff for r in reports), "workers": 1}
    print(f"{'bytes':>14} {'sync s':>8} {'memcpy s':>9} {'slowdown':>9} {'verify s':>9} verified")
    print(f"{nbytes:>14,} {result['sync_s']:>8.3f} {result['memcpy_s']:>9.4f} {result['slowdown_vs_memcpy']:>9.1f} "
          f"{result['verify_s']:>9.3f} {result['verified']}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0
