"""The probe that proves a sync landed: a fixed token sequence whose logprobs the engine must reproduce.

The learner computes the reference with a plain HF forward (`reference_logprobs(model, probe)`, a peft
model works as is: its forward equals the merged weights'); every engine computes the same sequence's
logprobs after loading; they must agree within `SyncConfig.tolerance`.
"""

from __future__ import annotations

from dataclasses import dataclass

PROBE_TEXT = ("Question: why does the small bird carry three blue stones at night? Answer: because the "
              "careful plan says 42 is good, and the teacher explains it slowly with care.")


@dataclass
class Probe:
    prompt_ids: list[int]
    completion_ids: list[int]


def make_probe(tokenizer, max_tokens: int = 48) -> Probe:
    """Half the fixed text as prompt, the rest as the scored completion (the same on every run)."""
    ids = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)[:max_tokens]
    half = max(1, len(ids) // 2)
    return Probe(ids[:half], ids[half:])


def reference_logprobs(model, probe: Probe) -> list[float]:
    """log p(completion token | everything before it) from one HF forward in fp32."""
    import torch

    ids = torch.tensor([probe.prompt_ids + probe.completion_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    start = len(probe.prompt_ids) - 1  # the logits at position i predict token i + 1
    return [logprobs[start + k, t].item() for k, t in enumerate(probe.completion_ids)]
