"""`rlaif-ray train-ppo`: the RLAIF PPO loop, one iteration per step:

    prompts -> rollouts (RolloutPool, vLLM) -> rewards -> learner forward (old logprobs, values,
    reference logprobs) -> KL-penalised token rewards -> GAE advantages -> ppo_epochs x minibatches
    updates -> weight sync (verified) -> next step

`ppo.advantage` picks the estimator; the loop is the same for all: gae (the critic), or critic-free
grpo / dr_grpo / rloo (each sample against the other samples of its prompt) and reinforce_pp.
`ppo.async_steps=1` changes only when a rollout is made: step t+1's during step t's training, from step
t's weights (`Ahead`), importance-corrected in the loss; `ppo.dynamic_sampling` refills tied groups.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from ..config.jobs import TrainPPOJob

log = logging.getLogger("rlaif_ray.train_ppo")
TIMED = ("generate", "score", "train", "sync", "checkpoint")
NEXT_ROLLOUT = "next_rollout.pkl"  # in a one-step-off run's checkpoint: the scored rollout of the next step


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
    from ..learner import checkpoint as C
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
    ckpt = C.latest_checkpoint(cfg.run_dir) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", cfg.run_dir)
    extra = C.read_trainer_state(ckpt) if ckpt else None
    start = extra["step"] if extra else 0

    model_path = resolve_model_path(cfg.policy)
    init_ray(cfg.ray, shared={"run_dir": cfg.run_dir, "policy": model_path, "reward.rm_path": cfg.reward.rm_path,
                              "ppo.critic_path": cfg.ppo.critic_path})
    pool = learners = reward = None
    executor = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead")  # scores the one-step-off rollout
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
        ahead = load_ahead(ckpt) if ckpt and ppo.async_steps else None
        rows = []
        with MetricsWriter(cfg.run_dir, ppo.steps, resume=extra, desc="train-ppo") as metrics, StopSignal() as stop:
            t_loop = time.perf_counter()
            for step in range(start, ppo.steps):
                t0, timer = time.perf_counter(), PhaseTimer(TIMED)
                rollout = take_rollout(run, step, ahead, timer)
                ahead = Ahead(run, step + 1, step, executor) if ppo.async_steps and step + 1 < ppo.steps else None
                row = ppo_step(run, rollout, step, timer, ahead)
                # A wall-clock budget or a stop signal ends the run after this step, checkpointed like the last.
                last = step + 1 == ppo.steps or stop.requested or (
                    ppo.max_minutes is not None and (time.perf_counter() - t_loop) / 60 >= ppo.max_minutes)
                if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or last:
                    with timer("checkpoint"):
                        save_ahead(ahead, C.checkpoint_dir(cfg.run_dir, step + 1))
                        learners.save(cfg.run_dir, step + 1, {"data_cursor": step + 1, "kl_ctl": kl_ctl.state_dict(),
                                                              "metrics_rows": metrics.rows + 1}, C.save_checkpoint)
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
        log.info("policy written to %s", C.export_final(learners.policy, cfg.run_dir, {"step": start + len(rows)}))
        return rows
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
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


# ---------------------------------------------------------------- rollout: generate and score

@dataclass
class Rollout:
    """One step's scored samples, ready for the learners."""

    ids: list[str]  # "<prompt id>#<sample index>"
    texts: list[str]  # each sample's prompt as text
    samples: list  # rollout.engine.Sample: tokens and the engine's logprobs
    groups: list[int]  # each sample's prompt (the group estimators compare within one)
    scores: Any  # torch.Tensor [B]
    gold: list[float] | None  # gold.score_function of each sample
    version: int  # the weights that sampled them: the learner step they were pushed after
    masked: int = 0  # samples left out because every judge comparison of theirs failed
    dropped: int = 0  # ppo.dynamic_sampling: prompts dropped because their samples tied
    refills: int = 0  # ppo.dynamic_sampling: extra generation rounds
    seconds: dict = field(default_factory=lambda: {"generate": 0.0, "score": 0.0})

    def select(self, keep: list[int]) -> Rollout:
        pick = lambda xs: [xs[k] for k in keep]  # noqa: E731
        return replace(self, ids=pick(self.ids), texts=pick(self.texts), samples=pick(self.samples),
                       groups=pick(self.groups), scores=self.scores[keep],
                       gold=pick(self.gold) if self.gold is not None else None)

    def extend(self, other: Rollout) -> Rollout:
        import torch

        return replace(self, ids=self.ids + other.ids, texts=self.texts + other.texts,
                       samples=self.samples + other.samples, groups=self.groups + other.groups,
                       scores=torch.cat([self.scores, other.scores]),
                       gold=self.gold + other.gold if self.gold is not None else None,
                       masked=self.masked + other.masked,
                       seconds={k: v + other.seconds[k] for k, v in self.seconds.items()})


