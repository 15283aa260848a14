"""`rlaif-ray train-ppo`: the RLAIF PPO loop, one iteration per step:

    prompts -> rollouts (RolloutPool, vLLM) -> rewards -> learner forward (old logprobs, values,
    reference logprobs) -> KL-penalised token rewards -> GAE advantages -> ppo_epochs x minibatches
    updates -> weight sync (verified) -> next step

Per step one JSON line in `<run_dir>/metrics.jsonl` (and TensorBoard in `<run_dir>/tb`): loss terms,
reward mean/std, KL, entropy, clip fraction, value error, grad norm, tokens/s and the wall-time split
generate/score/train/sync (+ checkpoint); `driver_overhead_fraction` is the step time in none of them.
Checkpoints (`<run_dir>/checkpoints/step-N`: HF safetensors policy + value head, optimizer, RNG, KL
coefficient, data cursor, config) every `checkpoint_every` steps and at the end; `--resume` continues
from the latest one and reproduces the uninterrupted run (the prompt order and sampling seeds are
functions of the step). A non-finite reward or loss stops the run naming the batch's sample ids; the
last good checkpoint stays.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..config.jobs import TrainPPOJob

CONFIG = TrainPPOJob
log = logging.getLogger("rlaif_ray.train_ppo")
TIMED = ("generate", "score", "train", "sync", "checkpoint")


class NonFiniteError(RuntimeError):
    """A reward or loss was NaN/inf; the message lists the sample ids of the batch."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run_dir")


