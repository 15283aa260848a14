"""Local judge: next-token P(A)/P(B) after the judge prompt, read from a real engine on the tiny model.
Its verdicts are random (an untrained model); what is checked is that the probabilities are real: they
equal a plain transformers forward on the same tokens, renormalised over A and B."""

import asyncio

import pytest
import torch

from rlaif_ray.config import JudgeConfig
from rlaif_ray.feedback import Task
from rlaif_ray.feedback.judge_local import LocalJudge

TASKS = [Task(f"p{i}", f"Question {i}: name a colour.", f"Blue, number {i}.", f"I like trains {i}.") for i in range(3)]


def _hf_p_first(model, ids, a_id, b_id) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    return torch.softmax(logits[[a_id, b_id]], -1)[0].item()


def _check(backend, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    judge = LocalJudge(JudgeConfig(kind="local", model=str(tiny_model_dir), local_backend=backend,
                                   local_max_model_len=512))

    async def go():
        v = await judge.judge_many(TASKS)
        s = await judge.score_many([("Question?", "Answer.")])
        return v, s

    verdicts, scores = asyncio.run(go())
    engine = judge.engine
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    a_id, b_id = engine.candidate_ids(["A", "B"])
    for task, v in zip(TASKS, verdicts, strict=True):
        assert v.ok and 0.0 < v.p_first < 1.0
        ids = engine.prepare([judge.pair_messages(task)], 1)[0][0]
        assert v.p_first == pytest.approx(_hf_p_first(model, ids, a_id, b_id), abs=1e-3)
    assert 1.0 <= scores[0].score <= 9.0
    asyncio.run(judge.close())


@pytest.mark.slow
def test_local_judge_transformers_backend(tiny_model_dir):
    _check("hf", tiny_model_dir)


@pytest.mark.slow
def test_local_judge_vllm_backend(tiny_model_dir):
    _check("vllm", tiny_model_dir)
