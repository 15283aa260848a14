"""PPO's learner side as the driver sees it: the policy group (with a value head, or beside a separate
critic group) and the frozen reference replicated on the policy's ranks.

    learners = PPOLearners(cfg, model_path)
    batch, stats = learners.experience(samples, scores, kl_coef)   # one policy round trip: π and π_ref
                                                                   # logprobs, values; KL, GAE, whitening
    updates = learners.update(batch, ids, seed)                    # ppo_epochs x minibatches steps
    learners.save(run_dir, step, extra, save_checkpoint); learners.load(path); learners.shutdown()

A batch is in sequence coordinates (see `ppo_objective.py`): position t of every [B, L-1] tensor belongs
to the logits at t, which predict token t + 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import torch

from ..config.jobs import TrainPPOJob
from . import ppo as P
from .group import NonFiniteLossError

NOT_AVERAGED = ("lr", "step_time_s", "tokens", "tokens_per_s")  # per-call bookkeeping of LearnerGroup.train_step


def build_batch(samples, pad_id: int) -> dict:
    """Right-padded prompt+response rows and the response mask in sequence coordinates ([B, L-1])."""
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


def engine_logprobs(samples, like: torch.Tensor) -> torch.Tensor:
    """The rollout engine's logprobs of the sampled tokens, laid out like the learner's."""
    out = torch.zeros_like(like)
    for i, s in enumerate(samples):
        p = len(s.prompt_token_ids)
        out[i, p - 1:p - 1 + len(s.token_ids)] = torch.tensor(s.logprobs)
    return out


class PPOLearners:
    def __init__(self, cfg: TrainPPOJob, model_path: str, pad_id: int):
        from .critic import SeparateCritic
        from .group import LearnerGroup
        from .ppo_objective import PPOObjective, ValueObjective

        self.ppo, self.pad_id = cfg.ppo, pad_id
        obj = PPOObjective(cfg.ppo, cfg.sampling.temperature, cfg.sampling.max_new_tokens)
        self.policy = LearnerGroup(cfg.learner, cfg.policy, {"ppo": obj}, wrap=obj.wrap_model,
                                   model_path=model_path, name="policy", strategy=cfg.ray.placement_strategy)
        self.policy.set_reference("initial")
        self.critic = None
        if cfg.ppo.uses_critic and cfg.ppo.critic == "separate":
            full = replace(cfg.policy, lora=replace(cfg.policy.lora, enabled=False))  # LoRA targets causal LMs
            self.critic = LearnerGroup(cfg.learner, full, {"ppo_value": ValueObjective(cfg.ppo)},
                                       model_kind=SeparateCritic.from_pretrained,
                                       model_path=cfg.ppo.critic_path or model_path, name="critic",
                                       strategy=cfg.ray.placement_strategy)

    def experience(self, samples, scores: torch.Tensor, kl_coef: float, groups: list[int] | None = None
                   ) -> tuple[dict, dict]:
        """The training batch of one rollout: old logprobs (and values with a critic), advantages by
        `ppo.advantage` and returns; plus the rollout's KL, entropy and engine/learner logprob gap.
        `groups[i]` is sample i's prompt (the group estimators compare samples of one prompt)."""
        ppo = self.ppo
        batch = build_batch(samples, self.pad_id)
        mask = batch["response_mask"]
        fwd = self.policy.forward("ppo", batch, model="policy+reference")
        kl = P.kl_penalty(fwd["logprobs"], fwd["ref_logprobs"], ppo.kl_estimator) * mask
        scores = P.scale_rewards(scores, ppo.reward_scale, ppo.reward_clip)
        values = torch.zeros_like(mask)
        if ppo.advantage == "gae":  # a critic's values, KL-penalised token rewards, GAE
            values = (self.critic.forward("ppo_value", batch) if self.critic is not None else fwd)["values"] * mask
            adv, ret = P.gae(P.token_rewards(scores, kl, mask, kl_coef), values, mask, ppo.gamma, ppo.lam)
            if ppo.whiten_advantages:
                adv = P.masked_whiten(adv, mask)
        elif ppo.advantage == "reinforce_pp":  # token-level KL in the reward, reward-to-go, batch-whitened
            ret, _ = P.gae(P.token_rewards(scores, kl, mask, kl_coef), values, mask, ppo.gamma, 1.0)
            adv = P.masked_whiten(ret, mask)
        else:  # grpo / dr_grpo / rloo: the sequence reward against its prompt group, on every token
            seq = P.group_advantages(scores - kl_coef * kl.sum(1), torch.tensor(groups), ppo.advantage)
            adv, ret = seq[:, None] * mask, torch.zeros_like(mask)
        batch.update(old_logprobs=fwd["logprobs"], old_values=values, advantages=adv, returns=ret)
        if ppo.kl_loss_coef > 0:
            batch["ref_logprobs"] = fwd["ref_logprobs"]
        # Synchronous: vLLM sampled from the weights the learner holds, their logprobs must agree (a sanity
        # check). One-step-off: it sampled from the previous weights, and the gap is what TIS corrects.
        rollout_logprobs = engine_logprobs(samples, mask)
        gap = (rollout_logprobs - fwd["logprobs"]).abs()
        stats = {"kl": kl.sum(1).mean().item(), "entropy": P.masked_mean(fwd["entropy"], mask).item(),
                 "rollout_logprob_diff": P.masked_mean(gap, mask).item(), "tokens": int(mask.sum())}
        if ppo.async_steps and ppo.tis_cap is not None:
            w = batch["is_weights"] = P.tis_weights(fwd["logprobs"], rollout_logprobs, mask, ppo.tis_cap)
            stats.update(is_weight_mean=P.masked_mean(w, mask).item(),
                         is_weight_capped_frac=P.masked_mean((w >= ppo.tis_cap).float(), mask).item())
        return batch, stats

    def update(self, batch: dict, ids: list[str], seed: int) -> dict:
        """ppo_epochs passes of `minibatches` optimizer steps over a seeded permutation; the mean of each
        step's stats. A non-finite loss raises NonFiniteLossError naming the minibatch's sample ids."""
        n, per = len(ids), math.ceil(len(ids) / self.ppo.minibatches)
        updates = []
        for epoch in range(self.ppo.ppo_epochs):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
            for k in range(self.ppo.minibatches):
                sel = perm[k * per:(k + 1) * per]
                mb_ids = [ids[i] for i in sel.tolist()]
                try:
                    updates.append(self.train_step({**{key: v[sel] for key, v in batch.items()}, "ids": mb_ids}))
                except NonFiniteLossError:
                    raise NonFiniteLossError(f"epoch {epoch} minibatch {k}: non-finite loss for samples {mb_ids}",
                                             mb_ids) from None
        return {k: sum(u[k] for u in updates) / len(updates) for k in updates[0] if k not in NOT_AVERAGED}

    def train_step(self, batch: dict) -> dict:
        stats = self.policy.train_step("ppo", batch)
        if self.critic is not None:
            critic = self.critic.train_step("ppo_value", batch)
            stats.update({f"critic_{k}": critic[k] for k in ("vf_loss", "value_error", "vf_clip_frac", "grad_norm")})
        return stats

    def save(self, run_dir: str, step: int, extra: dict, save_checkpoint) -> None:
        path = save_checkpoint(self.policy, run_dir, step, extra)
        if self.critic is not None:
            self.critic.save(os.path.join(path, "critic"), extra)

    def load(self, path: str) -> None:
        self.policy.load(path)
        if self.critic is not None:
            self.critic.load(os.path.join(path, "critic"))

    def shutdown(self) -> None:
        for g in (self.policy, self.critic):
            if g is not None:
                g.shutdown()
