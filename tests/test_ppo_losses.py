"""PPO pure functions vs values computed by hand (in the comments)."""

import math

import pytest
import torch

from rlaif_ray.learner import ppo


def test_gae_three_steps_and_padding():
    # gamma 0.9, lam 0.8 (γλ = 0.72). Row 0: r = [0, 0, 1], V = [0.5, 0.6, 0.7]
    #   δ2 = 1 − 0.7 = 0.3                 A2 = 0.3
    #   δ1 = 0.9·0.7 − 0.6 = 0.03          A1 = 0.03 + 0.72·0.3 = 0.246
    #   δ0 = 0.9·0.6 − 0.5 = 0.04          A0 = 0.04 + 0.72·0.246 = 0.21712
    # Row 1 (last token is padding; its reward/value must not leak): r = [0, 2], V = [0.1, 0.2]
    #   δ1 = 2 − 0.2 = 1.8                 A1 = 1.8
    #   δ0 = 0.9·0.2 − 0.1 = 0.08          A0 = 0.08 + 0.72·1.8 = 1.376
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(adv, torch.tensor([[0.21712, 0.246, 0.3], [1.376, 1.8, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.71712, 0.846, 1.0], [1.476, 2.0, 0.0]]), atol=1e-6)


def test_gae_lambda_one_is_discounted_return_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, -1.0, 2.0]])
    adv, ret = ppo.gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=1.0)
    # R = [1 + .5·2 + .25·3, 2 + .5·3, 3] = [2.75, 3.5, 3]
    assert torch.allclose(ret, torch.tensor([[2.75, 3.5, 3.0]]))
    assert torch.allclose(adv, ret - values)


@pytest.mark.parametrize("ratio, adv, loss, clipped", [
    (1.5, 2.0, -2.4, 1.0),   # above 1+ε, A > 0: gain capped at (1.2)·2
    (1.5, -2.0, 3.0, 0.0),   # above 1+ε, A < 0: the pessimistic unclipped term 1.5·2 wins
    (0.5, 2.0, -1.0, 0.0),   # below 1−ε, A > 0: unclipped 0.5·2
    (0.5, -2.0, 1.6, 1.0),   # below 1−ε, A < 0: clipped at 0.8·2
    (1.1, 2.0, -2.2, 0.0),   # inside the clip range: plain ratio·A
])
def test_policy_loss_clipping(ratio, adv, loss, clipped):
    old = torch.tensor([[-1.0]])
    new = (old + math.log(ratio)).requires_grad_(True)
    out, stats = ppo.policy_loss(new, old, torch.tensor([[adv]]), torch.ones(1, 1), clip_ratio=0.2)
    assert out.item() == pytest.approx(loss, abs=1e-6)
    assert stats["clip_frac"].item() == clipped
    out.backward()
    # a clipped term has no gradient; an unclipped one has d(−A·ρ)/d logπ = −A·ρ
    assert new.grad.item() == pytest.approx(0.0 if clipped else -adv * ratio, abs=1e-6)


def test_policy_loss_ignores_padding():
    old = torch.zeros(1, 2)
    new = torch.tensor([[0.0, 5.0]])
    loss, stats = ppo.policy_loss(new, old, torch.tensor([[1.0, 100.0]]), torch.tensor([[1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx(-1.0)
    assert stats["clip_frac"].item() == 0.0


def test_value_loss_clipped_and_unclipped():
    # V = 1.5, V_old = 1.0, R = 2.0, c = 0.2: V_clip = 1.2; (V−R)² = 0.25, (V_clip−R)² = 0.64 → ½·0.64
    loss, stats = ppo.value_loss(torch.tensor([[1.5]]), torch.tensor([[1.0]]), torch.tensor([[2.0]]),
                                 torch.ones(1, 1), value_clip=0.2)
    assert loss.item() == pytest.approx(0.32)
    assert stats["vf_clip_frac"].item() == 1.0 and stats["value_error"].item() == pytest.approx(0.25)
    # V moved towards R within the clip: plain ½(V−R)² = ½·0.01
    loss, stats = ppo.value_loss(torch.tensor([[1.1]]), torch.tensor([[1.0]]), torch.tensor([[1.2]]),
                                 torch.ones(1, 1), value_clip=0.2)
    assert loss.item() == pytest.approx(0.005) and stats["vf_clip_frac"].item() == 0.0


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])
    assert torch.allclose(ppo.kl_penalty(lp, ref, "k1"), torch.tensor([1.0, 0.0]))
    # k3 with log ρ = log π_ref − log π = −1: (e^−1 − 1) + 1 = e^−1
    assert torch.allclose(ppo.kl_penalty(lp, ref, "k3"), torch.tensor([math.exp(-1), 0.0]))
    assert (ppo.kl_penalty(ref, lp, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k2"):
        ppo.kl_penalty(lp, ref, "k2")


def test_token_rewards_put_score_on_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = ppo.token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1, 0.85], [-0.25, 1.75, 0.0]]))
    # response after a 1-token prompt (sequence coordinates)
    r = ppo.token_rewards(torch.tensor([1.0]), torch.zeros(1, 4), torch.tensor([[0.0, 1.0, 1.0, 0.0]]), 0.5)
    assert r.tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_whiten_and_mean_use_only_masked_entries():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert ppo.masked_mean(x, mask).item() == pytest.approx(2.0)
    # mean 2, unbiased variance 1
    assert torch.allclose(ppo.masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(ppo.masked_whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]),
                          atol=1e-6)


