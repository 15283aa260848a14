"""`rlaif-ray label` as a user runs it (a subprocess) against the loopback fake: the driver is killed
mid-run and resumed with nothing lost and nothing paid twice (the fake's billable counter), through the
pool and through the Message Batches API; the API key never reaches an output file or a log."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlaif_ray.feedback.cost import CLAUDE_PRICES
from rlaif_ray.testing.fake_api import FakeAPI, billed_usd

KEY = "sk-ant-api03-NEVER-WRITE-ME-5150"


@pytest.fixture()
def fake():
    server = FakeAPI(api_key=KEY).start()
    yield server
    server.stop()


def _pairs(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"Question {i}?", "response_a": f"Answer {i}.", "response_b": f"Reply {i}!"}) + "\n")
    return path


def _label(tmp_path, fake, *overrides):
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    args = [sys.executable, "-m", "rlaif_ray.cli", "label", f"input={tmp_path / 'pairs.jsonl'}",
            f"run_dir={tmp_path / 'run'}", "pool.judge.model=fake-judge", f"pool.judge.base_url={fake.base_url}",
            f"ray.temp_dir={_ray_dir(tmp_path)}", "pool.retry.base_delay_s=0.05", *overrides]
    log = (tmp_path / f"log{len(list(tmp_path.glob('log*')))}.txt").open("w")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def _ray_dir(tmp_path: Path) -> Path:
    """A short path (AF_UNIX sockets live below it), linked from tmp_path so the key grep covers Ray's logs."""
    link = tmp_path / "ray"
    if not link.exists():
        link.symlink_to(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    return link.resolve()


def _stored(run_dir: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in (run_dir / "labels").glob("*.jsonl")) if (run_dir / "labels").exists() else 0


def _wait(cond, timeout=240):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.1)


def _assert_key_never_written(tmp_path):
    files = list(tmp_path.rglob("*")) + list(_ray_dir(tmp_path).rglob("*"))  # outputs, our logs, Ray's logs
    assert any(f.name.startswith("log") for f in files)  # the driver logs were captured
    for f in files:
        if f.is_file() and not f.is_symlink():
            try:
                assert KEY.encode() not in f.read_bytes(), f"API key leaked into {f}"
            except (PermissionError, OSError):
                continue