def send(run: PPORun, step: int, refill: int = 0, count: int | None = None) -> tuple[list, list]:
    """Start generating the prompts of `step` (or of its `refill`-th dynamic-sampling round, `count` fresh
    draws); returns the prompt records and the pool's refs. Prompts and seeds are functions of the step."""
    import random

    from ..learner.group import prompt_indices

    cfg, n = run.cfg, len(run.prompts)
    if refill == 0:
        idx = prompt_indices(n, cfg.ppo.prompts_per_step, step, cfg.learner.seed)
    else:
        idx = random.Random(cfg.learner.seed * 1_000_003 + step * 1009 + refill).sample(range(n), min(count, n))
    records = [run.prompts[i] for i in idx]
    seed = cfg.sampling.seed
    sampling = replace(cfg.sampling, seed=None if seed is None else seed + step * 100_003 + refill * 7919)
    return records, run.pool.submit([r.prompt for r in records], sampling)


def score(run: PPORun, step: int, records: list, refs: list, version: int, group_base: int = 0) -> Rollout:
    """Gather the samples of `send`, score them; judge_pairwise samples with no successful comparison
    are left out (never scored 0)."""
    import torch

    from ..data import text_of
    from ..learner.metrics import PhaseTimer

    cfg, timer = run.cfg, PhaseTimer(("generate", "score"))
    with timer("generate"):
        outs = run.pool.gather(refs)
    kept = [(f"{rec.id}#{j}", text_of(rec.prompt), s, group_base + g)
            for g, (rec, group) in enumerate(zip(records, outs, strict=True)) for j, s in enumerate(group) if s.token_ids]
    ids, texts, samples, groups = (list(x) for x in zip(*kept, strict=True)) if kept else ([], [], [], [])
    out = Rollout(ids, texts, samples, groups, torch.zeros(0), None, version, seconds=timer.t)
    if not kept:
        return out
    with timer("score"):
        out.scores = torch.tensor(run.reward(texts, [s.text for s in samples], groups), dtype=torch.float32)
        finite = torch.isfinite(out.scores)
        if not finite.all() and cfg.reward.source == "judge_pairwise":  # no comparison of these samples
            keep = finite.nonzero(as_tuple=True)[0].tolist()              # succeeded: leave them out
            if not keep:
                raise RuntimeError(f"step {step + 1}: every judge comparison failed (samples {ids})")
            out = replace(out.select(keep), masked=len(ids) - len(keep))
        if run.gold:
            out.gold = [float(run.gold(t, s.text)) for t, s in zip(out.texts, out.samples, strict=True)]
    return out


def take_rollout(run: PPORun, step: int, ahead: Ahead | None, timer) -> Rollout:
    """The rollout step `step` trains on; the engines hold the weights of `step` (pushed at the end of
    the step before). Synchronous: generated and scored now. One-step-off: made during the last step
    from its weights, `generate` the wait for what is not done. Dynamic-sampling refills use the
    current weights."""
    if ahead is not None:
        with timer("generate"):
            rollout = ahead.result()
    else:
        records, refs = send(run, step)
        rollout = score(run, step, records, refs, version=step)
        for k, v in rollout.seconds.items():
            timer.t[k] += v
    if not rollout.ids:
        raise RuntimeError(f"step {step + 1}: no samples (every prompt rejected as too long?)")
    if run.cfg.ppo.dynamic_sampling:
        before = dict(rollout.seconds)
        rollout = dynamic_sample(run, rollout, step, version=step)
        for k, v in rollout.seconds.items():
            timer.t[k] += v - before[k]
    return rollout


def dynamic_sample(run: PPORun, rollout: Rollout, step: int, version: int) -> Rollout:
    """DAPO's dynamic sampling: drop the prompts whose samples all got the same reward (their group
    advantage is 0 everywhere), refill with fresh prompts for up to `ppo.max_refills` rounds. Tied groups
    come back only as far as needed to fill the minibatches on every rank."""
    ppo, want = run.cfg.ppo, run.cfg.ppo.prompts_per_step
    min_rows = ppo.minibatches * run.cfg.learner.num_ranks
    kept, tied = split_ties(rollout)
    refills = 0
    while len(set(kept.groups)) < want and refills < ppo.max_refills:
        refills += 1
        records, refs = send(run, step, refills, want - len(set(kept.groups)))
        more, more_tied = split_ties(score(run, step, records, refs, version, group_base=refills * 1_000_003))
        kept, tied = kept.extend(more), tied.extend(more_tied)
    dropped = len(set(tied.groups))
    while len(kept.ids) < min_rows and tied.ids:  # too few rows to split: take tied groups back
        g = tied.groups[0]
        back = [k for k, x in enumerate(tied.groups) if x == g]
        kept, tied = kept.extend(tied.select(back)), tied.select([k for k in range(len(tied.ids)) if k not in back])
        dropped -= 1
    return replace(kept, dropped=dropped, refills=refills, seconds={k: kept.seconds[k] + tied.seconds[k]
                                                                   for k in kept.seconds})


