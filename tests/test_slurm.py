"""cluster/slurm/ray_on_slurm.sbatch on a real Slurm: Debian's munge/slurmctld/slurmd brought up by
cluster/slurm/local_slurm.sh with fake nodes n1..n4 (NodeAddr 127.0.0.11..14) on this host.

Every node advertises 8 count-only GPUs (Gres=gpu:8). A 2-node allocation runs a real `rlaif-ray label`
whose two pool actors are STRICT_SPREAD over the two Ray nodes, the second of which (n2) runs in its own
mount namespace (fresh /dev/shm and /tmp). At the same time: a 1-node job whose driver fails (config
error, exit 2) runs through `ray job submit` and must end FAILED with ExitCode 2; two 1-CPU jobs share
n3 on their default port blocks, one asking for 8 GPUs (Ray must count 8 and a task must get them) and
1000 MB (the object store is sized from it) from a venv whose path is over 127 bytes (pip's #!/bin/sh
entry points), the other cancelled while its driver
runs; then a `train-dpo` job with a 3-minute limit gets `--signal=B:USR1@100`, checkpoints and ends
COMPLETED. Every job must leave no process behind."""

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
           "LOCAL_SLURM_GPUS": "8",
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
               "RAY_ALLOW_LOOPBACK": "1", **settings}  # the fake nodes' NodeAddrs are 127.0.0.1X
    job_id = subprocess.run(["sbatch", "--parsable", f"--output={out}", f"--chdir={workdir}", *sbatch_args,
                             str(SBATCH_SCRIPT), *command],
                            env=job_env, check=True, capture_output=True, text=True).stdout.strip().split(";")[0]
    return job_id, Path(str(out).replace("%j", job_id))


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def _wait(env: dict, job_id: str) -> dict[str, str]:
    """Poll `scontrol show job` until the job reaches a final state; its fields as a dict. (Passing states
    are many and version-dependent: SIGNALING shows while `--signal` is delivered, STAGE_OUT, SUSPENDED...)"""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        line = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, check=True,
                              capture_output=True, text=True).stdout
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields["JobState"] in FINAL_STATES:
            return fields
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], env=env)
            pytest.fail(f"job {job_id} still {fields['JobState']} after {JOB_TIMEOUT_S}s")
        time.sleep(1)


# The 8-GPU job's driver: Ray must count the GPUs, hand them to a task, and keep Slurm's variables out.
GPU_CHECK = """
import os, ray
ray.init(address="auto")
@ray.remote(num_gpus=8)
def probe():
    return ray.get_gpu_ids(), sorted(k for k in os.environ if k.startswith(("SLURM_", "PMIX_")))
ids, leaked = ray.get(probe.remote())
res = ray.cluster_resources()
print(f"cluster GPUs {res.get('GPU')}; task GPU ids {sorted(map(int, ids))}; leaked {leaked}")
print(f"object store MiB {res['object_store_memory'] / 2**20:.0f}")
"""

# pip's entry point when the interpreter path is too long for a shebang line.
SH_ENTRY_POINT = """#!/bin/sh
'''exec' "{python}" "$0" "$@"
' '''
import sys
from {module} import main
sys.exit(main())
"""


def long_path_venv(root: Path) -> Path:
    """This venv again under a path of over 127 bytes, with pip-style `#!/bin/sh` entry points."""
    venv = root / ("v" * 60) / ("e" * 60) / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text((VENV / "pyvenv.cfg").read_text())
    (venv / "lib").symlink_to(VENV / "lib")
    (venv / "bin" / "python").symlink_to(os.path.realpath(VENV / "bin" / "python"))
    for name, module in (("ray", "ray.scripts.scripts"), ("rlaif-ray", "rlaif_ray.cli")):
        entry = venv / "bin" / name
        entry.write_text(SH_ENTRY_POINT.format(python=venv / "bin" / "python", module=module))
        entry.chmod(0o755)
    assert len(f"#!{venv}/bin/python") > 127
    return venv