@pytest.mark.slow
def test_driver_killed_mid_run_at_scale_resumes_without_loss_or_repay(tmp_path, fake):
    n = 20_000  # 40,000 calls, answered at once
    _pairs(tmp_path / "pairs.jsonl", n)
    # 4 chunks: the stop lands in the first, the later ones are written from the store, the resume crosses all
    opts = ["pool.judge.kind=anthropic", "pool.num_actors=2", "pool.max_in_flight=64", "pool.shard_size=256",
            "pool.rate_limit.requests_per_min=0", "chunk_pairs=5000"]
    proc = _label(tmp_path, fake, *opts)
    _wait(lambda: _stored(tmp_path / "run") >= 4000 or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)  # the driver drains: calls in flight finish and are stored
    assert proc.wait(120) == 130
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert first["interrupted"] and first["labeled"] < n
    assert fake.stats()["billable"] == _stored(tmp_path / "run")  # every paid answer is on disk

    assert _label(tmp_path, fake, *opts).wait(240) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stats = fake.stats()
    assert summary["labeled"] == n and summary["unlabeled"] == 0  # 0 lost
    assert stats["repaid"] == 0 and stats["billable"] == 2 * n  # 0 paid twice
    assert len(summary["nodes"]) == 2 and all(x["node_id"] for x in summary["nodes"])
    assert summary["cost_cumulative"]["cost_usd"] > summary["cost_run"]["cost_usd"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    assert len(rows) == n and {"prompt", "chosen", "rejected", "p_chosen"} <= set(rows[0])
    _assert_key_never_written(tmp_path)


@pytest.mark.slow
def test_driver_sigkilled_leaves_no_process_and_no_delivered_answer_is_bought_again(tmp_path, fake):
    from rlaif_ray.reaper import _stat, descendants

    n = 48
    _pairs(tmp_path / "pairs.jsonl", n)
    fake.latency_s = 3.0  # calls are still in flight when Ray stops the dead driver's actors
    opts = ["pool.judge.kind=anthropic", "pool.num_actors=2", "pool.max_in_flight=4", "pool.shard_size=16",
            "chunk_pairs=20"]
    proc = _label(tmp_path, fake, *opts)
    _wait(lambda: _stored(tmp_path / "run") >= 8 or proc.poll() is not None)
    family = descendants(proc.pid)  # Ray's head processes, agents, workers, our actors
    assert len(family) >= 4 and proc.poll() is None
    proc.kill()
    proc.wait(30)
    # Nothing the driver started outlives it: Ray stops most of it, the reaper the agents Ray leaves.
    _wait(lambda: all(_stat(pid) is None or _stat(pid)[1] != start for pid, start in family.items()), timeout=30)
    time.sleep(3.5)  # answers the server was still generating for the dead actors finish (billed, abandoned)
    stored_at_kill = _stored(tmp_path / "run")
    killed = fake.stats()
    assert killed["billable"] == stored_at_kill + killed["abandoned"]  # every delivered answer is on disk

    fake.latency_s = 0.05
    assert _label(tmp_path, fake, *opts).wait(240) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stats = fake.stats()
    assert summary["labeled"] == n and summary["unlabeled"] == 0
    # Bought twice: only the calls the kill cut off mid-flight (at most one per in-flight slot), never an
    # answer that had been delivered.
    assert stats["repaid_after_delivery"] == 0 and stats["repaid"] == killed["abandoned"] <= 2 * 4
    assert stats["billable"] == 2 * n + killed["abandoned"]
    # The cut-off calls are in the ledger as estimates (each priced as the mean answer): what was billed.
    billed = billed_usd(stats, CLAUDE_PRICES)
    cumulative = summary["cost_cumulative"]
    assert cumulative["cost_usd"] == pytest.approx(billed, rel=0.02)
    assert (cumulative["estimated_usd"] > 0) == (killed["abandoned"] > 0)


def test_dry_run_sends_nothing_and_a_spend_budget_stops_before_it_is_crossed(tmp_path, fake):
    n = 30
    _pairs(tmp_path / "pairs.jsonl", n)
    fake.latency_s = 0.05
    opts = ["pool.judge.kind=anthropic", "pool.num_actors=2", "pool.max_in_flight=4", "pool.shard_size=8",
            "chunk_pairs=7"]  # 5 chunks: the estimate and the budget count across them
    assert _label(tmp_path, fake, *opts, "--dry-run").wait(120) == 0
    estimate = json.loads((tmp_path / "run" / "dry_run.json").read_text())
    assert fake.stats()["requests"] == {} and estimate["calls"] == 2 * n  # nothing was sent
    budget = 0.004  # about a third of what the 60 calls cost
    assert _label(tmp_path, fake, *opts, f"pool.max_cost_usd={budget}").wait(120) == 3
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    spent = first["cost_cumulative"]["cost_usd"]
    assert first["stopped_by_budget"] and 0 < first["labeled"] < n
    assert 0.5 * budget < spent <= budget  # it stopped before the budget, not long before it
    assert fake.stats()["billable"] == _stored(tmp_path / "run")  # nothing in flight was dropped

    assert _label(tmp_path, fake, *opts, "pool.max_cost_usd=1.0").wait(120) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["labeled"] == n and not summary["stopped_by_budget"]
    assert fake.stats()["repaid"] == 0 and fake.stats()["billable"] == 2 * n
    # The fake counts 4 characters a token too and answers one token: the bill is the estimate's floor.
    assert summary["cost_cumulative"]["cost_usd"] == pytest.approx(estimate["cost_usd_min"], abs=1e-6)
    assert estimate["cost_usd_max"] > estimate["cost_usd_min"]


def test_batches_driver_killed_while_polling_resumes_without_resubmitting(tmp_path, fake):
    n = 40
    _pairs(tmp_path / "pairs.jsonl", n)
    fake.batch_latency_s = 3.0
    fake.faults = [{"kind": "batch_errored", "fraction": 0.2, "endpoint": "batch"}]
    opts = ["pool.judge.kind=anthropic-batch", "pool.judge.batch_poll_s=0.2", "pool.judge.batch_max_requests=50"]
    proc = _label(tmp_path, fake, *opts)
    _wait(lambda: (tmp_path / "run" / "batches.json").exists() and
          len(json.loads((tmp_path / "run" / "batches.json").read_text() or "[]")) == 2)
    proc.kill()  # SIGKILL while its two batches are still running
    proc.wait(30)
    assert fake.stats()["billable"] == 0 and len(fake.batches) == 2  # 80 calls in chunks of <= 50

    gold = "gold.function=rlaif_ray.testing.judge_functions:fake_preference"  # the fake's own probabilities
    assert _label(tmp_path, fake, *opts, gold).wait(120) == 0
    stats = fake.stats()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["labeled"] == n and summary["pool"]["batches_resumed"] == 2
    # Claude's argmax letters, averaged over both orders, always land on the gold's side of 0.5
    assert summary["gold"]["n"] == n and summary["gold"]["agreement"] == 1.0 and summary["gold"]["kappa"] == 1.0
    assert stats["batch_duplicates"] == 0 and stats["repaid"] == 0 and stats["billable"] == 2 * n
    assert len(fake.batches) == 3  # one more batch, holding only the errored items
    assert summary["cost_run"]["cost_usd"] > 0
    _assert_key_never_written(tmp_path)
