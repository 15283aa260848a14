"""`rlaif-ray train-ppo`: the RLAIF PPO loop, one iteration per step:

    prompts -> rollouts (RolloutPool, vLLM) -> rewards -> learner forward (old logprobs, values,
    reference logprobs) -> KL-penalised token rewards -> GAE advantages -> ppo_epochs x minibatches
    updates -> weight sync (verified) -> next step

The policy (with its value head, or beside a separate critic group) trains in a DeepSpeed
`LearnerGroup`; the frozen reference is replicated on the same ranks (`set_reference("initial")`).
Per step one row in `<run_dir>/metrics.jsonl` (keys `ppo/<name>`) and TensorBoard, with a progress
bar: loss terms, reward mean/std, KL, entropy, clip fraction, value error, grad norm, tokens/s and the
wall-time split generate/score/train/sync/checkpoint; `driver_overhead_fraction` is the step time in
none of them; `sync_bytes` and `driver_rss_mb` show the weights going learner -> engines without the
driver. `<run_dir>/placement.json` records the node of the driver, each rollout worker and learner rank. Checkpoints (`<run_dir>/checkpoints/step-N`: HF safetensors policy + value head,
DeepSpeed optimizer state, RNG, KL coefficient, data cursor) every `checkpoint_every` steps and at the
end; `--resume` continues from the latest one and reproduces the uninterrupted run (the prompt order
and sampling seeds are functions of the step). A non-finite reward or loss stops the run naming the
batch's sample ids; the last good checkpoint stays.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time
from contextlib import contextmanager
from dataclasses import replace

from ..config.jobs import TrainPPOJob

log = logging.getLogger("rlaif_ray.train_ppo")
TIMED = ("generate", "score", "train", "sync", "checkpoint")


class NonFiniteError(RuntimeError):
    """A reward or loss was NaN/inf; the message lists the sample ids of the batch."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run_dir")


