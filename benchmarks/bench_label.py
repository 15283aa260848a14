"""`rlaif-ray bench label`: the FeedbackPool against the loopback API fake (latency 1.0 s +-20%, 4,000
requests/min by default) and, in the same run, a one-at-a-time loop like the seed scripts'
(sync client, `'A' in text`). One label = one judge call (one order of one pair).

Fields: labels_per_s, sequential_labels_per_s, speedup (= first / second), ceiling_labels_per_s (what the
rate limit allows), ceiling_fraction, lost (calls with no stored answer), repaid (requests the fake
billed more than once). Goal: ceiling_fraction >= 0.95, speedup >= 50, lost = repaid = 0.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH_KEY_ENV = "ANTHROPIC_API_KEY"


def add_arguments(p) -> None:
    p.add_argument("--latency", type=float, default=1.0, help="fake API latency in seconds")
    p.add_argument("--jitter", type=float, default=0.2, help="relative latency jitter")
    p.add_argument("--rpm", type=float, default=4000.0, help="rate limit (requests/min) of the fake and the pool")
    p.add_argument("--pairs", type=int, default=None, help="pairs labeled by the pool (both orders)")
    p.add_argument("--sequential-calls", type=int, default=None, help="calls made by the one-at-a-time loop")
    p.add_argument("--actors", type=int, default=2, help="pool actors")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_stats", timeout=10) as r:
        return json.loads(r.read())


def _start_fake(args, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rlaif_ray.testing.fake_api", "--port", str(port),
                             "--latency", str(args.latency), "--jitter", str(args.jitter), "--rpm", str(args.rpm)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.stdout.readline()  # "fake API on ..."
    for _ in range(100):
        try:
            _stats(f"http://127.0.0.1:{port}")
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("fake API did not start")


def _sequential(url: str, pairs: list, calls: int) -> float:
    """The seed scripts' loop: one request at a time, hard label from `'A' in text`."""
    import anthropic

    from rlaif_ray.feedback.prompts import pair_system, pair_user
    from rlaif_ray.feedback.rubrics import load_rubric

    client = anthropic.Anthropic(base_url=url, max_retries=5)
    system = pair_system(load_rubric("helpful_harmless"), False)
    t0 = time.perf_counter()
    for i in range(calls):
        p = pairs[i // 2]
        first, second = (p["response_a"], p["response_b"]) if i % 2 == 0 else (p["response_b"], p["response_a"])
        msg = client.messages.create(model="fake-judge", max_tokens=16, system=system,
                                     messages=[{"role": "user", "content": pair_user(p["prompt"], first, second)}])
        _ = "A" in msg.content[0].text
    return calls / (time.perf_counter() - t0)


def run(args) -> int:
    import logging

    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import FeedbackPoolConfig, JudgeConfig, RateLimitConfig, RayConfig
    from rlaif_ray.data import PairRecord
    from rlaif_ray.feedback import LabelStore, config_hash, tasks_for
    from rlaif_ray.feedback.pool import FeedbackPool

    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    n_pairs = args.pairs or (650 if args.quick else 3000)
    n_seq = args.sequential_calls or (6 if args.quick else 20)
    os.environ.setdefault(BENCH_KEY_ENV, "sk-bench-not-a-real-key")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    fake = _start_fake(args, port)
    work = Path(tempfile.mkdtemp(prefix="bench-label-"))
    try:
        rows = [{"prompt": f"Question {i}: explain item {i}.", "response_a": f"Answer {i} (first style).",
                 "response_b": f"Answer {i} (second style)."} for i in range(max(n_pairs, n_seq))]
        # The sequential loop only waits on the network: run it while Ray starts, then label with the pool
        # alone so the two measurements never overlap.
        seq: dict = {}
        seq_thread = threading.Thread(target=lambda: seq.update(rate=_sequential(url, rows, n_seq), stats=_stats(url)))
        seq_thread.start()

        judge = JudgeConfig(kind="anthropic", model="fake-judge", base_url=url)
        cfg = FeedbackPoolConfig(num_actors=args.actors, max_in_flight=128, shard_size=256, judge=judge,
                                 rate_limit=RateLimitConfig(requests_per_min=args.rpm))
        init_ray(RayConfig(address="local"))
        chash = config_hash(judge)
        pool = FeedbackPool(cfg, RayConfig(), str(work), chash)
        tasks = tasks_for([PairRecord(**r) for r in rows[:n_pairs]], judge)
        seq_thread.join()
        seq_rate, seq_stats = seq["rate"], seq["stats"]
        t0 = time.perf_counter()
        summary = pool.label(tasks)
        elapsed = time.perf_counter() - t0
        pool.shutdown()
        store = LabelStore(work)
        store.refresh()
        lost = sum(not store.done(t.pair_id, chash, t.order, t.sample) for t in tasks)
        stats = _stats(url)
    finally:
        fake.terminate()
        fake.wait(10)
    rate = summary["ok"] / elapsed
    ceiling = args.rpm / 60.0
    result = {"labels_per_s": round(rate, 3), "sequential_labels_per_s": round(seq_rate, 3),
              "speedup": round(rate / seq_rate, 2), "ceiling_labels_per_s": round(ceiling, 3),
              "ceiling_fraction": round(rate / ceiling, 4), "lost": lost, "repaid": stats["repaid"],
              "label_unit": "one judge call (one order of one pair)", "calls": len(tasks),
              "pool_seconds": round(elapsed, 2), "sequential_calls": n_seq, "actors": args.actors,
              "latency_s": args.latency, "jitter": args.jitter, "rpm": args.rpm,
              "fake_429_rate_limited": stats["requests"].get("429-rate", 0),
              "fake_max_in_flight": stats["max_in_flight"], "sequential_billed": seq_stats["billable"],
              "quick": bool(args.quick)}
    print(f"{'metric':<28}{'value':>14}")
    for k in ("labels_per_s", "sequential_labels_per_s", "speedup", "ceiling_labels_per_s", "ceiling_fraction",
              "lost", "repaid"):
        print(f"{k:<28}{result[k]:>14}")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    ok = result["ceiling_fraction"] >= 0.95 and result["speedup"] >= 50 and lost == 0 and stats["repaid"] == 0
    print("goal met" if ok else "goal NOT met")
    return 0
