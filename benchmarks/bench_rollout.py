"""`rlaif-ray bench rollout`: a vLLM rollout worker vs transformers `generate` on the same model, the same
64 prompts and the same sampling (64 new tokens), side by side in one run, for a tiny and a ~100M model.

Both engines run the same way: one RolloutWorker actor with the machine's cores (the vLLM one with
`cpu_threads_bind=all`, the HF one with torch threads = cores), started one after the other, never
together. Also prints the decode roofline: a decode step reads every weight once, so a batch of B
sequences can make at most B * bandwidth / weight_bytes tokens/s (bandwidth measured here by a copy).
"""

from __future__ import annotations

import json
import os
import time


def add_arguments(p) -> None:
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"], help="weights dtype of both engines")
    p.add_argument("--prompts", type=int, default=64, help="prompts per run")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")


def memory_bandwidth_gbs(mb: int = 512) -> float:
    """Read+write bytes per second of a large tensor copy (best of 3)."""
    import torch

    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def bench_prompts(n: int) -> list[str]:
    from rlaif_ray.models.tiny import generate_corpus

    return [f"{s} Tell me more." for s in generate_corpus(n, seed=7)]


def run_engine(backend: str, path: str, prompts: list[str], new_tokens: int, dtype: str) -> dict:
    from rlaif_ray.config import RolloutConfig, SamplingConfig
    from rlaif_ray.rollout import RolloutPool

    cores = len(os.sched_getaffinity(0))
    cfg = RolloutConfig(backend=backend, num_workers=1, cpus_per_worker=cores, max_model_len=256, kv_cache_gib=2)
    t0 = time.perf_counter()
    pool = RolloutPool(path, cfg, seed=0, dtype=dtype)
    startup = time.perf_counter() - t0
    try:
        sampling = SamplingConfig(n=1, temperature=1.0, max_new_tokens=new_tokens, seed=0)
        pool.generate(prompts[:4], sampling)  # warm-up
        t0 = time.perf_counter()
        out = pool.generate(prompts, sampling)
        seconds = time.perf_counter() - t0
    finally:
        pool.shutdown()
    tokens = sum(len(s.token_ids) for group in out for s in group)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "startup_s": startup}


def run(args) -> int:
    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import RayConfig
    from rlaif_ray.models import tiny_model_path

    sizes = [2_000_000] if args.quick else [2_000_000, 100_000_000]
    init_ray(RayConfig(object_store_mb=512))
    bandwidth = memory_bandwidth_gbs()
    prompts = bench_prompts(args.prompts)
    bytes_per = 2 if args.dtype == "bf16" else 4
    results = []
    for size in sizes:
        path = str(tiny_model_path(size, seed=0))
        params = _count_params(path)
        vllm = run_engine("vllm", path, prompts, args.new_tokens, args.dtype)
        hf = run_engine("hf", path, prompts, args.new_tokens, args.dtype)
        weight_bytes = params * bytes_per
        results.append({
            "model_params": params, "dtype": args.dtype, "prompts": len(prompts), "new_tokens": args.new_tokens,
            "vllm_tokens_per_s": round(vllm["tokens_per_s"], 1), "hf_tokens_per_s": round(hf["tokens_per_s"], 1),
            "speedup": round(vllm["tokens_per_s"] / hf["tokens_per_s"], 2),
            "startup_s": round(vllm["startup_s"], 1), "hf_startup_s": round(hf["startup_s"], 1),
            "vllm_tokens": vllm["tokens"], "hf_tokens": hf["tokens"],
            "weight_bytes": weight_bytes, "memory_bandwidth_gbs": round(bandwidth, 2),
            "roofline_tokens_per_s": round(len(prompts) * bandwidth * 1e9 / weight_bytes, 1),
        })
        if args.json_path:  # after every model: a slow second model must not lose the first's figures
            with open(args.json_path, "w") as f:
                json.dump({**results[-1], "runs": results}, f, indent=2)
    print(f"{'params':>12} {'vLLM tok/s':>11} {'HF tok/s':>9} {'speedup':>8} {'start s':>8} "
          f"{'weights MB':>11} {'roofline tok/s':>15}")
    for r in results:
        print(f"{r['model_params']:>12,} {r['vllm_tokens_per_s']:>11,.0f} {r['hf_tokens_per_s']:>9,.0f} "
              f"{r['speedup']:>8.2f} {r['startup_s']:>8.1f} {r['weight_bytes'] / 1e6:>11.1f} "
              f"{r['roofline_tokens_per_s']:>15,.0f}")
    print(f"decode roofline: each step reads all weights; measured copy bandwidth {bandwidth:.1f} GB/s, "
          f"batch {len(prompts)} -> at most batch x bandwidth / weight bytes tokens/s")
    return 0


def _count_params(path: str) -> int:
    import math

    from safetensors import safe_open

    total = 0
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), "pt") as st:
                total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    return total
