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
