"""Reward-model and DPO-family losses as pure tensor functions, plus sequence log-prob helpers.

Notation: r_a, r_b are reward-model scores of responses a and b to one prompt; p = P(a ≻ b) the
(possibly soft) label. For DPO, log π(y|x) is the summed log-prob of the response tokens under the
policy, log π_ref under the frozen reference, and the implicit reward margin is
    h = [log π(y_c|x) − log π_ref(y_c|x)] − [log π(y_r|x) − log π_ref(y_r|x)].
Every loss returns the batch mean; nothing here knows about models, Ray or DeepSpeed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_a: torch.Tensor, r_b: torch.Tensor, p: torch.Tensor | float = 1.0,
                       margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Soft-label Bradley–Terry with an optional margin m (Touvron et al. 2023):
        L = −[ p·log σ(r_a − r_b − m) + (1 − p)·log σ(r_b − r_a − m) ]
    p = 1 is the usual "a is chosen" loss; p = 0.5 pulls the two scores together."""
    d = r_a - r_b
    return -(p * F.logsigmoid(d - margin) + (1 - p) * F.logsigmoid(-d - margin)).mean()


def dpo_sigmoid_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) with conservative label smoothing ε (Mitchell 2023):
        L = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)
    ε = 0 is plain sigmoid DPO."""
    return -((1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)).mean()


def dpo_soft_label_loss(h: torch.Tensor, beta: float, p: torch.Tensor) -> torch.Tensor:
    """Soft-label DPO: the judge's P(chosen ≻ rejected) = p is the Bradley–Terry target,
        L = −p·log σ(β·h) − (1 − p)·log σ(−β·h)
    (conservative DPO with a per-example ε = 1 − p)."""
    return -(p * F.logsigmoid(beta * h) + (1 - p) * F.logsigmoid(-beta * h)).mean()


def ipo_loss(h_per_token: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023): L = (h − 1/(2β))², with h built from per-token *average* log-probs
    (the length normalisation the IPO authors use, as TRL does)."""
    return ((h_per_token - 1 / (2 * beta)) ** 2).mean()


def dpo_loss(kind: str, policy_c: torch.Tensor, policy_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float, label_smoothing: float = 0.0, p: torch.Tensor | None = None,
             len_c: torch.Tensor | None = None, len_r: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Dispatch by `kind` in {"sigmoid", "conservative", "ipo"}; a soft label `p` turns sigmoid /
    conservative into soft-label DPO. Inputs are summed response log-probs per example; IPO also
    needs the response lengths. Returns (loss, stats) with the implicit rewards β·(log π − log π_ref)."""
    chosen_reward, rejected_reward = policy_c - ref_c, policy_r - ref_r
    h = chosen_reward - rejected_reward
    if kind == "ipo":
        h_tok = chosen_reward / len_c.clamp(min=1) - rejected_reward / len_r.clamp(min=1)
        loss = ipo_loss(h_tok, beta)
    elif p is not None:
        loss = dpo_soft_label_loss(h, beta, p)
    elif kind in ("sigmoid", "conservative"):
        loss = dpo_sigmoid_loss(h, beta, label_smoothing if kind == "conservative" else 0.0)
    else:
        raise ValueError(f"DPO loss {kind!r}: expected 'sigmoid', 'conservative' or 'ipo'")
    stats = {"loss": loss.detach(), "reward_chosen": (beta * chosen_reward).mean().detach(),
             "reward_rejected": (beta * rejected_reward).mean().detach(),
             "reward_margin": (beta * h).mean().detach(), "reward_accuracy": (h > 0).float().mean()}
    return loss, stats


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[t+1] | ≤ t) for t < L−1, in fp32: [B, L, V] logits, [B, L] labels -> [B, L−1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, labels[:, 1:, None]).squeeze(-1)


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(x_t | x_<t) over the tokens where `loss_mask` [B, L] is 1 (the response)."""
    mask = loss_mask[:, 1:].to(torch.float32)
    return (token_logprobs(logits, input_ids) * mask).sum(-1)
