"""`rlaif-ray bench rollout`: vLLM rollout workers on any model, against transformers `generate` on the
same model and settings, side by side in one run.

    rlaif-ray bench rollout --json F                     # the built-in tiny and ~100M models, batch 64
    rlaif-ray bench rollout --model smollm2 --json F     # SmolLM2-135M-Instruct (shipped offline)
    rlaif-ray bench rollout --model PATH|HF-id --workers 1,8 --tp 1 --batch 64,256 --prompt-len 128,1024 \\
        --new-tokens 256 [--ray.address auto] [--no-hf] --json F [--plot F.png]

Every comma list is swept. A pool of N workers (tensor parallel K each) starts once per (N, K) and runs
every (batch, prompt length, new tokens) combination; `batch` is the sequences each worker decodes at
once (N x batch prompts per run, after a warm-up; the fastest of `--repeats` runs, both engines alike). Per combination: aggregate output tokens/s, each
worker's tokens/s (its tokens over the time its call took), time to first token and inter-token latency
p50/p90/p99 over the requests (vLLM's request stats: arrival -> first token; (last - first token) /
(tokens - 1)), engine start-up, memory per worker, and the decode roofline: a decode step reads every
weight once, so a worker makes at most batch x K x bandwidth / weight bytes tokens/s (bandwidth measured
by a copy on the workers' device; KV reads ignored, so a true bound), with the fraction reached. The
baseline is one HF worker with sdpa attention and the faster of a dynamic and a static KV cache (each
timed in full, like vLLM; on GPU the dynamic one), on the same prompts and sampling, one after the other,
never together. vLLM runs as it serves by default and as RLHF trainers embed it: compiled (torch.compile on
CPU, CUDA graphs on GPU) with the engine core in the worker's process (`--no-compile`, `--no-in-process`).

Prompts of a set token length are cut from a synthetic corpus (`--prompt-len`; without it, the natural
short prompts of earlier runs). On a Ray cluster (`--ray.address auto`, e.g. inside `ray job submit`)
the workers are spread over the nodes. Writes a table, JSON (top-level `speedup`, `vllm_tokens_per_s`,
`hf_tokens_per_s`, `model_params` of the last model; `runs`: one row per configuration) and a PNG
(tokens/s against batch, one line per configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import time

BUILT_IN = {"tiny": 2_000_000, "100m": 100_000_000}


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"bench rollout: expected a comma list of integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise SystemExit(f"bench rollout: expected positive integers, got {text!r}")
    return out


def add_arguments(p) -> None:
    p.add_argument("--model", default=None, help="model dir, HF id, 'smollm2' (SmolLM2-135M-Instruct, offline) or "
                   "'tiny'/'100m' (default: the built-in tiny and ~100M models; --quick: tiny only)")
    p.add_argument("--workers", default="1", help="rollout workers, comma list")
    p.add_argument("--tp", default="1", help="tensor-parallel GPUs per worker, comma list (GPU only)")
    p.add_argument("--batch", default=None, help="sequences per worker at once, comma list (default --prompts)")
    p.add_argument("--prompt-len", default=None, help="prompt tokens, comma list (default: short natural prompts)")
    p.add_argument("--new-tokens", default="64", help="tokens generated per prompt, comma list")
    p.add_argument("--prompts", type=int, default=64, help="batch when --batch is not given")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"], help="weights dtype of both engines")
    p.add_argument("--ray.address", dest="ray_address", default="local", help="Ray cluster ('auto' inside "
                   "ray job submit; default: a local one)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration, the fastest kept "
                   "(both engines alike)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=True, help="vLLM engine core "
                   "in the worker's process (rollout.in_process, as OpenRLHF and veRL run it): starts in seconds, "
                   "decodes on every core of the worker; --no-in-process: vLLM's own engine process")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="vLLM compiles the "
                   "model (torch.compile on CPU, CUDA graphs on GPU; rollout.enforce_eager=false), as vLLM serves "
                   "by default: slower start-up, faster decode; --no-compile: eager mode")
    p.add_argument("--plot", default=None, help="PNG path (default: next to --json, else bench-rollout.png)")


# ---------------------------------------------------------------- measurements

def memory_bandwidth_gbs(mb: int = 512) -> float:
    """Read+write bytes per second of a large tensor copy (best of 3), on the GPU where there is one."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(4):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def bench_prompts(n: int, prompt_len: int | None, tokenizer=None) -> list[str]:
    """n distinct prompts: short natural sentences, or `prompt_len` tokens each (cut from a corpus)."""
    from rlaif_ray.models.tiny import generate_corpus

    if prompt_len is None:
        return [f"{s} Tell me more." for s in generate_corpus(n, seed=7)]
    corpus = generate_corpus(max(64, prompt_len // 4), seed=7)
    ids = tokenizer.encode(" ".join(corpus), add_special_tokens=False)
    while len(ids) < prompt_len + n:
        ids = ids + ids
    # each prompt starts at its own offset: no two share a prefix (no prefix-cache hits)
    return [tokenizer.decode(ids[i * 7 % len(ids):][:prompt_len]) for i in range(n)]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 5)


def run_combo(pool, prompts: list[str], new_tokens: int, repeats: int = 1) -> dict:
    """A timed generate on every worker at once (each its own chunk), the fastest of `repeats`; a short
    warm-up first. The same seeds every time, so every repeat makes the same tokens."""
    import ray

    from rlaif_ray.config import SamplingConfig

    # ignore_eos: both engines make batch x new_tokens tokens (a sampled EOS would end rows at random)
    sampling = SamplingConfig(n=1, temperature=1.0, max_new_tokens=new_tokens, seed=0, ignore_eos=True)
    n = len(pool.workers)
    per = len(prompts) // n
    chunks = [prompts[i * per:(i + 1) * per] for i in range(n)]
    pool.group.call("generate", per_actor=[(c[:4], sampling, 0) for c in chunks])  # warm-up
    best = None
    for _ in range(repeats):  # the fastest of `repeats` identical runs: this machine's noise is ±10%
        t0 = time.perf_counter()
        refs = pool.group.submit("generate", per_actor=[(c, sampling, i * per) for i, c in enumerate(chunks)])
        done_at, pending = {}, list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done_at[ready[0]] = time.perf_counter() - t0
        if best is None or time.perf_counter() - t0 < best[0]:
            best = (time.perf_counter() - t0, refs, done_at)
    seconds, refs, done_at = best
    outs = pool.group.wait(refs, "generate")
    samples = [[s for group in out for s in group] for out in outs]
    tokens = [sum(len(s.token_ids) for s in w) for w in samples]
    flat = [s for w in samples for s in w]
    ttft = [s.ttft_s for s in flat if s.ttft_s is not None]
    itl = [s.itl_s for s in flat if s.itl_s is not None]
    return {"tokens": sum(tokens), "seconds": seconds, "tokens_per_s": sum(tokens) / seconds,
            "per_worker_tokens": tokens,
            "per_worker_tokens_per_s": [round(t / done_at[r], 1) for t, r in zip(tokens, refs, strict=True)],
            "prompt_tokens_mean": sum(len(s.prompt_token_ids) for s in flat) / max(1, len(flat)),
            **{f"ttft_s_p{q}": _pct(ttft, q / 100) for q in (50, 90, 99)},
            **{f"itl_s_p{q}": _pct(itl, q / 100) for q in (50, 90, 99)}}


# ---------------------------------------------------------------- the sweep

def sweep(args) -> list[dict]:
    import ray

    from rlaif_ray.config import ModelConfig, RolloutConfig
    from rlaif_ray.models import load_tokenizer, resolve_model_path
    from rlaif_ray.rollout import RolloutPool

    models = [args.model] if args.model else ["tiny"] if args.quick else ["tiny", "100m"]
    workers, tps, new_tokens = _ints(args.workers), _ints(args.tp), _ints(args.new_tokens)
    batches = _ints(args.batch) if args.batch else [args.prompts]
    prompt_lens = _ints(args.prompt_len) if args.prompt_len else [None]
    rows = []
    for name in models:
        # the jobs' own resolver: 'smollm2', a dir or an HF id; 'tiny'/'100m' are the built-in tiny sizes
        path = resolve_model_path(ModelConfig(path="tiny", tiny_params=BUILT_IN[name]) if name in BUILT_IN
                                  else ModelConfig(path=name, dtype=args.dtype))
        params = _count_params(path)
        weight_bytes = params * (4 if args.dtype == "fp32" else 2)
        tok = load_tokenizer(path)
        max_len = max(p or 64 for p in prompt_lens) + max(new_tokens) + 16
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        base = {"max_model_len": max(256, max_len), "max_num_seqs": max(batches), "chat_template": False,
                "kv_cache_gib": 2.0, "request_timing": True, "in_process": args.in_process,
                "enforce_eager": not args.compile}
        for n, k in [(n, k) for n in workers for k in tps]:
            if k > 1 and not gpus:
                print(f"skipping --tp {k}: tensor parallel needs GPUs, this cluster has none")
                continue
            cores = len(os.sched_getaffinity(0))
            cfg = RolloutConfig(num_workers=n, tensor_parallel_size=k, gpus_per_worker=1.0 if gpus else 0.0,
                                cpus_per_worker=1.0 if gpus else max(1, cores // n), **base)
            bw = _bandwidth(ray, cfg)
            pool = RolloutPool(path, cfg, seed=0, dtype=args.dtype, strategy="SPREAD")
            try:
                startup = [round(i["startup_s"], 1) for i in pool.infos]
                for b, plen, t in [(b, p, t) for b in batches for p in prompt_lens for t in new_tokens]:
                    prompts = bench_prompts(n * b, plen, tok)
                    m = run_combo(pool, prompts, t, args.repeats)
                    roof = n * b * k * bw * 1e9 / weight_bytes
                    rows.append({"model": name, "model_params": params, "dtype": args.dtype, "workers": n, "tp": k,
                                 "batch": b, "prompt_len": plen, "prompts": len(prompts), "new_tokens": t,
                                 "nodes": sorted(set(pool.group.nodes)),
                                 "vllm_tokens_per_s": round(m["tokens_per_s"], 1), "vllm_tokens": m["tokens"],
                                 "vllm_seconds": round(m["seconds"], 3),
                                 **{key: m[key] for key in m if key not in ("tokens", "seconds", "tokens_per_s")},
                                 "startup_s": max(startup), "startup_s_per_worker": startup,
                                 "kv_block_size": pool.infos[0]["kv_block_size"],
                                 "compiled": args.compile, "in_process": args.in_process,
                                 "memory_mb_per_worker": [{k2: round(v, 1) for k2, v in x.items()}
                                                          for x in pool.group.call("memory_mb")],
                                 "weight_bytes": weight_bytes, "memory_bandwidth_gbs": round(bw, 2),
                                 "roofline_tokens_per_s": round(roof, 1),
                                 "roofline_fraction": round(m["tokens_per_s"] / roof, 4)})
                    print(_line(rows[-1]))
                    _write(args, rows)
            finally:
                pool.shutdown()
        if not args.no_hf:
            _baseline(args, rows, name, path, tok, batches, prompt_lens, new_tokens, base)
    return rows


def _bandwidth(ray, cfg) -> float:
    """Copy bandwidth measured where the workers run (their device), before the engines start."""
    task = ray.remote(memory_bandwidth_gbs).options(num_cpus=cfg.cpus_per_worker,
                                                    num_gpus=1 if cfg.gpus_per_worker else 0)
    return ray.get(task.remote())


def _baseline(args, rows, name, path, tok, batches, prompt_lens, new_tokens, base) -> None:
    """transformers generate, one worker with every core of its node, on each (batch, prompt, tokens). On
    CPU it runs once with a dynamic and once with a static KV cache, each timed like vLLM, and the faster
    is the baseline (its own best, so the comparison stays fair); on GPU the dynamic cache (a static one
    pays off there only compiled)."""
    import ray

    from rlaif_ray.config import RolloutConfig
    from rlaif_ray.rollout import RolloutPool

    gpus = ray.cluster_resources().get("GPU", 0) > 0
    cores = len(os.sched_getaffinity(0))
    combos = [(b, p, t) for b in batches for p in prompt_lens for t in new_tokens]
    by_cache: dict[tuple, dict[str, dict]] = {c: {} for c in combos}
    for cache in ["dynamic"] if gpus else ["dynamic", "static"]:
        cfg = RolloutConfig(backend="hf", num_workers=1, gpus_per_worker=1.0 if gpus else 0.0,
                            cpus_per_worker=1.0 if gpus else cores, hf_cache=cache,
                            **{k: v for k, v in base.items() if k not in ("request_timing", "in_process",
                                                                         "enforce_eager")})
        t0 = time.perf_counter()
        pool = RolloutPool(path, cfg, seed=0, dtype=args.dtype)
        startup = time.perf_counter() - t0
        try:
            for b, plen, t in combos:
                m = run_combo(pool, bench_prompts(b, plen, tok), t, args.repeats)
                print(f"  HF baseline batch {b} prompt {plen} new {t}: {m['tokens_per_s']:.0f} tok/s ({cache} cache)")
                ms = by_cache[(b, plen, t)]
                ms[cache] = {**m, "startup_s": startup}
                best = max(ms, key=lambda c: ms[c]["tokens_per_s"])  # the faster cache so far
                m = ms[best]
                for r in rows:
                    if r["model"] == name and (r["batch"], r["prompt_len"], r["new_tokens"]) == (b, plen, t):
                        r.update(hf_tokens_per_s=round(m["tokens_per_s"], 1), hf_tokens=m["tokens"],
                                 hf_seconds=round(m["seconds"], 3), hf_startup_s=round(m["startup_s"], 1),
                                 hf_cache=best,
                                 hf_tokens_per_s_by_cache={c: round(x["tokens_per_s"], 1) for c, x in ms.items()},
                                 speedup=round(r["vllm_tokens_per_s"] / m["tokens_per_s"], 3),
                                 speedup_per_worker=round(r["vllm_tokens_per_s"] / r["workers"] / m["tokens_per_s"],
                                                          3))
                _write(args, rows)  # after every configuration, as the vLLM rows
        finally:
            pool.shutdown()


def _line(r: dict) -> str:
    return (f"{os.path.basename(str(r['model'])):>10} w{r['workers']} tp{r['tp']} batch {r['batch']:>4} "
            f"prompt {str(r['prompt_len']):>5} new {r['new_tokens']:>4}: {r['vllm_tokens_per_s']:>9,.0f} tok/s  "
            f"ttft p50 {r['ttft_s_p50']}s  itl p50 {r['itl_s_p50']}s  roofline {100 * r['roofline_fraction']:.1f}%")


def _write(args, rows: list[dict]) -> None:
    """After every configuration: a slow later one must not lose the earlier figures."""
    if getattr(args, "json_path", None):
        head = {k: rows[-1][k] for k in ("model_params", "vllm_tokens_per_s", "hf_tokens_per_s", "speedup",
                                         "startup_s", "hf_startup_s", "roofline_tokens_per_s")
                if k in rows[-1]}
        with open(args.json_path, "w") as f:
            json.dump({**head, "runs": rows}, f, indent=1)


def plot(rows: list[dict], path: str) -> None:
    """Tokens/s against batch: one line per (model, workers, tp, prompt, new tokens), HF dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple, list] = {}
    for r in rows:
        lines.setdefault((r["model"], r["workers"], r["tp"], r["prompt_len"], r["new_tokens"]), []).append(r)
    for (model, n, k, plen, t), rs in lines.items():
        rs.sort(key=lambda r: r["batch"])
        label = f"{os.path.basename(str(model))} {n}w tp{k} p{plen or 'short'} n{t}"
        ax.plot([r["batch"] for r in rs], [r["vllm_tokens_per_s"] for r in rs], marker="o", label=f"vLLM {label}")
        if all("hf_tokens_per_s" in r for r in rs):
            ax.plot([r["batch"] for r in rs], [r["hf_tokens_per_s"] for r in rs], marker="x", linestyle="--",
                    label=f"HF {os.path.basename(str(model))} p{plen or 'short'} n{t}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (sequences per worker)")
    ax.set_ylabel("output tokens/s (all workers)")
    ax.set_title("rollout throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import RayConfig

    init_ray(RayConfig(address=args.ray_address, object_store_mb=512))
    rows = sweep(args)
    if not rows:
        print("bench rollout: no configuration ran")
        return 1
    _write(args, rows)
    png = args.plot or (os.path.splitext(args.json_path)[0] + ".png" if args.json_path else "bench-rollout.png")
    plot(rows, png)
    print(f"\n{'model':>10} {'workers':>7} {'tp':>3} {'batch':>5} {'prompt':>6} {'new':>4} {'vLLM tok/s':>11} "
          f"{'HF tok/s':>9} {'speedup':>8} {'ttft p50':>9} {'itl p50':>8} {'roofline':>9} {'start s':>7}")
    for r in rows:
        hf = r.get("hf_tokens_per_s")
        print(f"{os.path.basename(str(r['model'])):>10} {r['workers']:>7} {r['tp']:>3} {r['batch']:>5} "
              f"{str(r['prompt_len'] or '-'):>6} {r['new_tokens']:>4} {r['vllm_tokens_per_s']:>11,.0f} "
              f"{'-' if hf is None else f'{hf:,.0f}':>9} "
              f"{r.get('speedup', '-'):>8} {r['ttft_s_p50'] or '-':>9} {r['itl_s_p50'] or '-':>8} "
              f"{100 * r['roofline_fraction']:>8.1f}% {r['startup_s']:>7}")
    print(f"decode roofline: batch x tp x bandwidth / weight bytes per worker (bandwidth "
          f"{rows[-1]['memory_bandwidth_gbs']} GB/s by a copy); plot: {png}")
    return 0


def _count_params(path: str) -> int:
    import math

    from safetensors import safe_open

    if not os.path.isdir(path):  # an HF id: the hub cache holds the files
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, allow_patterns=["*.safetensors", "*.json"])
    total = 0
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), "pt") as st:
                total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    return total
