"""`rlaif-ray bench label`: the FeedbackPool against the loopback API fake (latency 1.0 s +-20%, 4,000
requests/min by default) and, in the same run, a one-at-a-time loop like the seed scripts'
(sync client, `'A' in text`). One label = one judge call (one order of one pair).

Fields: labels_per_s, sequential_labels_per_s, speedup (= first / second), ceiling_labels_per_s (what the
rate limit allows; null with `--rpm 0`, no limit), ceiling_fraction, lost (calls with no stored answer), repaid (requests the fake
billed more than once). Goal: ceiling_fraction >= 0.95, speedup >= 50, lost = repaid = 0.

`--scale` runs `rlaif-ray label` itself on `--pairs` pairs (20,000 by default, 2,000 with --quick) against the
fake answering at once with no rate limit, through the Messages and the Batches path; per path:
calls_per_s (judge calls over the time in the pool: our pipeline's ceiling), driver_peak_rss_bytes,
resume_s (the same command again on the finished store), consolidate_s, store_bytes, lost, repaid.

`--faults hostile` (200 pairs by default) runs the pool with its default limits against a fake that
enforces `--rpm` (600 by default) over one-second intervals and misbehaves like a production API (`HOSTILE`:
long retry-after 429s, 529s, 30 s stalls, truncated 200 bodies, dropped connections, answers without a
verdict), and, in the same run, the same pairs against the same fake without faults. Fields per pass:
wall_s, calls_per_s, labeled, lost, rate_429 (the fake's pacing refusals: the limiter's misses),
injected_429, reasks, billed_usd (the fake's billed tokens at list price) vs stored_usd (the ledger's
cost_cumulative), repaid_after_delivery; then wall_ratio. Goals: every pair labeled, 0 lost, 0 repaid after
delivery, rate 429s <= 5% of billed requests after the first minute, |stored - billed| <= 2%, wall_ratio <= 2.
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
# Disjoint slices of request bodies (by hash), each hit on its first attempt unless `times` says more.
HOSTILE = [
    {"kind": "429", "retry_after": 3600, "range": (0.00, 0.05)},  # "come back in an hour" (capped per request)
    {"kind": "529", "times": 3, "range": (0.05, 0.10)},           # overloaded three times running
    {"kind": "stall", "delay": 30.0, "range": (0.10, 0.12)},       # answers after 30 s
    {"kind": "malformed", "range": (0.12, 0.14)},                  # a billed 200 whose body is cut
    {"kind": "reset", "range": (0.14, 0.16)},                      # connection dropped, not billed
    {"kind": "no_verdict", "range": (0.16, 0.19)},                 # "Both are fine."
    {"kind": "empty", "range": (0.19, 0.21)},                      # an empty content list
    {"kind": "verbose", "times": 99, "range": (0.21, 0.24)},       # a sentence of prose before the verdict
]


def add_arguments(p) -> None:
    p.add_argument("--latency", type=float, default=1.0, help="fake API latency in seconds")
    p.add_argument("--jitter", type=float, default=0.2, help="relative latency jitter")
    p.add_argument("--rpm", type=float, default=None,
                   help="rate limit (requests/min) of the fake and the pool (default 4000; hostile: the fake's "
                        "600, the pool keeps its default and must learn it)")
    p.add_argument("--faults", choices=("none", "hostile"), default="none",
                   help="hostile: the misbehaving-API run beside a fault-free one (see the module doc)")
    p.add_argument("--pairs", type=int, default=None, help="pairs labeled by the pool (both orders)")
    p.add_argument("--sequential-calls", type=int, default=None, help="calls made by the one-at-a-time loop")
    p.add_argument("--actors", type=int, default=2, help="pool actors")
    p.add_argument("--scale", action="store_true",
                   help="`rlaif-ray label` itself (a subprocess) on --pairs pairs against the fake answering at once "
                        "with no rate limit, through the Messages API and through the Batches API: calls/s, the "
                        "driver's peak RSS, resume and consolidation seconds, store bytes, lost, re-paid")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_stats", timeout=10) as r:
        return json.loads(r.read())


def _control(url: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}/_control", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _start_fake(args, port: int, log: Path) -> subprocess.Popen:
    # The fake logs a traceback per dropped connection: to a file, so no pipe can fill and block it.
    proc = subprocess.Popen([sys.executable, "-m", "rlaif_ray.testing.fake_api", "--port", str(port),
                             "--latency", str(args.latency), "--jitter", str(args.jitter), "--rpm", str(args.rpm)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
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


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}: explain item {i}.", "response_a": f"Answer {i} (first style).",
             "response_b": f"Answer {i} (second style)."} for i in range(n)]


def _label_pass(cfg, rows: list[dict], work: Path) -> dict:
    """One pool over `rows` (both orders) into a fresh store under `work`: seconds, summary, lost tasks and
    the store's cost ledger."""
    from rlaif_ray.config import RayConfig
    from rlaif_ray.data import PairRecord
    from rlaif_ray.feedback import LabelStore, config_hash, tasks_for
    from rlaif_ray.feedback.labels import cost_of
    from rlaif_ray.feedback.pool import FeedbackPool

    chash = config_hash(cfg.judge)
    pool = FeedbackPool(cfg, RayConfig(), str(work), chash)
    tasks = tasks_for([PairRecord(**r) for r in rows], cfg.judge)
    try:
        t0 = time.perf_counter()
        summary = pool.label(tasks)
        elapsed = time.perf_counter() - t0
    finally:
        pool.shutdown()
    store = LabelStore(work)
    store.refresh()
    lost = [t for t in tasks if not store.done(t.pair_id, chash, t.order, t.sample)]
    labeled = len({t.pair_id for t in tasks} - {t.pair_id for t in lost})
    return {"seconds": elapsed, "summary": summary, "tasks": len(tasks), "lost": len(lost), "labeled": labeled,
            "ledger": cost_of(store.ledger(chash))}


