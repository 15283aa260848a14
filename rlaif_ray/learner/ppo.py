"""PPO for language models as pure tensor functions (Ziegler et al. 2019; Ouyang et al. 2022).

Shapes: a batch is B responses right-padded to T tokens; `mask[b, t] = 1` on real response tokens.
Token t of a response is an action; its state is the prompt plus response tokens < t. Rewards arrive
per token: the KL penalty to the frozen reference on every token and the sequence score on the last.
Nothing here knows about models, Ray or DeepSpeed.
"""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x·m) / sum(m) (over `dim`, or every element); 0 where the mask is empty."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + ε) with μ, σ² the mean and (unbiased) variance over masked entries only;
    padding stays 0. With `shift_mean=False` the mean is added back (scale only)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * (n / (n - 1).clamp(min=1))
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from sampled tokens (Schulman, "Approximating KL"):
    k1 = log π − log π_ref (unbiased, can be negative);
    k3 = (ρ − 1) − log ρ with ρ = π_ref / π (unbiased, always ≥ 0, lower variance)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator {estimator!r}: expected 'k1' or 'k3'")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = −β·KL_t on every response token, plus the sequence score on its last real token:
    r_t = −β·KL_t + 1[t = last]·score. The mask may start after a prompt (sequence coordinates)."""
    rewards = -kl_coef * kl * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * (mask > 0)).argmax(1)
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last] += scores * (mask.sum(1) > 0)
    return rewards


def scale_rewards(scores: torch.Tensor, scale: float = 1.0, clip: float | None = None) -> torch.Tensor:
    """score' = clip(scale · score, −c, c): the sequence score before it meets the KL penalty."""
    scores = scores * scale
    return scores.clamp(-clip, clip) if clip is not None else scores


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016), right to left over real tokens:
    δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t,   A_t = δ_t + γλ·m_{t+1}·A_{t+1},   R_t = A_t + V_t.
    V after the last token is 0 (the episode ends). Returns (advantages, returns), 0 on padding."""
    T = rewards.shape[1]
    values, rewards = values * mask, rewards * mask
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        m_next = mask[:, t + 1] if t + 1 < T else torch.zeros_like(mask[:, 0])
        delta = rewards[:, t] + gamma * next_value * m_next - values[:, t]
        next_adv = delta + gamma * lam * m_next * next_adv
        adv[:, t] = next_adv
        next_value = values[:, t]
    adv = adv * mask
    return adv, (adv + values) * mask


def group_advantages(scores: torch.Tensor, groups: torch.Tensor, method: str, eps: float = 1e-6) -> torch.Tensor:
    """Critic-free sequence advantages from the samples of one prompt (`groups[i]`: sample i's prompt):
    grpo     A_i = (r_i − mean_g) / (std_g + ε)          (Shao et al. 2024; std over the group, unbiased)
    dr_grpo  A_i = r_i − mean_g                           (Liu et al. 2025: no std normalisation)
    rloo     A_i = r_i − mean_{j≠i in g} r_j = n/(n−1)·(r_i − mean_g)   (Ahmadian et al. 2024)
    A group of one sample has no baseline: its advantage is 0."""
    adv = torch.zeros_like(scores)
    for g in groups.unique():
        idx = (groups == g).nonzero(as_tuple=True)[0]
        r, n = scores[idx], len(idx)
        if n < 2:
            continue
        centred = r - r.mean()
        if method == "grpo":
            adv[idx] = centred / (r.std() + eps)
        elif method == "dr_grpo":
            adv[idx] = centred
        elif method == "rloo":
            adv[idx] = centred * n / (n - 1)
        else:
            raise ValueError(f"group advantage {method!r}: expected grpo, dr_grpo or rloo")
    return adv


def aggregate(x: torch.Tensor, mask: torch.Tensor, how: str = "token_mean", max_tokens: int | None = None):
    """A per-token loss to a scalar: token_mean (every token of the batch alike), seq_mean (each
    sequence's token mean, then the mean over sequences), seq_sum (each sequence's token sum over the
    constant `max_tokens`, then the mean: no length normalisation, Dr. GRPO)."""
    if how == "token_mean":
        return masked_mean(x, mask)
    if how == "seq_mean":
        return masked_mean(x, mask, dim=1).mean()
    if how == "seq_sum":
        return ((x * mask).sum(1) / max_tokens).mean()
    raise ValueError(f"loss aggregation {how!r}: expected token_mean, seq_mean or seq_sum")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_ratio: float, clip_ratio_high: float | None = None,
                agg: str = "token_mean", max_tokens: int | None = None, weights: torch.Tensor | None = None):
    """Clipped surrogate: ρ_t = exp(log π − log π_old),
    L = agg_t w_t·max(−A_t·ρ_t, −A_t·clip(ρ_t, 1−ε, 1+ε_high)), ε_high = ε unless set (clip-higher, DAPO);
    w_t = 1, or the truncated importance weight of a stale sample (`tis_weights`).
    Returns (loss, stats) with the clip fraction and approx KL(π_old ‖ π) ≈ mean ½(log ρ)²."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    clipped = -advantages * torch.clamp(ratio, 1 - clip_ratio, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token if weights is None else weights * per_token, mask, agg, max_tokens)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
                 "ratio_mean": masked_mean(ratio, mask)}
    return loss, stats


