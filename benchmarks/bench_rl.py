"""`rlaif-ray bench rl --json PATH [--quick] [--steps N] [--new-tokens T] [--advantage A]`: the toy GRPO
task (configs/train_grpo_toy.yaml) trained synchronously and with one-step-off asynchronous rollouts
(`ppo.async_steps=1`), one after the other in this run, same seeds and settings.

The split suits an overlap: one rollout worker and one learner rank, a core each (the machine's two), the
answer length chosen so that generation and training take similar time. Reported per mode, over steps
2..N (step 1 pays warm-up and, async, has nothing to overlap): iteration seconds, the generation share of
an iteration (the engines' busy time for that step's samples over the step time), the exposed wait for
the rollout, and the reward curve; `ratio` = async / sync iteration seconds (goal <= 0.7).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="iterations per mode (default 8; --quick 4)")
    parser.add_argument("--new-tokens", type=int, default=96, help="tokens per sample (sets the generation share)")
    parser.add_argument("--advantage", default="grpo", help="ppo.advantage of both runs")


def _mode(args, steps: int, async_steps: int) -> dict:
    from rlaif_ray.algos.train_ppo import train
    from rlaif_ray.config import load
    from rlaif_ray.config.jobs import TrainPPOJob

    with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
        cfg = load(TrainPPOJob, str(ROOT / "configs/train_grpo_toy.yaml"), [
            f"run_dir={tmp}", f"prompts={ROOT / 'configs/train_ppo_toy.prompts.jsonl'}", f"ppo.steps={steps}",
            f"ppo.async_steps={async_steps}", f"ppo.advantage={args.advantage}", "checkpoint_every=0",
            f"sampling.max_new_tokens={args.new_tokens}", f"rollout.max_model_len={64 + args.new_tokens}",
            "learner.num_ranks=1", "learner.cpus_per_rank=1", "rollout.cpus_per_worker=1",
            "ppo.ppo_epochs=1", "ppo.minibatches=1", "sync.verify_every=0"])
        rows = train(cfg)
    measured = rows[1:]

    def mean(key):
        return sum(r[key] for r in measured) / len(measured)

    return {"iteration_s": round(mean("time_step"), 3),
            "generation_share": round(mean("time_rollout_generate") / mean("time_step"), 3),
            "rollout_generate_s": round(mean("time_rollout_generate"), 3),
            "wait_generate_s": round(mean("time_generate"), 3), "train_s": round(mean("time_train"), 3),
            "sync_s": round(mean("time_sync"), 3), "staleness": mean("staleness"),
            "reward_curve": [round(r["reward_mean"], 4) for r in rows]}


def run(args) -> int:
    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import RayConfig

    steps = args.steps or (4 if getattr(args, "quick", False) else 8)
    init_ray(RayConfig(address="local", object_store_mb=512))
    sync = _mode(args, steps, 0)
    ahead = _mode(args, steps, 1)
    result = {"advantage": args.advantage, "steps": steps, "steps_measured": steps - 1,
              "new_tokens": args.new_tokens, "sync": sync, "async": ahead,
              "ratio": round(ahead["iteration_s"] / sync["iteration_s"], 3)}
    print(f"{'':26}{'sync':>10}{'async (1 step off)':>20}")
    for key, label in (("iteration_s", "iteration s"), ("generation_share", "generation share"),
                       ("rollout_generate_s", "engine busy s"), ("wait_generate_s", "learner waits s"),
                       ("train_s", "train s"), ("sync_s", "weight sync s"), ("staleness", "staleness")):
        print(f"{label:26}{sync[key]:>10.3f}{ahead[key]:>20.3f}")
    print(f"ratio async / sync {result['ratio']} (goal <= 0.7)")
    print(f"reward sync  {sync['reward_curve']}\nreward async {ahead['reward_curve']}")
    if getattr(args, "json_path", None):
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=1)
    return 0
