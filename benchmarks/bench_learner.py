"""`rlaif-ray bench learner --json PATH [--quick]`: our LearnerGroup vs TRL's DPOTrainer on DPO.

Both train the same tiny Llama on the same synthetic preference pairs with the same batch shape, one
after the other in this run, on the same cores: TRL as a single process with a thread per core, ours
as a 2-rank DeepSpeed ZeRO-2 group on gloo with a thread per rank (`ratio`, the group as deployed: a
rank per core) and as a 1-rank group with every core's thread (`ours_1rank_tokens_per_s`,
`ratio_1rank`). Reported: tokens/s of each (sequence tokens of chosen + rejected, all steps after a
warm-up), and |loss difference| at every step against TRL (same weights, same batches: the DPO
losses must agree).

PPO part (helper D2): see `ppo_split` below; it adds one PPO iteration's time split and
`driver_overhead_fraction` to the same JSON.
"""

from __future__ import annotations

import json
import os
import random
import time

from rlaif_ray.data.schemas import PreferenceRecord

_SUBJECTS = ["the cat", "a robot", "my friend", "the river", "the teacher", "a small bird", "our team"]
_VERBS = ["finds", "explains", "carries", "paints", "answers", "builds", "follows", "helps"]
_OBJECTS = ["a red apple", "the long story", "three blue stones", "a simple answer", "the bright moon"]