def tis_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor, cap: float):
    """Truncated importance sampling for samples drawn by older weights (one-step-off rollouts):
    w_t = min(π_old(a_t) / π_rollout(a_t), C), no gradient. π_old is the learner's policy before this
    update, π_rollout the engine's that sampled a_t (Espeholt et al. 2018; Yao et al. 2025)."""
    return torch.exp(old_logprobs - rollout_logprobs).clamp(max=cap) * mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               value_clip: float):
    """Clipped value loss: V_clip = V_old + clip(V − V_old, −c, c),
    L = ½·mean_t max((V − R)², (V_clip − R)²). Returns (loss, stats) with the clip fraction and the
    mean squared error of the unclipped values."""
    v_clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    err, err_clipped = (values - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clip_frac": masked_mean((err_clipped > err).float(), mask),
                 "value_error": masked_mean(err, mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the softmax: H = logsumexp(z) − Σ softmax(z)·z."""
    probs = torch.softmax(logits.float(), -1)
    return torch.logsumexp(logits.float(), -1) - (probs * logits.float()).sum(-1)


def ppo_loss(logprobs, old_logprobs, advantages, values, old_values, returns, entropy, mask,
             clip_ratio: float, value_clip: float, vf_coef: float, entropy_coef: float,
             clip_ratio_high: float | None = None, agg: str = "token_mean", max_tokens: int | None = None,
             ref_logprobs: torch.Tensor | None = None, kl_loss_coef: float = 0.0,
             weights: torch.Tensor | None = None):
    """L = L_clip(π) + c_v·L_V − c_H·mean_t H_t + β_loss·mean_t KL_k3(π ‖ π_ref); `values` is None without
    a value head (separate critic, or a critic-free estimator); `weights` the per-token importance weights of
    stale samples (None: 1). Returns (loss, stats of every term)."""
    pg, stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_ratio, clip_ratio_high, agg, max_tokens,
                            weights)
    ent = masked_mean(entropy, mask)
    loss = pg - entropy_coef * ent
    if kl_loss_coef > 0:
        kl = masked_mean(kl_penalty(logprobs, ref_logprobs, "k3"), mask)
        loss = loss + kl_loss_coef * kl
        stats.update(kl_loss=kl.detach())
    if values is not None:
        vf, vstats = value_loss(values, old_values, returns, mask, value_clip)
        loss = loss + vf_coef * vf
        stats.update(vstats, vf_loss=vf.detach())
    stats.update(pg_loss=pg.detach(), entropy=ent.detach(), loss=loss.detach())
    return loss, stats


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, eq. 2): with e = clip(KL/KL_target − 1, −0.2, 0.2),
    β ← β·(1 + e·n/H) after n samples. Without a target the coefficient stays fixed."""

    def __init__(self, init_coef: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float, n_samples: int) -> float:
        if self.target is not None and math.isfinite(current_kl):
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_samples / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
