"""The PPO objective as a learner rank runs it: model forward -> per-token statistics -> loss.

A PPO batch is a dict of tensors in sequence coordinates, right-padded to length L:
    input_ids, attention_mask     [B, L]      prompt + response tokens
    response_mask                 [B, L-1]    1 where the token at t+1 is a response token
and, for `loss`, from the rollout phase (same [B, L-1] layout):
    old_logprobs, old_values, advantages, returns (and is_weights for stale one-step-off samples)
Position t of every [B, L-1] tensor belongs to the logits at t, which predict token t+1.

    obj = PPOObjective(ppo_cfg, temperature)
    model = obj.wrap_model(causal_lm)       # adds the value head when GAE uses ppo_cfg.critic == "value_head"
    stats = obj.forward(model, batch)       # {"logprobs", "values"?, "entropy"}: no grad
    loss, stats = obj.loss(model, batch)    # clipped policy + value + entropy terms

With a separate critic the policy objective has no value term and `ValueObjective` trains the critic.
"""

from __future__ import annotations

import torch

from ..config.jobs import PPOConfig
from . import ppo
from .critic import PolicyWithValueHead
from .objectives import unwrap


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_{t+1} | x_≤t) for t < L-1 from logits [B, L, V] (already temperature-scaled)."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


class PPOObjective:
    """Clipped-ratio policy loss (+ clipped value loss with a value head) + entropy bonus."""

    name = "ppo"

    def __init__(self, cfg: PPOConfig, temperature: float = 1.0, max_new_tokens: int | None = None):
        # The sampled policy is softmax(z / T): ratios and KL must use the same distribution.
        self.cfg, self.temperature = cfg, temperature if temperature > 0 else 1.0
        self.max_new_tokens = max_new_tokens  # the constant of loss_agg=seq_sum

    def wrap_model(self, lm):
        return PolicyWithValueHead(lm) if self.cfg.uses_critic and self.cfg.critic == "value_head" else lm

    def _run(self, model, batch):
        # `model` may be a DeepSpeed engine (its forward arms the ZeRO hooks): type checks on the module
        if isinstance(unwrap(model), PolicyWithValueHead):
            logits, values = model(batch["input_ids"], batch["attention_mask"])
            values = values[:, :-1]
        else:
            logits, values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, None
        logits = logits / self.temperature
        return token_logprobs(logits, batch["input_ids"]), values, ppo.entropy_from_logits(logits[:, :-1])

    @torch.no_grad()
    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        logprobs, values, entropy = self._run(model, batch)
        out = {"logprobs": logprobs, "entropy": entropy}
        if values is not None:
            out["values"] = values
        return out

    def loss(self, model, batch):
        logprobs, values, entropy = self._run(model, batch)
        c = self.cfg
        return ppo.ppo_loss(logprobs, batch["old_logprobs"], batch["advantages"], values, batch["old_values"],
                            batch["returns"], entropy, batch["response_mask"], c.clip_ratio, c.value_clip,
                            c.vf_coef, c.entropy_coef, c.clip_ratio_high, c.loss_agg, self.max_new_tokens,
                            batch.get("ref_logprobs"), c.kl_loss_coef, batch.get("is_weights"))


class ValueObjective:
    """The separate critic's loss: c_v · clipped value loss (its model returns values [B, L])."""

    name = "ppo_value"

    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg

    @torch.no_grad()
    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        return {"values": model(batch["input_ids"], batch["attention_mask"])[:, :-1]}

    def loss(self, model, batch):
        values = model(batch["input_ids"], batch["attention_mask"])[:, :-1]
        vf, stats = ppo.value_loss(values, batch["old_values"], batch["returns"], batch["response_mask"],
                                   self.cfg.value_clip)
        loss = self.cfg.vf_coef * vf
        stats.update(vf_loss=vf.detach(), loss=loss.detach())
        return loss, stats