def dpo_config(workdir: Path, model_dir: Path) -> Path:
    """A train-dpo run long enough to still be training when the time-limit signal comes."""
    import yaml

    from benchmarks.bench_learner import synthetic_preferences
    from rlaif_ray.data import write_rows

    write_rows(workdir / "prefs.jsonl", [r.to_row() for r in synthetic_preferences(24, seed=7)])
    cfg = {"run_dir": str(workdir / "run"), "model": {"path": str(model_dir)}, "val_fraction": 0.0,
           "stages": [{"name": "ai", "data": str(workdir / "prefs.jsonl"), "epochs": 1000}],
           "learner": {"num_ranks": 1, "zero_stage": 0, "micro_batch_size": 2, "shm_comm": False,
                       "max_length": 64, "cpus_per_rank": 1},
           "ray": {"address": "auto"}}
    path = workdir / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def jobs(slurm_env, tmp_path_factory, tiny_model_dir):
    """Submit every job at once (they land on different fake nodes, two share n3) so they share the wall
    time; no job pins its ports: each takes its own default block."""
    SHARED_ROOT.mkdir(exist_ok=True)
    ok_dir = Path(tempfile.mkdtemp(prefix="slurm-label-", dir=SHARED_ROOT))  # n2 sees only shared paths
    judge = write_judge(ok_dir)
    write_pairs(ok_dir / "pairs.jsonl", N_PAIRS)
    ok_tmp = short_tmpdir("rs")
    ok = _sbatch(slurm_env, ok_dir, ["-N", "2", "--cpus-per-task=2"],
                 ["rlaif-ray", "label", "--config", str(CLUSTER_CONFIGS / "label_two_nodes.yaml"),
                  f"input={ok_dir / 'pairs.jsonl'}", f"run_dir={ok_dir / 'run'}", f"pool.judge.function={judge}"],
                 RAY_TMPDIR_BASE=str(ok_tmp), PYTHONPATH=str(ok_dir), JUDGE_MARGIN="5", RAY_KEEP_TMPDIR="1")

    bad_dir = tmp_path_factory.mktemp("fail")
    bad_tmp = short_tmpdir("rs")
    bad = _sbatch(slurm_env, bad_dir, ["-N", "1", "--cpus-per-task=2", "-w", "n4"],
                  ["rlaif-ray", "label", f"input={ok_dir / 'pairs.jsonl'}", "pool.num_actors=0"],
                  RAY_TMPDIR_BASE=str(bad_tmp), RLAIF_LAUNCH="submit", RLAIF_WORKING_DIR=str(bad_dir))

    gpu_dir = tmp_path_factory.mktemp("gpu")
    gpu_tmp = short_tmpdir("rs")
    venv = long_path_venv(gpu_dir)
    gpu = _sbatch(slurm_env, gpu_dir, ["-N", "1", "--cpus-per-task=1", "--gpus-per-node=8", "--mem=1000",
                                       "-w", "n3"],
                  [str(venv / "bin" / "python"), "-c", GPU_CHECK], RAY_TMPDIR_BASE=str(gpu_tmp),
                  RLAIF_RAY_VENV=str(venv), RAY_OBJECT_STORE_MB="")  # sized from --mem

    cancel_dir = tmp_path_factory.mktemp("cancel")
    cancel_tmp = short_tmpdir("rs")
    cancel = _sbatch(slurm_env, cancel_dir, ["-N", "1", "--cpus-per-task=1", "-w", "n3"], ["sleep", "600"],
                     RAY_TMPDIR_BASE=str(cancel_tmp))

    stop_dir = tmp_path_factory.mktemp("stop")
    stop_tmp = short_tmpdir("rs")
    stop = _sbatch(slurm_env, stop_dir, ["-N", "1", "--cpus-per-task=2", "-w", "n4", "--time=3",
                                         "--signal=B:USR1@100"],
                   ["rlaif-ray", "train-dpo", "--config", str(dpo_config(stop_dir, tiny_model_dir)), "--resume"],
                   RAY_TMPDIR_BASE=str(stop_tmp), RLAIF_STOP_GRACE_S="60")
    yield {"ok": (*ok, ok_dir, ok_tmp), "bad": (*bad, bad_dir, bad_tmp), "gpu": (*gpu, gpu_dir, gpu_tmp),
           "cancel": (*cancel, cancel_dir, cancel_tmp), "stop": (*stop, stop_dir, stop_tmp)}
    for tmp in (ok_tmp, bad_tmp, gpu_tmp, cancel_tmp, stop_tmp, ok_dir):
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.slurm
def test_two_node_label_job_completes_on_both_nodes(slurm_env, jobs):
    fields, log, workdir, ray_tmp = _ended(slurm_env, jobs["ok"], "COMPLETED", "0:0")
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
    # n2 is a machine of its own: its Ray temp dir (kept: RAY_KEEP_TMPDIR=1) lived in its /tmp, which this
    # host never saw.
    assert (ray_tmp / "n1").is_dir() and not (ray_tmp / "n2").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_failing_driver_fails_the_job_with_its_exit_code(slurm_env, jobs):
    _, log, _, _ = _ended(slurm_env, jobs["bad"], "FAILED", "2:0")
    assert "pool.num_actors" in log  # the driver's own error reached the job's output
    assert "driver exited with 2" in log


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
    _, log, _, _ = _ended(slurm_env, jobs["cancel"], "CANCELLED")
    assert "stopping this job's Ray steps" in log


@pytest.mark.slow
@pytest.mark.slurm
def test_gpus_are_requested_counted_and_handed_to_tasks(slurm_env, jobs):
    _, log, _, ray_tmp = _ended(slurm_env, jobs["gpu"], "COMPLETED", "0:0")
    assert "1/1 Ray nodes alive: 127.0.0.13 (1 CPU, 8 GPU)" in log
    assert "cluster GPUs 8.0; task GPU ids [0, 1, 2, 3, 4, 5, 6, 7]; leaked []" in log
    assert "object store MiB 300" in log  # 30% of --mem=1000
    assert not ray_tmp.joinpath("n3").exists()  # each node's temp dir goes with its Ray


@pytest.mark.slow
@pytest.mark.slurm
def test_time_limit_signal_checkpoints_and_completes(slurm_env, jobs):
    from rlaif_ray.learner.checkpoint import latest_checkpoint

    _, log, workdir, _ = _ended(slurm_env, jobs["stop"], "COMPLETED", "0:0")
    assert "SIGUSR1: the time limit is near" in log and "driver exited with 0" in log
    assert latest_checkpoint(str(workdir / "run")) is not None, log[-4000:]  # --resume continues from it
    assert not (workdir / "run" / "final").exists()


def _ended(env: dict, job: tuple, state: str, exit_code: str | None = None) -> tuple[dict, str, Path, Path]:
    """Wait for `job` to end in `state` (and `exit_code`) and for every process of it to be gone; returns
    (scontrol fields, its output, its workdir, its Ray temp dir)."""
    job_id, out, workdir, ray_tmp = job
    fields = _wait(env, job_id)
    log = out.read_text()
    assert fields["JobState"] == state and exit_code in (None, fields["ExitCode"]), (fields, log[-4000:])
    assert _gone(str(ray_tmp)) == [], "a process of the job outlived it"
    return fields, log, workdir, ray_tmp


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