def prompt_indices(n_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """The prompts of `step`: a fresh seeded shuffle per pass over the data, so any step's batch is known
    without replaying the ones before it (the data cursor is the step number)."""
    out, perms = [], {}
    for g in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(g, n_prompts)
        if epoch not in perms:
            perms[epoch] = random.Random(seed * 1_000_003 + epoch).sample(range(n_prompts), n_prompts)
        out.append(perms[epoch][pos])
    return out


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


def run(cfg: TrainPPOJob, args: argparse.Namespace) -> int:
    try:
        train(cfg, resume=bool(getattr(args, "resume", False)))
    except NonFiniteError as e:
        log.error("%s", e)
        return 1
    return 0


def train(cfg: TrainPPOJob, resume: bool = False) -> list[dict]:
    """The loop; returns the metrics rows of the steps it ran."""
    from ..cluster import init_ray
    from ..data import read_prompts
    from ..learner.checkpoint import export_final, latest_checkpoint, read_trainer_state, save_checkpoint
    from ..learner.metrics import MetricsWriter
    from ..learner.ppo import AdaptiveKLController
    from ..models import load_tokenizer, resolve_model_path
    from ..reward import build_reward_source
    from ..rollout import RolloutPool
    from ..sync import WeightSync

    prompts = read_prompts(cfg.prompts)
    if not prompts:
        raise ValueError(f"{cfg.prompts}: no prompts")
    ppo = cfg.ppo
    kl_ctl = AdaptiveKLController(ppo.kl_coef, ppo.target_kl, ppo.kl_horizon)
    ckpt = latest_checkpoint(cfg.run_dir) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", cfg.run_dir)
    extra = read_trainer_state(ckpt) if ckpt else None
    start = extra["step"] if extra else 0

    model_path = resolve_model_path(cfg.policy)
    init_ray(cfg.ray, shared={"run_dir": cfg.run_dir, "policy": model_path, "reward.rm_path": cfg.reward.rm_path,
                              "ppo.critic_path": cfg.ppo.critic_path})
    pad_id = load_tokenizer(model_path).pad_token_id
    pool = learners = reward = None
    try:
        reward = build_reward_source(cfg.reward, cfg.ray)
        pool = RolloutPool(model_path, cfg.rollout, cfg.learner.seed, cfg.policy.dtype, cfg.ray.placement_strategy)
        learners = PPOLearners(cfg, model_path)
        sync = WeightSync(pool, cfg.sync, learners.policy)
        write_placement(cfg.run_dir, pool, learners)
        if ckpt:
            learners.load(ckpt)
            kl_ctl.load_state_dict(extra["kl_ctl"])
            sync.push(version=start)
            log.info("resumed from %s at step %d", ckpt, start)
        rows = []
        with MetricsWriter(cfg.run_dir, ppo.steps, resume=extra, desc="train-ppo") as metrics:
            t_loop = time.perf_counter()
            for step in range(start, ppo.steps):
                row = ppo_step(step, cfg, prompts, pool, learners, sync, reward, kl_ctl, pad_id)
                timer = row.pop("_timer")
                # A wall-clock budget ends the run after the step that crosses it, checkpointed like the last.
                last = step + 1 == ppo.steps or (
                    ppo.max_minutes is not None and (time.perf_counter() - t_loop) / 60 >= ppo.max_minutes)
                if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or last:
                    with timer("checkpoint"):
                        learners.save(cfg.run_dir, step + 1, {"data_cursor": step + 1, "kl_ctl": kl_ctl.state_dict(),
                                                              "metrics_rows": metrics.rows + 1}, save_checkpoint)
                row.update({f"time_{k}": v for k, v in timer.t.items()})
                row["time_step"] = time.perf_counter() - row.pop("_t0")
                row["tokens_per_s"] = row["response_tokens_mean"] * row["samples"] / row["time_step"]
                row["driver_overhead_fraction"] = max(0.0, 1 - sum(timer.t.values()) / row["time_step"])
                metrics.log(step + 1, row, prefix="ppo")
                rows.append({"step": step + 1, **row})
                if last:
                    if step + 1 < ppo.steps:
                        log.info("ppo.max_minutes=%s reached after step %d of %d", ppo.max_minutes, step + 1, ppo.steps)
                    break
        log.info("policy written to %s", export_final(learners.policy, cfg.run_dir, {"step": start + len(rows)}))
        return rows
    finally:
        for part in (learners, pool):
            if part is not None:
                part.shutdown()
        if reward is not None:
            reward.close()


def write_placement(run_dir: str, pool, learners) -> None:
    """`<run_dir>/placement.json`: the node of the driver, each rollout worker and each learner rank."""
    import json
    import os

    import ray

    where = {"driver": ray.util.get_node_ip_address(), "rollout_workers": [i["node"] for i in pool.infos],
             "policy_ranks": learners.policy.nodes,
             "critic_ranks": learners.critic.nodes if learners.critic is not None else []}
    log.info("placement: %s", where)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "placement.json"), "w") as f:
        json.dump(where, f, indent=1)


