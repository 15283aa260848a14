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