def _serve_fake(args, prefix: str) -> tuple[str, Path, subprocess.Popen]:
    """The fake API on a free port (its log in a fresh work dir), a placeholder key, quiet HTTP logs."""
    import logging

    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault(BENCH_KEY_ENV, "sk-bench-not-a-real-key")
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    return f"http://127.0.0.1:{port}", work, _start_fake(args, port, work / "fake.log")


def _stop(fake: subprocess.Popen) -> None:
    """End the fake; one holding a million batch requests can take more than a minute to exit."""
    fake.terminate()
    try:
        fake.wait(30)
    except subprocess.TimeoutExpired:
        fake.kill()
        fake.wait()


def run(args) -> int:
    if args.faults == "hostile":
        return _run_hostile(args)
    if args.scale:
        return _run_scale(args)
    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import FeedbackPoolConfig, JudgeConfig, RateLimitConfig, RayConfig

    args.rpm = 4000.0 if args.rpm is None else args.rpm  # 0: no rate limit (then there is no ceiling)
    n_pairs = args.pairs or (650 if args.quick else 3000)
    n_seq = args.sequential_calls or (6 if args.quick else 20)
    url, work, fake = _serve_fake(args, "bench-label-")
    try:
        rows = _rows(max(n_pairs, n_seq))
        # The sequential loop only waits on the network: run it while Ray starts, then label with the pool
        # alone so the two measurements never overlap.
        seq: dict = {}
        seq_thread = threading.Thread(target=lambda: seq.update(rate=_sequential(url, rows, n_seq), stats=_stats(url)))
        seq_thread.start()
        judge = JudgeConfig(kind="anthropic", model="fake-judge", base_url=url)
        cfg = FeedbackPoolConfig(num_actors=args.actors, max_in_flight=128, shard_size=256, judge=judge,
                                 rate_limit=RateLimitConfig(requests_per_min=args.rpm))
        init_ray(RayConfig(address="local"))
        seq_thread.join()
        seq_rate, seq_stats = seq["rate"], seq["stats"]
        out = _label_pass(cfg, rows[:n_pairs], work / "pool")
        stats = _stats(url)
    finally:
        _stop(fake)
    rate = out["summary"]["ok"] / out["seconds"]
    ceiling = args.rpm / 60.0 or None
    lost = out["lost"]
    result = {"labels_per_s": round(rate, 3), "sequential_labels_per_s": round(seq_rate, 3),
              "speedup": round(rate / seq_rate, 2), "ceiling_labels_per_s": ceiling and round(ceiling, 3),
              "ceiling_fraction": ceiling and round(rate / ceiling, 4), "lost": lost, "repaid": stats["repaid"],
              "label_unit": "one judge call (one order of one pair)", "calls": out["tasks"],
              "pool_seconds": round(out["seconds"], 2), "sequential_calls": n_seq, "actors": args.actors,
              "latency_s": args.latency, "jitter": args.jitter, "rpm": args.rpm,
              "fake_429_rate_limited": stats["requests"].get("429-rate", 0),
              "fake_max_in_flight": stats["max_in_flight"], "sequential_billed": seq_stats["billable"],
              "quick": bool(args.quick)}
    print(f"{'metric':<28}{'value':>14}")
    for k in ("labels_per_s", "sequential_labels_per_s", "speedup", "ceiling_labels_per_s", "ceiling_fraction",
              "lost", "repaid"):
        print(f"{k:<28}{result[k]!s:>14}")
    _write(args, result)
    ok = (ceiling is None or result["ceiling_fraction"] >= 0.95) and result["speedup"] >= 50 and lost == 0 and stats["repaid"] == 0
    print("goal met" if ok else "goal NOT met")
    return 0


