"""The job registry: every `rlaif-ray <job>`, read by the CLI, the demo and the tests.

A job's module exposes `run(cfg, args) -> exit code` and, optionally, `add_arguments(parser)` for flags
beyond its config; `config` is its config dataclass (None for jobs configured by flags only); a
`resumable` job gets `--resume` (continue from the newest checkpoint in run_dir).
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from types import ModuleType

from .config import (
    CritiqueReviseJob,
    DemoJob,
    EvalJob,
    GeneratePairsJob,
    LabelHumanJob,
    LabelJob,
    TrainDPOJob,
    TrainPPOJob,
    TrainRMJob,
    TrainSFTJob,
)


@dataclass(frozen=True)
class Job:
    module: str
    help: str
    config: type | None = None
    resumable: bool = False

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def add_arguments(self, parser: argparse.ArgumentParser) -> ModuleType:
        """The job's own flags (beyond its config) on `parser`; returns the loaded module."""
        module = self.load()
        if self.resumable:
            parser.add_argument("--resume", action="store_true",
                                help="continue from the newest checkpoint in run_dir")
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
        return module


JOBS: dict[str, Job] = {
    "validate": Job("rlaif_ray.algos.validate",
                    "check prompts / pairs / preference files; report stats and errors"),
    "label": Job("rlaif_ray.algos.label",
                 "label pairs with the AI-feedback pool (Claude, OpenAI-compatible, local)", LabelJob),
    "label-human": Job("rlaif_ray.algos.label_human", "label pairs by hand at the terminal", LabelHumanJob),
    "generate-pairs": Job("rlaif_ray.algos.generate_pairs",
                          "sample >= 2 responses per prompt into unlabeled pairs", GeneratePairsJob),
    "critique-revise": Job("rlaif_ray.algos.critique_revise",
                           "Constitutional AI: the policy answers, the critic critiques and revises; SFT data "
                           "and preference pairs", CritiqueReviseJob),
    "train-sft": Job("rlaif_ray.algos.train_sft",
                     "supervised fine-tuning on prompt/completion or messages data", TrainSFTJob, resumable=True),
    "train-rm": Job("rlaif_ray.algos.train_rm",
                    "train a Bradley-Terry reward model on preferences", TrainRMJob, resumable=True),
    "train-dpo": Job("rlaif_ray.algos.train_dpo",
                     "DPO / IPO / conservative DPO in chained stages", TrainDPOJob, resumable=True),
    "train-ppo": Job("rlaif_ray.algos.train_ppo",
                     "the RLAIF PPO loop: rollouts, rewards, updates, weight sync", TrainPPOJob, resumable=True),
    "eval": Job("rlaif_ray.algos.eval", "pairwise win rates of checkpoints with CIs and plots", EvalJob),
    "bench": Job("benchmarks", "benchmarks: rollout, label, learner, sync, rl"),
    "demo": Job("rlaif_ray.algos.demo",
                "the offline quickstart: generate, label, train RM/PPO/DPO, eval", DemoJob),
}
