"""cluster/slurm/ray_on_slurm.sbatch on a real Slurm: Debian's munge/slurmctld/slurmd brought up by
cluster/slurm/local_slurm.sh with fake nodes n1..n4 (NodeAddr 127.0.0.11..14) on this host.

A 2-node allocation runs a real `rlaif-ray label` whose two pool actors are STRICT_SPREAD over the two
Ray nodes, the second of which (n2) runs in its own mount namespace (fresh /dev/shm and /tmp); at the same time a 1-node job whose driver fails (config error, exit 2) runs through
`ray job submit` and must end FAILED with ExitCode 2, and a 1-node job is cancelled while its driver
runs. Every job must leave no process behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cluster_fixtures import (
    CLUSTER_CONFIGS,
    LOCAL_SLURM,
    SBATCH_SCRIPT,
    VENV,
    free_port_block,
    processes_mentioning,
    read_jsonl,
    short_tmpdir,
    write_judge,
    write_pairs,
)
from isolated_cluster import SHARED_PATHS, SHARED_ROOT

SLURM_DIR = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/rlaif-slurm"))
ISOLATED_NODE = "n2"  # its own mount namespace: fresh /dev/shm and /tmp, the checkout and SLURM_DIR kept
JOB_TIMEOUT_S = 300
N_PAIRS = 12


def _why_not() -> str | None:
    have = all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sbatch"))
    if os.geteuid() != 0:
        return "needs root: slurmd runs as root to start job steps (CI runs as root)"
    if not have and not shutil.which("apt-get"):
        return "munge/slurm not installed and apt-get unavailable"
    return None


@pytest.fixture(scope="module")
def slurm_env():
    """The private Slurm: started here unless already up; stopped only if this module started it."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    pidfile = SLURM_DIR / "slurmctld.pid"
    was_up = pidfile.exists() and Path(f"/proc/{pidfile.read_text().strip()}").exists()
    env = {**os.environ, "LOCAL_SLURM_DIR": str(SLURM_DIR), "LOCAL_SLURM_NODES": "4", "LOCAL_SLURM_CPUS": "2",
           "LOCAL_SLURM_ISOLATED": ISOLATED_NODE, "LOCAL_SLURM_SHARE": " ".join(map(str, SHARED_PATHS))}
    subprocess.run([str(LOCAL_SLURM), "start"], env=env, check=True, timeout=300)
    env["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    yield env
    if not was_up:
        subprocess.run([str(LOCAL_SLURM), "stop"], env=env, check=True, timeout=120)
        assert processes_mentioning(str(SLURM_DIR)) == [], "local_slurm.sh stop left daemons running"


def _sbatch(env: dict, workdir: Path, sbatch_args: list[str], command: list[str], **settings: str) -> tuple[str, Path]:
    """Submit the launcher; returns (job id, its output file)."""
    out = workdir / "slurm-%j.out"
    job_env = {**env, "RLAIF_RAY_VENV": str(VENV), "RAY_OBJECT_STORE_MB": "128", "RAY_JOIN_TIMEOUT_S": "180",
               **settings}
    job_id = subprocess.run(["sbatch", "--parsable", f"--output={out}", f"--chdir={workdir}", *sbatch_args,
                             str(SBATCH_SCRIPT), *command],
                            env=job_env, check=True, capture_output=True, text=True).stdout.strip().split(";")[0]
    return job_id, Path(str(out).replace("%j", job_id))


def _wait(env: dict, job_id: str) -> dict[str, str]:
    """Poll `scontrol show job` until the job leaves PENDING/RUNNING/COMPLETING; its fields as a dict."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        line = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, check=True,
                              capture_output=True, text=True).stdout
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return fields
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], env=env)
            pytest.fail(f"job {job_id} still {fields['JobState']} after {JOB_TIMEOUT_S}s")
        time.sleep(1)


@pytest.fixture(scope="module")
def jobs(slurm_env, tmp_path_factory):
    """Submit both jobs at once (they land on different fake nodes) so they share the wall time."""
    SHARED_ROOT.mkdir(exist_ok=True)
    ok_dir = Path(tempfile.mkdtemp(prefix="slurm-label-", dir=SHARED_ROOT))  # n2 sees only shared paths
    judge = write_judge(ok_dir)
    write_pairs(ok_dir / "pairs.jsonl", N_PAIRS)
    ok_tmp = short_tmpdir("rs")
    ports = free_port_block(12)  # 4 per job: GCS, dashboard, Ray client, dashboard agent
    ok = _sbatch(slurm_env, ok_dir, ["-N", "2", "--cpus-per-task=2"],
                 ["rlaif-ray", "label", "--config", str(CLUSTER_CONFIGS / "label_two_nodes.yaml"),
                  f"input={ok_dir / 'pairs.jsonl'}", f"run_dir={ok_dir / 'run'}", f"pool.judge.function={judge}"],
                 RAY_TMPDIR_BASE=str(ok_tmp), RAY_PORT=str(ports), PYTHONPATH=str(ok_dir), JUDGE_MARGIN="5")

    bad_dir = tmp_path_factory.mktemp("fail")
    bad_tmp = short_tmpdir("rs")
    bad = _sbatch(slurm_env, bad_dir, ["-N", "1", "--cpus-per-task=2"],
                  ["rlaif-ray", "label", f"input={ok_dir / 'pairs.jsonl'}", "pool.num_actors=0"],
                  RAY_TMPDIR_BASE=str(bad_tmp), RAY_PORT=str(ports + 4), RLAIF_LAUNCH="submit",
                  RLAIF_WORKING_DIR=str(bad_dir))

    cancel_dir = tmp_path_factory.mktemp("cancel")
    cancel_tmp = short_tmpdir("rs")
    cancel = _sbatch(slurm_env, cancel_dir, ["-N", "1", "--cpus-per-task=2"], ["sleep", "600"],
                     RAY_TMPDIR_BASE=str(cancel_tmp), RAY_PORT=str(ports + 8))
    yield {"ok": (*ok, ok_dir, ok_tmp), "bad": (*bad, bad_dir, bad_tmp), "cancel": (*cancel, cancel_dir, cancel_tmp)}
    for tmp in (ok_tmp, bad_tmp, cancel_tmp, ok_dir):
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.slurm
def test_two_node_label_job_completes_on_both_nodes(slurm_env, jobs):
    job_id, out, workdir, ray_tmp = jobs["ok"]
    fields = _wait(slurm_env, job_id)
    log = out.read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert fields["NodeList"] == "n[1-2]"
    # Both joined, at their Slurm NodeAddrs, with the CPUs of the allocation (--cpus-per-task=2).
    assert "2/2 Ray nodes alive: 127.0.0.11 (2 CPU, 0 GPU), 127.0.0.12 (2 CPU, 0 GPU)" in log
    # Work ran on both Ray nodes: the two STRICT_SPREAD pool actors report the fake nodes' addresses.
    summary = _summary(workdir / "run")
    assert sorted(n["ip"] for n in summary["nodes"]) == ["127.0.0.11", "127.0.0.12"]
    prefs = read_jsonl(workdir / "run" / "preferences.jsonl")
    assert len(prefs) == N_PAIRS
    for row in prefs:  # the judge prefers the longer answer, in both presentation orders
        assert row["chosen"].startswith("a much longer") and row["p_chosen"] == 1.0, row
    # n2 is a machine of its own: its Ray temp dir lived in its /tmp, which this host never saw.
    assert (ray_tmp / "n1").is_dir() and not (ray_tmp / "n2").exists()
    # Teardown left no process of this job behind.
    assert _gone(str(ray_tmp)) == []


@pytest.mark.slow
@pytest.mark.slurm
def test_failing_driver_fails_the_job_with_its_exit_code(slurm_env, jobs):
    job_id, out, _workdir, ray_tmp = jobs["bad"]
    fields = _wait(slurm_env, job_id)
    log = out.read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "2:0"), log[-4000:]
    assert "pool.num_actors" in log  # the driver's own error reached the job's output
    assert "driver exited with 2" in log
    assert _gone(str(ray_tmp)) == []


@pytest.mark.slow
@pytest.mark.slurm
def test_scancel_ends_every_ray_process_of_the_job(slurm_env, jobs):
    job_id, out, _workdir, ray_tmp = jobs["cancel"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (out.exists() and "running: sleep 600" in out.read_text()):  # Ray is up, the driver runs
        assert time.monotonic() < deadline, out.read_text()[-4000:] if out.exists() else "no output"
        time.sleep(1)
    assert processes_mentioning(str(ray_tmp)), "the job's Ray processes should be running"
    subprocess.run(["scancel", job_id], env=slurm_env, check=True)
    fields = _wait(slurm_env, job_id)
    assert fields["JobState"] == "CANCELLED"
    assert "stopping this job's Ray steps" in out.read_text()
    assert _gone(str(ray_tmp)) == []


def _gone(text: str, wait_s: float = 30) -> list[str]:
    """Processes mentioning `text` once they had `wait_s` to exit (Slurm ends steps asynchronously)."""
    deadline = time.monotonic() + wait_s
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _summary(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("name, nodes", [("ppo_1node_8xa100", 1), ("ppo_4nodes_8xa100", 4)])
def test_a100_configs_use_every_gpu_once_and_keep_engines_whole(name, nodes):
    """The example configs load, and rollout engines + learner ranks fill exactly nodes x 8 GPUs."""
    from rlaif_ray.config import load
    from rlaif_ray.config.jobs import TrainPPOJob

    cfg = load(TrainPPOJob, CLUSTER_CONFIGS / f"{name}.yaml", ["prompts=prompts.jsonl"])
    r, lr = cfg.rollout, cfg.learner
    assert r.gpus_per_worker == r.tensor_parallel_size <= 8  # an engine's TP group fits on one node
    assert r.num_workers * r.tensor_parallel_size + lr.num_ranks * lr.gpus_per_rank == 8 * nodes
    assert (cfg.ray.address, cfg.ray.placement_strategy) == ("auto", "PACK")


def test_label_config_spreads_one_actor_per_node():
    from rlaif_ray.config import load
    from rlaif_ray.config.jobs import LabelJob

    cfg = load(LabelJob, CLUSTER_CONFIGS / "label_two_nodes.yaml", ["input=pairs.jsonl"])
    assert (cfg.pool.num_actors, cfg.ray.placement_strategy, cfg.ray.address) == (2, "STRICT_SPREAD", "auto")
