"""How a (prompt, response) becomes reward-model input: the same ids `train-rm` trains on.

The learner's `encode_prompt_response` is the single definition (chat template: prompt as user turn(s),
response as the assistant turn; without a template: prompt + response + eos); scoring keeps the start
and truncates the end at `max_length`, as `collate_preferences` does in training.
"""

from __future__ import annotations


def format_for_rm(tokenizer, prompt, response, max_length: int | None = None) -> list[int]:
    """Token ids the reward model reads for `response` to `prompt` (plain text or message lists)."""
    from ..learner.objectives import encode_prompt_response

    ids, _ = encode_prompt_response(tokenizer, prompt, response)
    return ids[:max_length] if max_length else ids
