"""RewardScorer against a direct forward of the same reward model, and the three reward sources."""

import math

import pytest
import torch

from rlaif_ray.config import JudgeConfig, RayConfig
from rlaif_ray.config.jobs import RewardConfig

PROMPTS = ["the cat finds", [{"role": "user", "content": "a robot explains"}], "Question 3: why?", "x " * 300]
RESPONSES = ["a red apple", "the long story slowly", "because 7 is good", "the end"]


def judge_score(prompt: str, response: str) -> float:
    """A pointwise 'judge' in [1, 10]; fails (None score) on responses mentioning 'fail'."""
    if "fail" in response:
        raise ValueError("cannot score this")
    return 1.0 + min(9.0, len(response) / 4)


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with a (random, saved) one-output score head: a reward model on disk."""
    from transformers import AutoModelForSequenceClassification

    from rlaif_ray.models import load_tokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tok = load_tokenizer(str(tiny_model_dir))
    model.config.pad_token_id = tok.pad_token_id
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def direct_scores(rm_dir, max_length):
    from transformers import AutoModelForSequenceClassification

    from rlaif_ray.learner.objectives import encode_prompt_response
    from rlaif_ray.models import load_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    tok = load_tokenizer(rm_dir)
    out = []
    for p, r in zip(PROMPTS, RESPONSES, strict=True):
        ids, _ = encode_prompt_response(tok, p, r)
        with torch.no_grad():  # one unpadded sequence: the score is read at its last token
            out.append(model(input_ids=torch.tensor([ids[:max_length]])).logits[0, 0].item())
    return out


def test_scorer_equals_a_direct_forward_with_padding_and_truncation(rm_dir):
    from rlaif_ray.reward import RewardScorer, format_for_rm

    scorer = RewardScorer(rm_dir, batch_size=3, max_length=64)
    got = scorer.score(PROMPTS, RESPONSES)
    want = direct_scores(rm_dir, 64)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-4
    assert len(format_for_rm(scorer.tokenizer, PROMPTS[3], RESPONSES[3], 64)) == 64  # truncated
    assert len(set(round(s, 6) for s in got)) == 4
    with pytest.raises(ValueError, match="4 prompts but 3 responses"):
        scorer.score(PROMPTS, RESPONSES[:3])


@pytest.mark.slow
def test_rm_and_function_and_judge_sources(ray_session, rm_dir):
    from rlaif_ray.reward import build_reward_source

    rm = build_reward_source(RewardConfig(source="rm", rm_path=rm_dir, batch_size=2, max_length=64))
    try:
        got = rm(PROMPTS, RESPONSES)
    finally:
        rm.close()
    assert max(abs(a - b) for a, b in zip(got, direct_scores(rm_dir, 64), strict=True)) <= 1e-4

    fn = build_reward_source(RewardConfig(source="function", function="rlaif_ray.rewards_toy:length_fraction"))
    assert fn(["p"], ["x" * 32]) == [0.5]
    with pytest.raises(ValueError, match="cannot load"):
        build_reward_source(RewardConfig(source="function", function="rlaif_ray.rewards_toy:nope"))

    judge = build_reward_source(RewardConfig(source="judge", judge=JudgeConfig(
        kind="function", score_function="tests.test_reward:judge_score")), RayConfig())
    try:
        scores = judge(["p", "p", "p"], ["abcd", "x" * 80, "please fail"])
    finally:
        judge.close()
    assert scores[:2] == [pytest.approx(1 / 9), 1.0]  # (s - 1) / 9
    assert math.isnan(scores[2])  # a failed judge call is missing, never a default


def test_judge_pairwise_compares_within_groups_masks_failures_and_never_pays_twice(ray_session, fake, tmp_path):
    from rlaif_ray.reward import build_reward_source
    from rlaif_ray.testing.fake_api import p_first

    # Every call that shows a POISON answer gets no verdict (re-asked, then stored as failed).
    fake.faults = [{"kind": "no_verdict", "when": "POISON", "times": 99}]
    judge = JudgeConfig(kind="anthropic", model="fake-judge", base_url=fake.base_url)
    cfg = RewardConfig(source="judge_pairwise", judge=judge)
    prompts = ["q0"] * 4 + ["q1"] * 2
    responses = ["alpha", "POISON beta", "gamma", "alpha", "POISON x", "POISON y"]
    groups = [0, 0, 0, 0, 1, 1]
    reward = build_reward_source(cfg, RayConfig(), str(tmp_path))
    try:
        scores = reward(prompts, responses, groups)
    finally:
        reward.close()

    def win(a, b):  # both orders averaged, as the pool labels; the fake answers the argmax letter
        return (round(p_first(a, b)) + 1 - round(p_first(b, a))) / 2

    # Group 0: "alpha" twice (a tie at 0.5, no call) and "gamma"; POISON beta's comparisons all failed.
    assert math.isnan(scores[1]) and math.isnan(scores[4]) and math.isnan(scores[5])  # masked, never 0
    assert scores[0] == pytest.approx((0.5 + win("alpha", "gamma")) / 2)
    assert scores[2] == pytest.approx(1 - win("alpha", "gamma"))
    billed = fake.stats()["billable"]
    assert billed > 0 and fake.stats()["requests"]["fault-no_verdict"] > 0

    # A resumed run (a new pool on the same run_dir) reads the stored comparisons: it pays only for the
    # failed ones (POISON beta vs alpha and vs gamma, x vs y; both orders), which now succeed, and a third
    # pass pays for nothing.
    fake.faults = []
    again = build_reward_source(cfg, RayConfig(), str(tmp_path))
    try:
        rescored = again(prompts, responses, groups)
        assert fake.stats()["billable"] - billed == 3 * 2
        assert again(prompts, responses, groups) == rescored and fake.stats()["billable"] - billed == 3 * 2
    finally:
        again.close()
    assert all(math.isfinite(x) for x in rescored) and rescored[4] + rescored[5] == pytest.approx(1.0)
    assert fake.stats()["repaid_after_delivery"] == 0  # only the verdict-less answers were bought again
    # The Bradley-Terry fit of the same stored comparisons pays for nothing and orders the samples alike.
    from dataclasses import replace

    bt = build_reward_source(replace(cfg, pairwise_reward="bradley_terry"), RayConfig(), str(tmp_path))
    try:
        strengths = bt(prompts, responses, groups)
    finally:
        bt.close()
    assert fake.stats()["billable"] - billed == 3 * 2
    assert all(strengths[k] > strengths[m] for k in range(4) for m in range(4) if rescored[k] > rescored[m] + 1e-9)
    assert sum(strengths[:4]) == pytest.approx(0, abs=1e-9) and strengths[4] == pytest.approx(-strengths[5])


def test_bradley_terry_strengths_order_like_the_outcomes_and_stay_finite():
    from rlaif_ray.reward.sources import bradley_terry

    # sample 0 beats everyone surely, 1 beats 2 and 3 at 0.8, 2 and 3 tie; 4 met nobody
    outcomes = [(0, 1, 1.0), (0, 2, 1.0), (0, 3, 1.0), (1, 2, 0.8), (1, 3, 0.8), (2, 3, 0.5)]
    s = bradley_terry(5, outcomes)
    assert s[0] > s[1] > s[2] and s[2] == pytest.approx(s[3]) and math.isnan(s[4])
    assert all(math.isfinite(v) for v in s[:4]) and sum(s[:4]) == pytest.approx(0.0, abs=1e-9)
    # the optimum: every strength's gradient is zero (l2·s_i = Σ (p − σ(s_i − s_j)) over its comparisons)
    grad = [0.1 * v for v in s[:4]]
    for i, j, p in outcomes:
        q = 1 / (1 + math.exp(-(s[i] - s[j])))
        grad[i] += q - p
        grad[j] += p - q
    assert max(abs(g) for g in grad) < 1e-9
    # two groups never compared with each other are centred separately
    two = bradley_terry(4, [(0, 1, 0.9), (2, 3, 0.6)])
    assert two[0] == pytest.approx(-two[1]) and two[2] == pytest.approx(-two[3]) and two[0] > two[2] > 0
