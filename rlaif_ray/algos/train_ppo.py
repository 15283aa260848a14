"""`rlaif-ray train-ppo`: the RLAIF PPO loop, one iteration per step:

    prompts -> rollouts (RolloutPool, vLLM) -> rewards -> learner forward (old logprobs, values,
    reference logprobs) -> KL-penalised token rewards -> GAE advantages -> ppo_epochs x minibatches
    updates -> weight sync (verified) -> next step

`ppo.advantage` picks the estimator; the loop is the same for all: gae (the critic), or critic-free
grpo / dr_grpo / rloo (each sample against the other samples of its prompt) and reinforce_pp.

The learner side (policy with its value head or beside a separate critic, the frozen reference on the
same ranks, the experience maths and the minibatch updates) is `learner.ppo_learners.PPOLearners`.
Per step one row in `<run_dir>/metrics.jsonl` (keys `ppo/<name>`) and TensorBoard, with a progress
bar: loss terms, reward mean/std (and with `gold.score_function` the gold score of the same samples), KL,
entropy, clip fraction, value error, grad norm, tokens/s and the
wall-time split generate/score/train/sync/checkpoint; `driver_overhead_fraction` is the step time in
none of them; `sync_bytes` and `driver_rss_mb` show the weights going learner -> engines without the
driver. `<run_dir>/placement.json` records the node of the driver, each rollout worker and learner
rank. Checkpoints (`<run_dir>/checkpoints/step-N`: HF safetensors policy + value head, DeepSpeed
optimizer state, RNG, KL coefficient, data cursor) every `checkpoint_every` steps, at the end, and after
the step in progress on SIGTERM/SIGUSR1 (then exit 0); `--resume` continues from the latest one and
reproduces the uninterrupted run (the prompt order and sampling seeds are functions of the step). A
non-finite reward or loss stops the run naming the batch's sample ids; the last good checkpoint stays.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

from ..config.jobs import TrainPPOJob

log = logging.getLogger("rlaif_ray.train_ppo")
TIMED = ("generate", "score", "train", "sync", "checkpoint")


class NonFiniteError(RuntimeError):
    """A reward or loss was NaN/inf; the message lists the sample ids of the batch."""


@dataclass
class PPORun:
    """What every step uses: the config, the prompts and the actors."""

    cfg: TrainPPOJob
    prompts: list
    pool: Any  # RolloutPool
    learners: Any  # learner.ppo_learners.PPOLearners
    sync: Any  # WeightSync
    reward: Any  # (prompts, responses) -> scores
    kl_ctl: Any  # learner.ppo.AdaptiveKLController
    gold: Any = None  # optional (prompt, response) -> gold score, logged beside the reward


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
    from ..feedback.judge_function import load_function
    from ..learner.checkpoint import export_final, latest_checkpoint, read_trainer_state, save_checkpoint
    from ..learner.metrics import MetricsWriter, PhaseTimer
    from ..learner.ppo import AdaptiveKLController
    from ..learner.ppo_learners import PPOLearners
    from ..models import load_tokenizer, resolve_model_path
    from ..reward import build_reward_source
    from ..rollout import RolloutPool
    from ..stopping import StopSignal
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
    pool = learners = reward = None
    try:
        reward = build_reward_source(cfg.reward, cfg.ray, cfg.run_dir)
        pool = RolloutPool(model_path, cfg.rollout, cfg.learner.seed, cfg.policy.dtype, cfg.ray.placement_strategy)
        learners = PPOLearners(cfg, model_path, load_tokenizer(model_path).pad_token_id)
        sync = WeightSync(pool, cfg.sync, learners.policy)
        write_placement(cfg.run_dir, pool, learners)
        if ckpt:
            learners.load(ckpt)
            kl_ctl.load_state_dict(extra["kl_ctl"])
            sync.push(version=start)
            log.info("resumed from %s at step %d", ckpt, start)
        gold = load_function(cfg.gold.score_function, "gold.score_function") if cfg.gold.score_function else None
        run = PPORun(cfg, prompts, pool, learners, sync, reward, kl_ctl, gold)
        rows = []
        with MetricsWriter(cfg.run_dir, ppo.steps, resume=extra, desc="train-ppo") as metrics, StopSignal() as stop:
            t_loop = time.perf_counter()
            for step in range(start, ppo.steps):
                t0, timer = time.perf_counter(), PhaseTimer(TIMED)
                row = ppo_step(run, step, timer)
                # A wall-clock budget or a stop signal ends the run after this step, checkpointed like the last.
                last = step + 1 == ppo.steps or stop.requested or (
                    ppo.max_minutes is not None and (time.perf_counter() - t_loop) / 60 >= ppo.max_minutes)
                if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or last:
                    with timer("checkpoint"):
                        learners.save(cfg.run_dir, step + 1, {"data_cursor": step + 1, "kl_ctl": kl_ctl.state_dict(),
                                                              "metrics_rows": metrics.rows + 1}, save_checkpoint)
                row.update({f"time_{k}": v for k, v in timer.t.items()})
                row["time_step"] = time.perf_counter() - t0
                row["tokens_per_s"] = row["response_tokens_mean"] * row["samples"] / row["time_step"]
                row["driver_overhead_fraction"] = max(0.0, 1 - sum(timer.t.values()) / row["time_step"])
                metrics.log(step + 1, row, prefix="ppo")
                rows.append({"step": step + 1, **row})
                if last:
                    break
        if stop.requested:
            log.info("stopped after step %d of %d, checkpointed; --resume continues", start + len(rows), ppo.steps)
            return rows
        if start + len(rows) < ppo.steps:
            log.info("ppo.max_minutes=%s reached after step %d of %d", ppo.max_minutes, start + len(rows), ppo.steps)
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

    where = {"driver": ray.util.get_node_ip_address(), "rollout_workers": pool.group.nodes,
             "policy_ranks": learners.policy.nodes,
             "critic_ranks": learners.critic.nodes if learners.critic is not None else []}
    log.info("placement: %s", where)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "placement.json"), "w") as f:
        json.dump(where, f, indent=1)


def ppo_step(run: PPORun, step: int, timer) -> dict:
    """One iteration: generate, score, learn, sync; returns its metrics row."""
    import psutil
    import torch

    from ..data import text_of
    from ..learner.group import NonFiniteLossError, prompt_indices

    cfg, ppo = run.cfg, run.cfg.ppo
    batch_prompts = [run.prompts[i] for i in prompt_indices(len(run.prompts), ppo.prompts_per_step, step,
                                                             cfg.learner.seed)]
    sampling = replace(cfg.sampling, seed=None if cfg.sampling.seed is None else cfg.sampling.seed + step * 100_003)
    with timer("generate"):
        outs = run.pool.generate([r.prompt for r in batch_prompts], sampling)
    kept = [(f"{rec.id}#{j}", text_of(rec.prompt), s, g) for g, (rec, group) in enumerate(zip(batch_prompts, outs,
                                                                                             strict=True))
            for j, s in enumerate(group) if s.token_ids]
    if not kept:
        raise RuntimeError(f"step {step + 1}: no samples (every prompt rejected as too long?)")
    ids, texts, samples, groups = (list(x) for x in zip(*kept, strict=True))
    masked = 0
    with timer("score"):
        scores = torch.tensor(run.reward(texts, [s.text for s in samples], groups), dtype=torch.float32)
        finite = torch.isfinite(scores)
        if not finite.all() and cfg.reward.source == "judge_pairwise":  # no comparison of these samples
            keep = finite.nonzero(as_tuple=True)[0].tolist()              # succeeded: leave them out
            if not keep:
                raise RuntimeError(f"step {step + 1}: every judge comparison failed (samples {ids})")
            masked = len(ids) - len(keep)
            ids, texts, samples, groups = ([x[k] for k in keep] for x in (ids, texts, samples, groups))
            scores = scores[keep]
        gold = [float(run.gold(t, s.text)) for t, s in zip(texts, samples, strict=True)] if run.gold else None
    bad = [i for i, v in zip(ids, scores.tolist(), strict=True) if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"step {step + 1}: non-finite reward for samples {bad} (batch: {ids}); "
                             "stopping, the last checkpoint is kept")
    with timer("train"):
        batch, rollout = run.learners.experience(samples, scores, run.kl_ctl.value, groups)
        try:
            updates = run.learners.update(batch, ids, seed=cfg.learner.seed * 1_000_003 + step * 1009)
        except NonFiniteLossError as e:
            raise NonFiniteError(f"step {step + 1} {e}; stopping, the last checkpoint is kept") from None
    with timer("sync"):
        report = run.sync.push(version=step + 1)
    n, tokens = len(samples), rollout["tokens"]
    row = {"reward_mean": scores.mean().item(), "reward_std": scores.std(unbiased=False).item(),
           "kl": rollout["kl"], "kl_coef": run.kl_ctl.value, "entropy": rollout["entropy"],
           "response_tokens_mean": tokens / n, "samples": n, "rollout_logprob_diff": rollout["rollout_logprob_diff"],
           **updates,
           "tokens_per_s_generate": tokens / max(timer.t["generate"], 1e-9),
           "tokens_per_s_train": tokens * ppo.ppo_epochs / max(timer.t["train"], 1e-9),
           "sync_verified": report.verified, "sync_max_abs_diff": report.max_abs_diff, "sync_bytes": report.bytes,
           "driver_rss_mb": psutil.Process().memory_info().rss / 2**20}
    if cfg.reward.source == "judge_pairwise":
        row["samples_masked"] = masked
    if gold is not None:  # the true objective beside the proxy: when reward rises and this falls, it is gamed
        row["gold_score_mean"] = sum(gold) / n
    run.kl_ctl.update(rollout["kl"], n)
    return row