def synthetic_preferences(n: int, seed: int = 0, soft: bool = False) -> list[PreferenceRecord]:
    """Separable pairs: the chosen answer is polite ("kindly ... thank you"), the rejected one rude."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s, v, o = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
        prompt = f"Question {i}: why does {s} {v} {o}?"
        chosen = f"Kindly put, {s} {v} {o} with care. Thank you for asking."
        rejected = f"No. {s} {v} {o}. Go away."
        p = round(rng.uniform(0.7, 1.0), 3) if soft else 1.0
        out.append(PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, p_chosen=p))
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--params", type=int, default=None, help="tiny model size (default 7M; --quick 2M)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per trainer")
    parser.add_argument("--ranks", type=int, default=2, help="learner ranks of the headline `ratio` (the "
                        "cores are split between them); a 1-rank run is always added")


def _trl_run(model_dir: str, rows, batch: int, steps: int, out_dir: str) -> dict:
    """TRL DPOTrainer, single process; loss of step 1 and tokens/s over steps 2..N."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from rlaif_ray.models import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = load_tokenizer(model_dir, padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}],
                               "chosen": [{"role": "assistant", "content": r.chosen}],
                               "rejected": [{"role": "assistant", "content": r.rejected}]} for r in rows])
    args = DPOConfig(output_dir=out_dir, per_device_train_batch_size=batch, beta=0.1, loss_type=["sigmoid"],
                     use_cpu=True, bf16=False, report_to=[], max_length=128, max_steps=steps, learning_rate=1e-4,
                     lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                     precompute_ref_log_probs=True, logging_steps=1, save_strategy="no",
                     dataloader_num_workers=0, seed=0, data_seed=0, disable_tqdm=True,
                     train_sampling_strategy="sequential")
    losses: list[float] = []

    class Recording(DPOTrainer):  # the logged loss is rounded to 4 digits: record the exact one
        def compute_loss(self, *a, **k):
            loss = super().compute_loss(*a, **k)
            losses.append(float(loss.detach()))
            return loss

    class Timer(TrainerCallback):
        t: list[float] = []

        def on_step_end(self, *a, **k):
            self.t.append(time.perf_counter())

    trainer = Recording(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    return {"t": Timer.t, "losses": losses}


def _ours_run(model_dir: str, rows, batch: int, steps: int, ranks: int) -> dict:
    """Our LearnerGroup (ZeRO-2, fp32, torch AdamW), the same batches in the same order as TRL's."""
    import torch

    from rlaif_ray.config import LearnerConfig, ModelConfig
    from rlaif_ray.learner.group import LearnerGroup
    from rlaif_ray.learner.objectives import DPOObjective, encode_preferences, pad_preferences
    from rlaif_ray.models import load_tokenizer

    tok = load_tokenizer(model_dir, padding_side="right")
    enc = encode_preferences(rows, tok, 128)
    cpus = max(1, (os.cpu_count() or 1) // ranks)
    cfg = LearnerConfig(num_ranks=ranks, cpus_per_rank=cpus, zero_stage=2, lr=1e-4, micro_batch_size=batch // ranks,
                        max_grad_norm=1.0, timeout_s=600)
    group = LearnerGroup(cfg, ModelConfig(path=model_dir), {"dpo": DPOObjective(0.1)}, name="bench-dpo")
    try:
        ref = torch.cat([group.forward("dpo", pad_preferences(enc[i:i + batch], tok.pad_token_id))["logps"]
                         for i in range(0, len(enc), batch)])
        t, losses = [], []
        order = list(range(len(enc)))
        for s in range(steps):
            idx = [order[(s * batch + j) % len(enc)] for j in range(batch)]
            b = pad_preferences([enc[i] for i in idx], tok.pad_token_id)
            b["ref_logps"] = ref[idx]
            out = group.train_step("dpo", b)
            t.append(time.perf_counter())
            losses.append(out["loss"])
        return {"t": t, "losses": losses}
    finally:
        group.shutdown()


def _tokens(rows, model_dir: str, batch: int, steps: int) -> int:
    """Tokens (chosen + rejected sequences) per step of `batch` pairs, averaged over the data."""
    from rlaif_ray.learner.objectives import encode_preferences
    from rlaif_ray.models import load_tokenizer

    enc = encode_preferences(rows, load_tokenizer(model_dir, padding_side="right"), 128)
    per_pair = sum(len(c[0]) + len(r[0]) for c, r, _, _ in enc) / len(enc)
    return int(per_pair * batch)


def ppo_split(args, quick: bool) -> dict:
    """One PPO iteration's time split: `train-ppo` on the toy config (configs/train_ppo_toy.yaml: vLLM
    rollout worker, function reward, 2-rank DeepSpeed policy + value head, verified sync), steps 2..N
    averaged (step 1 pays warm-up). `driver_overhead_fraction` = step time in none of
    generate/score/train/sync/checkpoint (goal < 0.10)."""
    import tempfile
    from pathlib import Path

    from rlaif_ray.algos.train_ppo import TIMED, train
    from rlaif_ray.config import load
    from rlaif_ray.config.jobs import TrainPPOJob

    root = Path(__file__).resolve().parents[1]
    steps = 3 if quick else 6
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        cfg = load(TrainPPOJob, str(root / "configs/train_ppo_toy.yaml"),
                   [f"run_dir={tmp}", f"prompts={root / 'configs/train_ppo_toy.prompts.jsonl'}",
                    f"ppo.steps={steps}", "checkpoint_every=0"])
        rows = train(cfg)[1:]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in [f"time_{t}" for t in TIMED] + ["time_step"]}
    out = {f"ppo_{k}_s": round(v, 3) for k, v in mean.items()}
    out["ppo_steps_measured"] = len(rows)
    out["driver_overhead_fraction"] = round(max(0.0, 1 - sum(mean[f"time_{t}"] for t in TIMED) / mean["time_step"]), 4)
    split = "  ".join(f"{t} {mean[f'time_{t}']:.2f}s" for t in TIMED)
    print(f"PPO iteration ({len(rows)} steps avg): {split}  step {mean['time_step']:.2f}s  "
          f"driver_overhead_fraction {out['driver_overhead_fraction']:.4f}")
    return out


def run(args) -> int:
    import tempfile

    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import RayConfig
    from rlaif_ray.models import tiny_model_path

    quick = getattr(args, "quick", False)
    params = args.params or (2_000_000 if quick else 7_000_000)
    steps = args.steps or (6 if quick else 20)
    batch, ranks = 8, args.ranks
    model_dir = str(tiny_model_path(params, 0))
    rows = synthetic_preferences(batch * steps, seed=0)
    per_step_tokens = _tokens(rows, model_dir, batch, steps)

    with tempfile.TemporaryDirectory(prefix="bench-learner-") as tmp:
        trl = _trl_run(model_dir, rows, batch, steps, tmp)
    init_ray(RayConfig(address="local", object_store_mb=512))
    ours = _ours_run(model_dir, rows, batch, steps, ranks)
    one = ours if ranks == 1 else _ours_run(model_dir, rows, batch, steps, 1)

    def rate(t):  # steps 2..N: the first step pays one-time costs on both sides
        return per_step_tokens * (len(t) - 1) / (t[-1] - t[0])

    result = {
        "model_params": params, "batch_pairs": batch, "steps": steps, "ranks": ranks,
        "tokens_per_step": per_step_tokens,
        "ours_tokens_per_s": round(rate(ours["t"]), 1), "trl_tokens_per_s": round(rate(trl["t"]), 1),
        "ours_losses": ours["losses"], "trl_losses": trl["losses"],
        "loss_abs_diff": max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"], strict=True)),
        "ours_1rank_tokens_per_s": round(rate(one["t"]), 1),
        "loss_abs_diff_1rank": max(abs(a - b) for a, b in zip(one["losses"], trl["losses"], strict=True)),
    }
    result["ratio"] = round(result["ours_tokens_per_s"] / result["trl_tokens_per_s"], 3)
    result["ratio_1rank"] = round(result["ours_1rank_tokens_per_s"] / result["trl_tokens_per_s"], 3)
    result.update(ppo_split(args, quick))
    print(f"{'':24}{f'ours {ranks} rank(s)':>16}{'ours 1 rank':>14}{'TRL':>12}")
    print(f"{'tokens/s':24}{result['ours_tokens_per_s']:>16.1f}{result['ours_1rank_tokens_per_s']:>14.1f}"
          f"{result['trl_tokens_per_s']:>12.1f}")
    print(f"{'last-step loss':24}{ours['losses'][-1]:>16.6f}{one['losses'][-1]:>14.6f}{trl['losses'][-1]:>12.6f}")
    print(f"ratio {result['ratio']} (1 rank {result['ratio_1rank']})  loss_abs_diff {result['loss_abs_diff']:.2e}")
    if getattr(args, "json_path", None):
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=1)
    return 0
