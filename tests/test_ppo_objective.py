"""PPO objective and critics on the tiny model: shapes, alignment with a plain forward, gradients."""

import pytest
import torch

from rlaif_ray.config.jobs import PPOConfig
from rlaif_ray.learner.critic import PolicyWithValueHead, SeparateCritic
from rlaif_ray.learner.ppo_objective import PPOObjective, ValueObjective
from rlaif_ray.rewards_toy import length_fraction, letter_fraction, target_word_fraction


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))


def _batch():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 10, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    resp = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.float32)  # prompt = 2 tokens
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


def test_forward_matches_plain_logprobs_and_value_head_starts_at_zero(lm):
    obj = PPOObjective(PPOConfig(critic="value_head"), temperature=0.5)
    model = obj.wrap_model(lm)
    assert isinstance(model, PolicyWithValueHead)
    batch = _batch()
    out = obj.forward(model, batch)
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits / 0.5
    expect = torch.log_softmax(logits, -1)[0, 1, 7]  # token at position 2 given positions ≤ 1
    assert out["logprobs"].shape == (2, 4) and out["logprobs"][0, 1].item() == pytest.approx(expect.item(), abs=1e-5)
    assert out["values"].shape == (2, 4) and out["values"].abs().max().item() == 0.0
    assert (out["entropy"] > 0).all()
    assert set(model.policy_state_dict()) == set(lm.state_dict())


def test_loss_at_old_policy_is_minus_mean_advantage_and_trains_the_value_head(lm):
    obj = PPOObjective(PPOConfig(critic="value_head", vf_coef=0.5, entropy_coef=0.0))
    model = obj.wrap_model(lm)
    batch = _batch()
    out = obj.forward(model, batch)
    adv = torch.randn(2, 4)
    batch.update(old_logprobs=out["logprobs"], old_values=out["values"], advantages=adv,
                 returns=torch.ones(2, 4))
    loss, stats = obj.loss(model, batch)
    m = batch["response_mask"]
    # ratio 1: pg = −mean(A); values 0 vs returns 1: vf = ½
    assert stats["pg_loss"].item() == pytest.approx(-(adv * m).sum().item() / m.sum().item(), abs=1e-5)
    assert stats["vf_loss"].item() == pytest.approx(0.5) and stats["clip_frac"].item() == 0.0
    loss.backward()
    assert model.value_head.summary.bias.grad.abs().item() > 0
    model.zero_grad()


def test_separate_critic_round_trip(tiny_model_dir, tmp_path):
    critic = SeparateCritic.from_pretrained(str(tiny_model_dir))
    obj = ValueObjective(PPOConfig(critic="separate"))
    batch = _batch()
    batch.update(old_values=torch.zeros(2, 4), returns=torch.full((2, 4), 2.0))
    loss, stats = obj.loss(critic, batch)
    loss.backward()
    torch.optim.SGD(critic.parameters(), lr=0.1).step()
    assert obj.forward(critic, batch)["values"].abs().max() > 0
    critic.save_pretrained(str(tmp_path), state_dict=critic.state_dict())
    again = SeparateCritic.from_pretrained(str(tmp_path))
    assert torch.allclose(again(batch["input_ids"], batch["attention_mask"]),
                          critic(batch["input_ids"], batch["attention_mask"]), atol=1e-6)


def test_toy_rewards():
    assert letter_fraction("p", "ab12") == 0.5 and letter_fraction("p", "") == 0.0
    assert target_word_fraction("p", "The cat the") == pytest.approx(2 / 3)
    assert length_fraction("p", "x" * 32) == 0.5


def test_prompt_schedule_is_a_function_of_the_step_and_covers_every_prompt():
    from rlaif_ray.learner.group import prompt_indices

    first_pass = [i for step in range(4) for i in prompt_indices(10, 5, step, seed=3)][:10]
    assert sorted(first_pass) == list(range(10))  # one pass visits each prompt once
    assert prompt_indices(10, 5, 7, seed=3) == prompt_indices(10, 5, 7, seed=3)
    assert prompt_indices(10, 5, 0, seed=3) != prompt_indices(10, 5, 0, seed=4)


def test_build_batch_masks_response_tokens_in_sequence_coordinates():
    from rlaif_ray.learner.ppo_learners import build_batch
    from rlaif_ray.rollout import Sample

    samples = [Sample([7, 8], "", [0.0, 0.0], "length", prompt_token_ids=[1, 2, 3]),
               Sample([9], "", [0.0], "stop", prompt_token_ids=[4])]
    b = build_batch(samples, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 7, 8], [4, 9, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]