def _write(args, result: dict) -> None:
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2))


def _run_hostile(args) -> int:
    """The same pairs against the same fake, without faults and then with HOSTILE, each pass on a fresh store
    and fresh fake counters; the pool runs its default rate limit, retry and re-ask settings."""
    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import FeedbackPoolConfig, JudgeConfig, RayConfig
    from rlaif_ray.feedback.cost import CLAUDE_PRICES
    from rlaif_ray.testing.fake_api import billed_usd

    args.rpm = 600.0 if args.rpm is None else args.rpm
    n_pairs = args.pairs or (60 if args.quick else 200)
    url, work, fake = _serve_fake(args, "bench-label-hostile-")
    judge = JudgeConfig(kind="anthropic", model="fake-judge", base_url=url, price_per_mtok=CLAUDE_PRICES)
    cfg = FeedbackPoolConfig(num_actors=args.actors, judge=judge)  # default limits: the fake's are lower
    rows = _rows(n_pairs)
    passes = {}
    try:
        init_ray(RayConfig(address="local"))
        for name, faults in (("baseline", []), ("hostile", HOSTILE)):
            _control(url, {"reset": True, "faults": faults})
            out = _label_pass(cfg, rows, work / name)
            time.sleep(1.0 if name == "baseline" else 32.0)  # let abandoned stalls finish: they are billed too
            stats = _stats(url)
            billed = billed_usd(stats, CLAUDE_PRICES)
            ledger, limiter = out["ledger"], out["summary"]["limiter"] or {}
            late_billed = stats["billed_after_60s"]
            passes[name] = {
                "wall_s": round(out["seconds"], 2), "calls": out["tasks"],
                "calls_per_s": round(out["tasks"] / out["seconds"], 3), "labeled": out["labeled"], "pairs": n_pairs,
                "lost": out["lost"], "billed_requests": stats["billable"],
                "rate_429": stats["requests"].get("429-rate", 0),
                "rate_429_fraction": round(stats["requests"].get("429-rate", 0) / max(1, stats["billable"]), 4),
                "rate_429_after_60s": stats["rate_429_after_60s"], "billed_after_60s": late_billed,
                "rate_429_fraction_after_60s": round(stats["rate_429_after_60s"] / late_billed, 4) if late_billed else 0.0,
                "injected_429": stats["requests"].get("fault-429", 0), "reasks": ledger["reasks"],
                "attempts": ledger["attempts"], "billed_usd": round(billed, 6),
                "stored_usd": round(ledger["cost_usd"], 6), "estimated_usd": round(ledger["estimated_usd"], 6),
                "cost_error": round(ledger["cost_usd"] / billed - 1, 4) if billed else 0.0,
                "repaid": stats["repaid"], "repaid_after_delivery": stats["repaid_after_delivery"],
                "abandoned": stats["abandoned"],
                "faults_hit": {k.removeprefix("fault-"): v for k, v in stats["requests"].items() if k.startswith("fault-")},
                "limiter": limiter}
    finally:
        _stop(fake)
    b, h = passes["baseline"], passes["hostile"]
    result = {"baseline": b, "hostile": h, "wall_ratio": round(h["wall_s"] / b["wall_s"], 3), "fake_rpm": args.rpm,
              "latency_s": args.latency, "jitter": args.jitter, "actors": args.actors, "faults": HOSTILE,
              "quick": bool(args.quick)}
    keys = ("wall_s", "calls_per_s", "labeled", "lost", "billed_requests", "rate_429", "rate_429_fraction_after_60s",
            "injected_429", "reasks", "billed_usd", "stored_usd", "cost_error", "repaid_after_delivery")
    print(f"{'metric':<30}{'baseline':>14}{'hostile':>14}")
    for k in keys:
        print(f"{k:<30}{b[k]!s:>14}{h[k]!s:>14}")
    print(f"{'wall_ratio':<30}{'':>14}{result['wall_ratio']!s:>14}")
    goals = {"all labeled": h["labeled"] == n_pairs, "0 lost": h["lost"] == 0,
             "0 repaid after delivery": h["repaid_after_delivery"] == 0,
             "rate 429s <= 5% after 60 s": h["rate_429_fraction_after_60s"] <= 0.05,
             "cost within 2%": abs(h["cost_error"]) <= 0.02, "wall <= 2x baseline": result["wall_ratio"] <= 2.0}
    for goal, met in goals.items():
        print(f"{goal:<30}{'met' if met else 'NOT met':>14}")
    result["goals"] = goals
    _write(args, result)
    return 0