def split_ties(rollout: Rollout) -> tuple[Rollout, Rollout]:
    """(the samples of prompts whose rewards differ, those of prompts whose rewards all tie)."""
    members: dict[int, list[int]] = {}
    for k, g in enumerate(rollout.groups):
        members.setdefault(g, []).append(k)
    scores = rollout.scores.tolist()
    varied = {g for g, ks in members.items() if len(ks) > 1 and max(scores[k] for k in ks) - min(scores[k] for k in ks) > 1e-6}
    keep = [k for k, g in enumerate(rollout.groups) if g in varied]
    rest = [k for k, g in enumerate(rollout.groups) if g not in varied]
    none = {"generate": 0.0, "score": 0.0}
    return rollout.select(keep), replace(rollout.select(rest), masked=0, seconds=none)


class Ahead:
    """ppo.async_steps=1: the next step's rollout, generated while this step trains. The prompts go to
    the engines now, before this step's weight push, so the engines sample them with this step's
    weights (one step stale) and the push waits behind them; a driver thread gathers and scores them.
    `Ahead.ready(rollout)` is one already made (resumed from a checkpoint)."""

    def __init__(self, run: PPORun | None, step: int, version: int, executor=None):
        self.refs, self.rollout = [], None
        if run is not None:
            records, self.refs = send(run, step)
            self.future = executor.submit(score, run, step, records, self.refs, version)

    @classmethod
    def ready(cls, rollout: Rollout) -> Ahead:
        out = cls(None, 0, 0)
        out.rollout = rollout
        return out

    def wait_generated(self) -> None:
        """Until the engines are done with these samples (the weight push goes after them)."""
        import ray

        if self.refs:
            ray.wait(self.refs, num_returns=len(self.refs), fetch_local=False)

    def result(self) -> Rollout:
        if self.rollout is None:
            self.rollout = self.future.result()
        return self.rollout


def save_ahead(ahead: Ahead | None, path: str) -> None:
    """The scored rollout of the next step goes into the checkpoint (written before the checkpoint is
    marked complete), so a resumed one-step-off run trains on exactly the samples it would have."""
    import os
    import pickle

    if ahead is None:
        return
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, NEXT_ROLLOUT), "wb") as f:
        pickle.dump(ahead.result(), f)


def load_ahead(path: str) -> Ahead | None:
    import os
    import pickle

    if not os.path.exists(os.path.join(path, NEXT_ROLLOUT)):
        return None
    with open(os.path.join(path, NEXT_ROLLOUT), "rb") as f:
        return Ahead.ready(pickle.load(f))


# ---------------------------------------------------------------- learn: experience, update, sync

def ppo_step(run: PPORun, rollout: Rollout, step: int, timer, ahead: Ahead | None = None) -> dict:
    """Train on one rollout and push the new weights; returns the step's metrics row."""
    import psutil

    from ..learner.group import NonFiniteLossError

    cfg, ppo = run.cfg, run.cfg.ppo
    bad = [i for i, v in zip(rollout.ids, rollout.scores.tolist(), strict=True) if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"step {step + 1}: non-finite reward for samples {bad} (batch: {rollout.ids}); "
                             "stopping, the last checkpoint is kept")
    samples, scores = rollout.samples, rollout.scores
    with timer("train"):
        batch, stats = run.learners.experience(samples, scores, run.kl_ctl.value, rollout.groups)
        try:
            updates = run.learners.update(batch, rollout.ids, seed=cfg.learner.seed * 1_000_003 + step * 1009)
        except NonFiniteLossError as e:
            raise NonFiniteError(f"step {step + 1} {e}; stopping, the last checkpoint is kept") from None
    if ahead is not None:
        with timer("generate"):  # the engines finish the next step's samples before taking new weights
            ahead.wait_generated()
    with timer("sync"):
        report = run.sync.push(version=step + 1)
    n, tokens = len(samples), stats.pop("tokens")
    row = {"reward_mean": scores.mean().item(), "reward_std": scores.std(unbiased=False).item(),
           "kl_coef": run.kl_ctl.value, **stats, "response_tokens_mean": tokens / n, "samples": n, **updates,
           "staleness": step - rollout.version, "time_rollout_generate": rollout.seconds["generate"],
           "time_rollout_score": rollout.seconds["score"],
           "tokens_per_s_generate": tokens / max(rollout.seconds["generate"], 1e-9),
           "tokens_per_s_train": tokens * ppo.ppo_epochs / max(timer.t["train"], 1e-9),
           "sync_verified": report.verified, "sync_max_abs_diff": report.max_abs_diff, "sync_bytes": report.bytes,
           "driver_rss_mb": psutil.Process().memory_info().rss / 2**20}
    if cfg.reward.source == "judge_pairwise":
        row["samples_masked"] = rollout.masked
    if ppo.dynamic_sampling:
        row.update(groups_dropped=rollout.dropped, refills=rollout.refills)
    if rollout.gold is not None:  # the true objective beside the proxy: when reward rises and this falls, it is gamed
        row["gold_score_mean"] = sum(rollout.gold) / n
    run.kl_ctl.update(stats["kl"], n)
    return row