class PPOLearners:
    """The policy group (with a value head, or plus a separate critic group) and the reference."""

    def __init__(self, cfg: TrainPPOJob, model_path: str):
        from ..learner.critic import SeparateCritic
        from ..learner.group import LearnerGroup
        from ..learner.ppo_objective import PPOObjective, ValueObjective

        obj = PPOObjective(cfg.ppo, cfg.sampling.temperature)
        self.policy = LearnerGroup(cfg.learner, cfg.policy, {"ppo": obj}, wrap=obj.wrap_model,
                                   model_path=model_path, name="policy", strategy=cfg.ray.placement_strategy)
        self.policy.set_reference("initial")
        self.critic = None
        if cfg.ppo.critic == "separate":
            full = replace(cfg.policy, lora=replace(cfg.policy.lora, enabled=False))  # LoRA targets causal LMs
            self.critic = LearnerGroup(cfg.learner, full, {"ppo_value": ValueObjective(cfg.ppo)},
                                       model_kind=SeparateCritic.from_pretrained,
                                       model_path=cfg.ppo.critic_path or model_path, name="critic",
                                       strategy=cfg.ray.placement_strategy)

    def forward(self, batch: dict) -> dict:
        out = self.policy.forward("ppo", batch)
        out["ref_logprobs"] = self.policy.forward("ppo", batch, model="reference")["logprobs"]
        if self.critic is not None:
            out["values"] = self.critic.forward("ppo_value", batch)["values"]
        return out

    def train_step(self, batch: dict) -> dict:
        stats = self.policy.train_step("ppo", batch)
        if self.critic is not None:
            critic = self.critic.train_step("ppo_value", batch)
            stats.update({f"critic_{k}": critic[k] for k in ("vf_loss", "value_error", "vf_clip_frac", "grad_norm")})
        return stats

    def save(self, run_dir: str, step: int, extra: dict, save_checkpoint) -> None:
        import os

        path = save_checkpoint(self.policy, run_dir, step, extra)
        if self.critic is not None:
            self.critic.save(os.path.join(path, "critic"), extra)

    def load(self, path: str) -> None:
        import os

        self.policy.load(path)
        if self.critic is not None:
            self.critic.load(os.path.join(path, "critic"))

    def shutdown(self) -> None:
        for g in (self.policy, self.critic):
            if g is not None:
                g.shutdown()


NOT_AVERAGED = ("lr", "step_time_s", "tokens", "tokens_per_s")  # per-call bookkeeping of LearnerGroup.train_step


def ppo_step(step, cfg, prompts, pool, learners, sync, reward, kl_ctl, pad_id) -> dict:
    """One iteration; returns its metrics row (with the phase timer)."""
    import psutil
    import torch

    from ..data import text_of
    from ..learner import ppo as P
    from ..learner.group import NonFiniteLossError

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
        raw = torch.tensor(reward(texts, [s.text for s in samples]), dtype=torch.float32)
    bad = [i for i, v in zip(ids, raw.tolist(), strict=True) if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"step {step + 1}: non-finite reward for samples {bad} (batch: {ids}); "
                             "stopping, the last checkpoint is kept")
    with timer("train"):
        batch = build_batch(samples, pad_id)
        mask = batch["response_mask"]
        fwd = learners.forward(batch)
        kl = P.kl_penalty(fwd["logprobs"], fwd["ref_logprobs"], ppo.kl_estimator) * mask
        scores = P.scale_rewards(raw, ppo.reward_scale, ppo.reward_clip)
        values = fwd["values"] * mask
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
                mb_ids = [ids[i] for i in sel.tolist()]
                try:
                    stats = learners.train_step({**{key: v[sel] for key, v in batch.items()}, "ids": mb_ids})
                except NonFiniteLossError:
                    raise NonFiniteError(f"step {step + 1} epoch {epoch} minibatch {k}: non-finite loss for "
                                         f"samples {mb_ids}; stopping, the last checkpoint is kept") from None
                updates.append(stats)
    with timer("sync"):
        report = sync.push(version=step + 1)
    tokens = int(mask.sum())
    seq_kl = (kl.sum(1)).mean().item()
    row = {"reward_mean": raw.mean().item(), "reward_std": raw.std(unbiased=False).item(),
           "kl": seq_kl, "kl_coef": kl_ctl.value, "entropy": P.masked_mean(fwd["entropy"], mask).item(),
           "response_tokens_mean": tokens / n, "samples": n,
           "rollout_logprob_diff": (P.masked_mean((engine_lp - fwd["logprobs"]).abs(), mask)).item(),
           **{k: sum(u[k] for u in updates) / len(updates) for k in updates[0] if k not in NOT_AVERAGED},
           "tokens_per_s_generate": tokens / max(timer.t["generate"], 1e-9),
           "tokens_per_s_train": tokens * ppo.ppo_epochs / max(timer.t["train"], 1e-9),
           "sync_verified": report.verified, "sync_max_abs_diff": report.max_abs_diff, "sync_bytes": report.bytes,
           "driver_rss_mb": psutil.Process().memory_info().rss / 2**20,
           "_timer": timer, "_t0": t0}
    kl_ctl.update(seq_kl, n)
    return row
