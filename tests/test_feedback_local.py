"""Local judge: next-token P(A)/P(B) after the judge prompt, read from a real engine on the tiny model.
Its verdicts are random (an untrained model); what is checked is that the probabilities are real: they
equal a plain transformers forward on the same tokens, renormalised over A and B."""

import asyncio
import math

import pytest
import torch

from rlaif_ray.config import JudgeConfig
from rlaif_ray.feedback import Task
from rlaif_ray.feedback.judge_local import LocalJudge
from rlaif_ray.feedback.types import WriteTask

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
        w = await judge.write_many([WriteTask(f"w{i}", "You revise answers.", f"Revise: answer {i}.", "revision",
                                              max_tokens=4 + 2 * (i % 2)) for i in range(3)])
        return v, s, w

    verdicts, scores, writings = asyncio.run(go())
    engine = judge.engine
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    a_id, b_id = engine.candidate_ids(["A", "B"])
    for task, v in zip(TASKS, verdicts, strict=True):
        assert v.ok and 0.0 < v.p_first < 1.0
        ids = engine.prepare([judge.pair_messages(task)], 1)[0][0]
        assert v.p_first == pytest.approx(_hf_p_first(model, ids, a_id, b_id), abs=1e-3)
    assert 1.0 <= scores[0].score <= 9.0
    for i, w in enumerate(writings):  # free text sampled within each call's own budget
        assert w.ok or w.error == "empty answer"
        assert len(engine.tokenizer(w.raw, add_special_tokens=False).input_ids) <= 4 + 2 * (i % 2) + 1
    asyncio.run(judge.close())


@pytest.mark.slow
def test_local_judge_transformers_backend(tiny_model_dir):
    _check("hf", tiny_model_dir)


@pytest.mark.slow
def test_local_judge_vllm_backend(tiny_model_dir):
    _check("vllm", tiny_model_dir)


POINTWISE = [Task("w0", "How was your weekend?", "It was lovely, thank you so much for asking!",
                  "None of your business. Go away."),
             Task("w1", "Can you help me with my homework?", "I hate homework and I hate you.",
                  "Of course, I would be glad to help you!")]


@pytest.mark.slow
def test_pointwise_yes_no_labels_equal_an_hf_forward():
    """protocol=pointwise scale=yes_no on the local vLLM judge (SmolLM2, the demo's judge; its Yes and No are
    single tokens): each score is logit(Yes) - logit(No) of a plain transformers forward on the same tokens,
    and P(first > second) is the sigmoid of their difference."""
    from transformers import AutoModelForCausalLM

    from rlaif_ray.feedback import make_judge

    judge = make_judge(JudgeConfig(kind="local", model="smollm2", protocol="pointwise", scale="yes_no",
                                   rubric="friendly", local_max_model_len=1024))
    verdicts = asyncio.run(judge.judge_many(POINTWISE))
    inner = judge.inner
    model = AutoModelForCausalLM.from_pretrained(inner.model_path(), dtype=torch.float32).eval()
    yes, no = inner.engine.candidate_ids(["Yes", "No"])
    for task, v in zip(POINTWISE, verdicts, strict=True):
        want = []
        for response in (task.first, task.second):
            ids = inner.engine.prepare([inner.score_messages(task.prompt, response)], 1)[0][0]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].float()
            want.append((logits[yes] - logits[no]).item())
        assert v.ok and v.scores == pytest.approx(want, abs=1e-3)
        assert v.p_first == pytest.approx(1 / (1 + math.exp(want[1] - want[0])), abs=1e-3)
    asyncio.run(judge.close())


@pytest.mark.slow
def test_pointwise_contrast_labels_equal_an_hf_forward():
    """scale=contrast on the local vLLM judge (SmolLM2, the demo's judge): each score is the mean over the
    response's tokens of log p(token | request + warm instruction) - log p(token | request + rude one), from a
    plain transformers forward on the same tokens; P(first > second) is the sigmoid of the difference over T."""
    from transformers import AutoModelForCausalLM

    from rlaif_ray.feedback import make_judge
    from rlaif_ray.feedback.rubrics import CONTRASTS

    cfg = JudgeConfig(kind="local", model="smollm2", protocol="pointwise", scale="contrast", rubric="friendly",
                      pointwise_temperature=0.2, local_max_model_len=1024)
    judge = make_judge(cfg)
    verdicts = asyncio.run(judge.judge_many(POINTWISE))
    inner = judge.inner
    model = AutoModelForCausalLM.from_pretrained(inner.model_path(), dtype=torch.float32).eval()
    for task, v in zip(POINTWISE, verdicts, strict=True):
        want = []
        for response in (task.first, task.second):
            ids = inner.engine.tokenizer.encode(response, add_special_tokens=False)
            means = []
            for instruction in CONTRASTS["friendly"]:
                head = inner.engine.encode([{"role": "user", "content": f"{task.prompt} {instruction}"}])
                with torch.no_grad():
                    lp = torch.log_softmax(model(torch.tensor([head + ids])).logits[0].float(), -1)
                means.append(sum(lp[len(head) - 1 + k, t].item() for k, t in enumerate(ids)) / len(ids))
            want.append(means[0] - means[1])
        assert v.ok and v.scores == pytest.approx(want, abs=1e-3)
        assert v.p_first == pytest.approx(1 / (1 + math.exp((want[1] - want[0]) / 0.2)), abs=1e-3)
    # The warm answers read as warmer than the hostile ones (the model can read tone this way).
    assert verdicts[0].p_first > 0.5 > verdicts[1].p_first
    asyncio.run(judge.close())
