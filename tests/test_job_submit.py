"""`ray job submit --working-dir . -- rlaif-ray label ...` against a standalone Ray head: the path for
any existing Ray cluster (README "Submitting to any Ray cluster").

The head is `ray start --head --block` on free ports with its own temp dir and auth token, stopped by
its pid (never `ray stop`). The judge module travels in the working dir and reads an env var from the
runtime env, so both halves of the runtime env are exercised."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request

import pytest
from cluster_fixtures import (
    VENV,
    free_port_block,
    processes_mentioning,
    read_jsonl,
    short_tmpdir,
    terminate,
    write_judge,
    write_pairs,
)

pytestmark = pytest.mark.slow
N_PAIRS = 8


@pytest.fixture
def ray_head():
    """A private head: yields (dashboard URL, env for the CLI); SIGTERM to its pid afterwards."""
    port = free_port_block(4)
    temp_dir = short_tmpdir("rj")
    env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(VENV / "bin" / "ray"), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={port + 1}", f"--ray-client-server-port={port + 2}",
         f"--dashboard-agent-listen-port={port + 3}", f"--temp-dir={temp_dir}", "--num-cpus=4",
         "--object-store-memory=134217728", "--include-dashboard=true"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port + 1}"
    try:
        _wait_dashboard(head, url, env["RAY_AUTH_TOKEN"])
        yield url, env
    finally:
        terminate(head)
        leftover = processes_mentioning(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert leftover == [], "Ray processes outlived their head"


def _wait_dashboard(head: subprocess.Popen, url: str, token: str, timeout_s: float = 180) -> None:
    """Poll the job API until it answers; fail at once if the head process died."""
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray head exited with {head.returncode}: {head.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"Ray dashboard {url} not up within {timeout_s:.0f}s")


def test_ray_job_submit_runs_label_with_working_dir_and_env(ray_head, tmp_path):
    url, env = ray_head
    workdir = tmp_path / "project"
    workdir.mkdir()
    judge = write_judge(workdir)  # importable only through the shipped working dir
    write_pairs(tmp_path / "pairs.jsonl", N_PAIRS)
    run_dir = tmp_path / "run"  # absolute: the job runs in Ray's copy of the working dir
    submission_id = f"rlaif-test-{secrets.token_hex(4)}"
    cmd = [str(VENV / "bin" / "ray"), "job", "submit", f"--address={url}", f"--submission-id={submission_id}",
           "--working-dir=.", "--runtime-env-json", json.dumps({"env_vars": {"JUDGE_MARGIN": "5"}}), "--",
           "rlaif-ray", "label", f"input={tmp_path / 'pairs.jsonl'}", f"run_dir={run_dir}",
           "pool.judge.kind=function", f"pool.judge.function={judge}", "pool.num_actors=2", "ray.address=auto"]
    submitted = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]

    # `ray job submit` tails the logs, then prints the status the job server reports.
    assert f"Job '{submission_id}' succeeded" in submitted.stdout, submitted.stdout[-4000:]
    assert f"labeled {N_PAIRS}/{N_PAIRS} pairs" in submitted.stdout

    prefs = read_jsonl(run_dir / "preferences.jsonl")
    assert len(prefs) == N_PAIRS
    assert all(r["chosen"].startswith("a much longer") and r["p_chosen"] == 1.0 for r in prefs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["calls_run"] == 2 * N_PAIRS and len(summary["nodes"]) == 2  # both orders, 2 actors
