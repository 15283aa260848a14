"""train-dpo end to end: two chained stages (AI soft labels -> human, reference = previous policy);
a driver killed with SIGKILL after a checkpoint and resumed with --resume reproduces the uninterrupted
metrics; a driver sent SIGTERM checkpoints the step it was in and exits 0."""

import argparse
import signal
import subprocess
import sys

import pytest

from benchmarks.bench_learner import synthetic_preferences
from rlaif_ray.config.jobs import TrainDPOJob
from rlaif_ray.config.schema import from_dict, save
from rlaif_ray.data import write_rows

VOLATILE = ("time", "step_time_s", "tokens_per_s")


def _config(tmp_path, run_dir):
    return from_dict(TrainDPOJob, {
        "run_dir": str(run_dir), "model": {"path": str(tmp_path / "model")}, "val_fraction": 0.2,
        "checkpoint_every": 2,
        "stages": [
            {"name": "ai", "data": str(tmp_path / "ai.jsonl"), "epochs": 1, "lr": 1e-3, "soft_labels": True,
             "reference": "initial"},
            {"name": "human", "data": str(tmp_path / "human.jsonl"), "epochs": 2, "lr": 5e-4,
             "loss": "conservative", "label_smoothing": 0.1, "reference": "previous"}],
        "learner": {"num_ranks": 2, "zero_stage": 2, "micro_batch_size": 2, "shm_comm": False,
                    "max_length": 64, "timeout_s": 300}})


# The driver process kills itself with SIGKILL as it is about to log step 3 (between the checkpoints at
# steps 2 and 4): no finally block, atexit hook or flush runs, as when a node or a user kills it.
KILLED_AT_STEP_3 = """
import os, signal, sys
from rlaif_ray import cli
from rlaif_ray.learner import metrics
real = metrics.MetricsWriter.log
def log(self, step, values, prefix="train"):
    if step == 3 and prefix.startswith("train"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, step, values, prefix)
metrics.MetricsWriter.log = log
sys.exit(cli.main(sys.argv[1:]))
"""


# The same driver sends itself SIGTERM (as `scancel --signal=TERM` or the Slurm launcher's time-limit
# handler would) while logging step 3: it must checkpoint step 3 and exit 0.
TERMINATED_AT_STEP_3 = KILLED_AT_STEP_3.replace("signal.SIGKILL", "signal.SIGTERM")


def _comparable(rows):
    return [{k: v for k, v in r.items() if k.split("/")[-1] not in VOLATILE} for r in rows]


@pytest.mark.slow
def test_dpo_stages_and_kill_resume_reproduce_metrics(ray_session, tiny_model_dir, tmp_path):
    from rlaif_ray.algos import train_dpo
    from rlaif_ray.learner.checkpoint import latest_checkpoint
    from rlaif_ray.learner.metrics import read_metrics

    (tmp_path / "model").symlink_to(tiny_model_dir)
    write_rows(tmp_path / "ai.jsonl", [r.to_row() for r in synthetic_preferences(24, seed=7, soft=True)])
    write_rows(tmp_path / "human.jsonl", [r.to_row() for r in synthetic_preferences(12, seed=8)])

    assert train_dpo.run(_config(tmp_path, tmp_path / "a"), argparse.Namespace(resume=False)) == 0
    full = read_metrics(tmp_path / "a")
    ai = [r for r in full if "train/ai/loss" in r]
    human = [r for r in full if "train/human/loss" in r]
    assert ai and human and [r for r in full if "val/ai/reward_accuracy" in r]
    assert ai[-1]["train/ai/loss"] < ai[0]["train/ai/loss"]
    # stage 2's reference is stage 1's policy: its first loss starts from the conservative-DPO value at h = 0
    assert human[0]["train/human/loss"] == pytest.approx(0.6931472, abs=1e-4)
    assert (tmp_path / "a" / "final" / "model.safetensors").exists()

    # Run b: a driver process of its own, attached to this session's Ray, killed after its 3rd step.
    config_file = save(_config(tmp_path, tmp_path / "b"), tmp_path / "b-config")
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_3, "train-dpo", "--config", str(config_file),
                             f"ray.address={ray_session.get_runtime_context().gcs_address}"], timeout=600)
    assert killed.returncode == -signal.SIGKILL
    config_c = save(_config(tmp_path, tmp_path / "c"), tmp_path / "c-config")
    stopped = subprocess.run([sys.executable, "-c", TERMINATED_AT_STEP_3, "train-dpo", "--config", str(config_c),
                              f"ray.address={ray_session.get_runtime_context().gcs_address}"], timeout=600)
    assert stopped.returncode == 0
    assert latest_checkpoint(str(tmp_path / "c")).endswith("step-0000003")
    assert not (tmp_path / "c" / "final").exists()  # stopped, not finished
    assert latest_checkpoint(str(tmp_path / "b")).endswith("step-0000002")
    assert train_dpo.run(_config(tmp_path, tmp_path / "b"), argparse.Namespace(resume=True)) == 0
    resumed = read_metrics(tmp_path / "b")
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for a, b in zip(_comparable(full), _comparable(resumed), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=1e-6), (a["step"], k)