def test_entropy_and_reward_scaling():
    assert ppo.entropy_from_logits(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    assert ppo.entropy_from_logits(torch.tensor([[0.0, -1e4]])).item() == pytest.approx(0.0, abs=1e-6)
    assert ppo.scale_rewards(torch.tensor([1.0, -4.0]), 0.5, clip=1.0).tolist() == [0.5, -1.0]


def test_adaptive_kl_controller():
    # β = 0.1, target 6, horizon 10000, 256 samples: e = clip(KL/6 − 1, ±0.2)
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(9.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))   # e = 0.5 → 0.2
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(3.0, 256) == pytest.approx(0.1 * (1 - 0.2 * 256 / 10000))   # e = −0.5 → −0.2
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(6.6, 256) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10000))   # e = 0.1
    fixed = ppo.AdaptiveKLController(0.1, target=None, horizon=10000)
    assert fixed.update(100.0, 256) == 0.1
    ctl.load_state_dict({"value": 0.3})
    assert ctl.state_dict() == {"value": 0.3}


def test_ppo_loss_combines_terms():
    mask = torch.ones(1, 2)
    z = torch.zeros(1, 2)
    loss, stats = ppo.ppo_loss(z, z, torch.ones(1, 2), torch.tensor([[1.0, 1.0]]), z,
                               torch.tensor([[2.0, 2.0]]), torch.full((1, 2), 0.5), mask,
                               clip_ratio=0.2, value_clip=10.0, vf_coef=0.1, entropy_coef=0.01)
    # pg = −1, vf = ½·1 = 0.5, entropy 0.5: −1 + 0.1·0.5 − 0.01·0.5
    assert loss.item() == pytest.approx(-1 + 0.05 - 0.005)
    assert {"pg_loss", "vf_loss", "entropy", "clip_frac", "approx_kl", "value_error"} <= set(stats)


def test_group_advantages_by_hand():
    scores = torch.tensor([1.0, 0.0, 2.0, 5.0, 5.0, 3.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])  # the last prompt kept one sample: no baseline
    std0 = torch.tensor([1.0, 0.0, 2.0]).std()  # unbiased, as GRPO
    grpo = ppo.group_advantages(scores, groups, "grpo")
    assert torch.allclose(grpo[:3], torch.tensor([0.0, -1.0, 1.0]) / (std0 + 1e-6))
    assert torch.equal(grpo[3:], torch.zeros(3))  # equal rewards: nothing to learn; alone: nothing either
    assert torch.allclose(ppo.group_advantages(scores, groups, "dr_grpo")[:3], torch.tensor([0.0, -1.0, 1.0]))
    # RLOO: each sample against the mean of the others in its group
    assert torch.allclose(ppo.group_advantages(scores, groups, "rloo")[:3], torch.tensor([1 - 1.0, 0 - 1.5, 2 - 0.5]))
    with pytest.raises(ValueError, match="expected grpo"):
        ppo.group_advantages(scores, groups, "ppo")


def test_clip_higher_and_loss_aggregation():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    adv = torch.ones(2, 4)
    old = torch.zeros(2, 4)
    new = torch.full((2, 4), math.log(1.25))  # ratio 1.25: clipped at 1.2, kept under clip-higher 0.28
    sym, _ = ppo.policy_loss(new, old, adv, mask, 0.2)
    high, _ = ppo.policy_loss(new, old, adv, mask, 0.2, clip_ratio_high=0.28)
    assert sym.item() == pytest.approx(-1.2) and high.item() == pytest.approx(-1.25)
    x = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    assert ppo.aggregate(x, mask).item() == pytest.approx((1 + 2 + 3 + 4) / 4)            # every token alike
    assert ppo.aggregate(x, mask, "seq_mean").item() == pytest.approx((2.0 + 4.0) / 2)     # every sequence alike
    assert ppo.aggregate(x, mask, "seq_sum", max_tokens=4).item() == pytest.approx((6 / 4 + 4 / 4) / 2)


def test_kl_loss_term_pulls_towards_the_reference():
    mask = torch.ones(1, 3)
    ref = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    logp = torch.log(torch.tensor([[0.9, 0.9, 0.9]])).requires_grad_()
    zeros = torch.zeros(1, 3)
    loss, stats = ppo.ppo_loss(logp, logp.detach(), zeros, None, None, None, zeros, mask, 0.2, 0.2, 0.0, 0.0,
                             ref_logprobs=ref, kl_loss_coef=0.5)
    k3 = (0.5 / 0.9 - 1) - math.log(0.5 / 0.9)
    assert stats["kl_loss"].item() == pytest.approx(k3, rel=1e-5) and loss.item() == pytest.approx(0.5 * k3, rel=1e-5)
    loss.backward()
    assert (logp.grad > 0).all()  # descending lowers log pi where pi > pi_ref


def test_truncated_importance_weights_scale_each_tokens_policy_loss():
    # π_old / π_rollout = e^0.5 ≈ 1.6487 (kept), e^1.5 ≈ 4.48 (capped at 2), e^-1 ≈ 0.3679; padding 0
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    rollout = torch.tensor([[-0.5, -1.5, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = ppo.tis_weights(old, rollout, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[math.exp(0.5), 2.0, math.exp(-1.0), 0.0]]), atol=1e-6)
    # at π = π_old the ratio is 1: the per-token loss is −A·w, token mean = −(1·1.6487 + 2·2 + 3·0.3679)/3
    adv = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    loss, _ = ppo.policy_loss(old, old, adv, mask, 0.2, weights=w)
    assert loss.item() == pytest.approx(-(math.exp(0.5) + 4.0 + 3 * math.exp(-1.0)) / 3, rel=1e-6)
    plain, _ = ppo.policy_loss(old, old, adv, mask, 0.2)
    same, _ = ppo.policy_loss(old, old, adv, mask, 0.2, weights=mask.clone())
    assert same.item() == pytest.approx(plain.item()) == pytest.approx(-2.0)