def _driver(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS bytes) of one `rlaif-ray` driver process: its own VmHWM, polled
    until it exits (Ray's processes are not the driver's memory)."""
    t0, peak = time.perf_counter(), 0
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            time.sleep(0.2)
    return proc.returncode, time.perf_counter() - t0, peak


def _run_scale(args) -> int:
    """`rlaif-ray label` as users run it, on --pairs pairs (both orders), once per API path, each on a fresh
    store and fresh fake counters; then the same command again on the finished store (the resume)."""
    n = args.pairs or (2_000 if args.quick else 20_000)
    args.latency, args.jitter, args.rpm = 0.0, 0.0, 0.0  # answers at once, no limit: our own ceiling
    url, work, fake = _serve_fake(args, "bench-label-scale-")
    pairs = work / "pairs.jsonl"
    with pairs.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"Question {i}: explain item {i}.", "response_a": f"Answer {i} (first style).",
                                 "response_b": f"Answer {i} (second style)."}) + "\n")
    paths = []
    try:
        _control(url, {"batch_latency_s": 1.0})
        for path, kind in (("messages", "anthropic"), ("batches", "anthropic-batch")):
            _control(url, {"reset": True})
            run_dir = work / path
            cmd = [sys.executable, "-m", "rlaif_ray.cli", "label", f"input={pairs}", f"run_dir={run_dir}",
                   f"pool.judge.kind={kind}", "pool.judge.model=fake-judge", f"pool.judge.base_url={url}",
                   f"pool.num_actors={args.actors}", "pool.max_in_flight=128", "pool.shard_size=256",
                   "pool.rate_limit.requests_per_min=0", "pool.judge.batch_poll_s=0.5"]
            rc, wall, rss = _driver(cmd, work / f"{path}.log")
            summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
            rc2, resume_s, resume_rss = _driver(cmd, work / f"{path}-resume.log")
            stats = _stats(url)
            again = json.loads((run_dir / "summary.json").read_text())
            paths.append({
                "path": path, "pairs": n, "calls": summary.get("calls_total"), "exit_code": rc,
                "calls_per_s": summary.get("calls_per_s"), "wall_s": round(wall, 2), "judge_s": summary.get("judge_s"),
                "driver_peak_rss_bytes": rss, "resume_s": round(resume_s, 2), "resume_exit_code": rc2,
                "resume_peak_rss_bytes": resume_rss, "consolidate_s": summary.get("consolidate_s"),
                "store_bytes": sum(f.stat().st_size for f in (run_dir / "labels").iterdir()),
                "lost": again.get("unlabeled"), "repaid": stats["repaid"], "billable": stats["billable"]})
            _write(args, {"paths": paths, "pairs": n, "actors": args.actors, "quick": bool(args.quick)})
    finally:
        _stop(fake)
    result = {"paths": paths, "pairs": n, "actors": args.actors, "quick": bool(args.quick)}
    keys = ("calls", "calls_per_s", "wall_s", "driver_peak_rss_bytes", "resume_s", "consolidate_s", "store_bytes",
            "lost", "repaid")
    print(f"{'metric':<26}" + "".join(f"{p['path']:>16}" for p in paths))
    for k in keys:
        print(f"{k:<26}" + "".join(f"{p[k]!s:>16}" for p in paths))
    _write(args, result)
    ok = all(p["lost"] == 0 and p["repaid"] == 0 and p["exit_code"] == 0 for p in paths)
    print("0 lost, 0 re-paid: " + ("met" if ok else "NOT met"))
    return 0