def prompt_indices(n_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """The prompts of `step`: a fresh seeded shuffle per pass over the data, so any step's batch is known
    without replaying the ones before it (the data cursor is the step number)."""
    out = []
    for g in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(g, n_prompts)
        out.append(random.Random(seed * 1_000_003 + epoch).sample(range(n_prompts), n_prompts)[pos])
    return out


def load_function(spec: str):
    """`module:function` -> the callable (reward.source=function)."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"reward.function: {spec!r} is not 'module:function'")
    return getattr(importlib.import_module(module), name)


def build_batch(samples, pad_id: int) -> dict:
    """Right-padded prompt+response rows and the response mask in sequence coordinates ([B, L-1])."""
    import torch

    seqs = [s.prompt_token_ids + s.token_ids for s in samples]
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width - 1))
    for i, (s, q) in enumerate(zip(samples, seqs, strict=True)):
        ids[i, :len(q)] = torch.tensor(q)
        attn[i, :len(q)] = 1
        p = len(s.prompt_token_ids)
        resp[i, p - 1:p - 1 + len(s.token_ids)] = 1  # logits at p-1 predict the first response token
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


class Timer:
    """Wall time per phase of one step."""

    def __init__(self):
        self.t = dict.fromkeys(TIMED, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.t[phase] += time.perf_counter() - t0


class Metrics:
    """JSONL + TensorBoard per step; on resume the lines after the checkpoint are dropped."""

    def __init__(self, run_dir: Path, keep_until: int | None):
        self.path = run_dir / "metrics.jsonl"
        if keep_until is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            rows = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= keep_until]
            self.path.write_text("".join(r + "\n" for r in rows))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "step":
                self.tb.add_scalar(k, v, row["step"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def latest_checkpoint(run_dir: Path) -> Path | None:
    marker = run_dir / "checkpoints" / "latest"
    return run_dir / "checkpoints" / marker.read_text().strip() if marker.exists() else None


def save_checkpoint(run_dir: Path, learner, step: int, kl_ctl) -> Path:
    """Everything `--resume` needs; `latest` moves only once the directory is complete."""
    ckpt = run_dir / "checkpoints" / f"step-{step}"
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    learner.save(str(tmp))
    (tmp / "driver_state.json").write_text(json.dumps({"step": step, "data_cursor": step,
                                                       "kl_ctl": kl_ctl.state_dict()}))
    if (run_dir / "config.yaml").exists():
        shutil.copy(run_dir / "config.yaml", tmp / "config.yaml")
    shutil.rmtree(ckpt, ignore_errors=True)
    os.rename(tmp, ckpt)
    marker = run_dir / "checkpoints" / "latest"
    marker.with_suffix(".tmp").write_text(ckpt.name)
    os.replace(marker.with_suffix(".tmp"), marker)
    return ckpt


def run(cfg: TrainPPOJob, args: argparse.Namespace) -> int:
    try:
        train(cfg, resume=bool(getattr(args, "resume", False)))
    except NonFiniteError as e:
        log.error("%s", e)
        return 1
    return 0


def train(cfg: TrainPPOJob, resume: bool = False) -> list[dict]:
    """The loop; returns the metrics rows of the steps it ran."""
    from tqdm import tqdm

    from ..cluster import init_ray
    from ..data import read_prompts, text_of
    from ..learner.ppo import AdaptiveKLController
    from ..learner.ppo_learner import PPOLearnerGroup
    from ..models import load_tokenizer, resolve_model_path
    from ..rollout import RolloutPool
    from ..sync import WeightSync

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(cfg.prompts)
    if not prompts:
        raise ValueError(f"{cfg.prompts}: no prompts")
    ppo = cfg.ppo
    kl_ctl = AdaptiveKLController(ppo.kl_coef, ppo.target_kl, ppo.kl_horizon)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", run_dir)
    start = json.loads((ckpt / "driver_state.json").read_text())["step"] if ckpt else 0

    init_ray(cfg.ray)
    model_path = resolve_model_path(cfg.policy)
    pad_id = load_tokenizer(model_path).pad_token_id
    reward_fn = make_reward(cfg)
    pool = learner = None
    try:
        pool = RolloutPool(model_path, cfg.rollout, cfg.learner.seed, cfg.policy.dtype, cfg.ray.placement_strategy)
        learner = PPOLearnerGroup(model_path, cfg.policy, cfg.learner, ppo, cfg.sampling.temperature,
                                               cfg.ray.placement_strategy)
        sync = WeightSync(pool, cfg.sync)
        if ckpt:
            learner.load(str(ckpt))
            kl_ctl.load_state_dict(json.loads((ckpt / "driver_state.json").read_text())["kl_ctl"])
            sync.push(learner.state_for_sync(), version=start)
            log.info("resumed from %s at step %d", ckpt, start)
        metrics = Metrics(run_dir, keep_until=start if ckpt else None)
        rows = []
        bar = tqdm(range(start, ppo.steps), initial=start, total=ppo.steps, desc="train-ppo", unit="step")
        for step in bar:
            row = ppo_step(step, cfg, prompts, pool, learner, sync, reward_fn, kl_ctl, pad_id, text_of)
            timer = row.pop("_timer")
            if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or step + 1 == ppo.steps:
                with timer("checkpoint"):
                    save_checkpoint(run_dir, learner, step + 1, kl_ctl)
            row.update({f"time_{k}": v for k, v in timer.t.items()})
            row["time_step"] = time.perf_counter() - row.pop("_t0")
            row["tokens_per_s"] = row["response_tokens_mean"] * row["samples"] / row["time_step"]
            row["driver_overhead_fraction"] = max(0.0, 1 - sum(timer.t.values()) / row["time_step"])
            metrics.write(row)
            rows.append(row)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.3f}")
        metrics.close()
        return rows
    finally:
        if learner is not None:
            learner.shutdown()
        if pool is not None:
            pool.shutdown()


def make_reward(cfg: TrainPPOJob):
    """scores(prompts, responses) -> list[float] for the configured reward source."""
    src = cfg.reward
    if src.source == "function":
        if not src.function:
            raise ValueError("reward.function: required for reward.source=function (module:function)")
        fn = load_function(src.function)
        return lambda prompts, responses: [float(fn(p, r)) for p, r in zip(prompts, responses, strict=True)]
    raise NotImplementedError(f"reward.source={src.source}: needs the RewardScorer (rlaif_ray.reward)")


def ppo_step(step, cfg, prompts, pool, learner, sync, reward_fn, kl_ctl, pad_id, text_of) -> dict:
    """One iteration; returns its metrics row (with the phase timer)."""
    import torch

    from ..learner import ppo as P

    t0, timer, ppo = time.perf_counter(), Timer(), cfg.ppo
    idx = prompt_indices(len(prompts), ppo.prompts_per_step, step, cfg.learner.seed)
    batch_prompts = [prompts[i] for i in idx]
    sampling = replace(cfg.sampling, seed=None if cfg.sampling.seed is None else cfg.sampling.seed + step * 100_003)
    with timer("generate"):
        outs = pool.generate([r.prompt for r in batch_prompts], sampling)
    samples, ids, texts = [], [], []
    for rec, group in zip(batch_prompts, outs, strict=True):
        for j, s in enumerate(group):
            if s.token_ids:
                samples.append(s)
                ids.append(f"{rec.id}#{j}")
                texts.append(text_of(rec.prompt))
    if not samples:
        raise RuntimeError(f"step {step + 1}: no samples (every prompt rejected as too long?)")
    with timer("score"):
        raw = torch.tensor(reward_fn(texts, [s.text for s in samples]), dtype=torch.float32)
    bad = [i for i, v in zip(ids, raw.tolist(), strict=True) if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"step {step + 1}: non-finite reward for samples {bad} (batch: {ids}); "
                             "stopping, the last checkpoint is kept")
    with timer("train"):
        batch = build_batch(samples, pad_id)
        mask = batch["response_mask"]
        fwd = learner.forward(batch)
        kl = P.kl_penalty(fwd["logprobs"], fwd["ref_logprobs"], ppo.kl_estimator) * mask
        scores = P.scale_rewards(raw, ppo.reward_scale, ppo.reward_clip)
        values = fwd.get("values", torch.zeros_like(mask)) * mask
        adv, ret = P.gae(P.token_rewards(scores, kl, mask, kl_ctl.value), values, mask, ppo.gamma, ppo.lam)
        if ppo.whiten_advantages:
            adv = P.masked_whiten(adv, mask)
        batch.update(old_logprobs=fwd["logprobs"], old_values=values, advantages=adv, returns=ret)
        # vLLM sampled from the weights the learner holds: their logprobs must agree (sync sanity check)
        engine_lp = torch.zeros_like(mask)
        for i, s in enumerate(samples):
            p = len(s.prompt_token_ids)
            engine_lp[i, p - 1:p - 1 + len(s.token_ids)] = torch.tensor(s.logprobs)
        updates = []
        n, per = len(samples), math.ceil(len(samples) / ppo.minibatches)
        for epoch in range(ppo.ppo_epochs):
            gen = torch.Generator().manual_seed(cfg.learner.seed * 1_000_003 + step * 1009 + epoch)
            perm = torch.randperm(n, generator=gen)
            for k in range(ppo.minibatches):
                sel = perm[k * per:(k + 1) * per]
                stats = learner.train_step({key: v[sel] for key, v in batch.items()})
                if not math.isfinite(stats["loss"]):
                    raise NonFiniteError(f"step {step + 1} epoch {epoch} minibatch {k}: non-finite loss on learner "
                                         f"rank {stats.get('nonfinite_rank')} for samples "
                                         f"{[ids[i] for i in sel.tolist()]}; stopping, the last checkpoint is kept")
                updates.append(stats)
    with timer("sync"):
        report = sync.push(learner.state_for_sync(), version=step + 1)
    tokens = int(mask.sum())
    seq_kl = (kl.sum(1)).mean().item()
    row = {"step": step + 1, "reward_mean": raw.mean().item(), "reward_std": raw.std(unbiased=False).item(),
           "kl": seq_kl, "kl_coef": kl_ctl.value, "entropy": P.masked_mean(fwd["entropy"], mask).item(),
           "response_tokens_mean": tokens / n, "samples": n,
           "rollout_logprob_diff": (P.masked_mean((engine_lp - fwd["logprobs"]).abs(), mask)).item(),
           **{k: sum(u[k] for u in updates) / len(updates) for k in updates[0] if k != "nonfinite_rank"},
           "tokens_per_s_generate": tokens / max(timer.t["generate"], 1e-9),
           "tokens_per_s_train": tokens * ppo.ppo_epochs / max(timer.t["train"], 1e-9),
           "sync_verified": report.verified, "sync_max_abs_diff": report.max_abs_diff,
           "_timer": timer, "_t0": t0}
    kl_ctl.update(seq_kl, n)
    return row
