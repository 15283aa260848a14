"""train-rm end to end on 2 DeepSpeed ranks: accuracy on a separable synthetic set rises above chance
on the held-out AI split and on a human split; the exported model loads as a reward model."""

import argparse

import pytest
import torch

from benchmarks.bench_learner import synthetic_preferences
from rlaif_ray.config.jobs import TrainRMJob
from rlaif_ray.config.schema import from_dict
from rlaif_ray.data import write_rows


@pytest.mark.slow
def test_train_rm_accuracy_rises_and_model_exports(ray_session, tiny_model_dir, tmp_path):
    from rlaif_ray.algos import train_rm
    from rlaif_ray.learner.metrics import read_metrics
    from rlaif_ray.learner.objectives import collate_preferences
    from rlaif_ray.models import load_reward_model, load_tokenizer

    write_rows(tmp_path / "ai.jsonl", [r.to_row() for r in synthetic_preferences(72, seed=5, soft=True)])
    human = synthetic_preferences(16, seed=6)
    write_rows(tmp_path / "human.jsonl", [r.to_row() for r in human])
    cfg = from_dict(TrainRMJob, {
        "train": str(tmp_path / "ai.jsonl"), "human_eval": str(tmp_path / "human.jsonl"),
        "run_dir": str(tmp_path / "run"), "model": {"path": str(tiny_model_dir)}, "epochs": 2,
        "val_fraction": 0.2, "margin": 0.1,
        "learner": {"num_ranks": 2, "zero_stage": 2, "lr": 1e-3, "micro_batch_size": 4, "shm_comm": False,
                    "max_length": 64, "timeout_s": 300}})
    assert train_rm.run(cfg, argparse.Namespace(resume=False)) == 0

    rows = read_metrics(tmp_path / "run")
    train = [r for r in rows if "train/loss" in r]
    val = [r["val/accuracy"] for r in rows if "val/accuracy" in r]
    human_acc = [r["human/accuracy"] for r in rows if "human/accuracy" in r]
    assert len(val) == len(human_acc) == 2  # reported every epoch
    assert val[-1] >= 0.8 and human_acc[-1] >= 0.8  # chance is 0.5
    assert train[-1]["train/loss"] < train[0]["train/loss"]
    assert {"train/grad_norm", "train/tokens_per_s", "train/accuracy"} <= train[0].keys()
    assert (tmp_path / "run" / "tensorboard").is_dir()

    rm = load_reward_model(str(tmp_path / "run" / "final"))
    tok = load_tokenizer(str(tmp_path / "run" / "final"), padding_side="right")
    batch = collate_preferences(human[:4], tok, 64)
    with torch.no_grad():
        chosen = rm(input_ids=batch["input_ids"][:, 0], attention_mask=batch["attention_mask"][:, 0]).logits
        rejected = rm(input_ids=batch["input_ids"][:, 1], attention_mask=batch["attention_mask"][:, 1]).logits
    assert (chosen > rejected).all()
