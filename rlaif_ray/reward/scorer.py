"""RewardScorer: a Ray actor holding a sequence-classification reward model; batched, padded scoring.

Sequences are sorted by length before batching (less padding), right-padded, and the scores returned
in input order. The model reads the last non-pad token, as in training.
"""

from __future__ import annotations

from .format import format_for_rm


class RewardScorer:
    """score(prompts, responses) -> one float per pair."""

    def __init__(self, model_path: str, batch_size: int = 16, max_length: int = 512, dtype: str = "fp32",
                 num_threads: int = 1):
        import torch

        from ..models import load_reward_model, load_tokenizer

        torch.set_num_threads(max(1, num_threads))  # Ray sets OMP_NUM_THREADS=1 in actors
        self.torch = torch
        self.batch_size, self.max_length = batch_size, max_length
        self.tokenizer = load_tokenizer(model_path, padding_side="right")
        self.model = load_reward_model(model_path, dtype).eval()

    def score(self, prompts: list, responses: list) -> list[float]:
        torch = self.torch
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        seqs = [format_for_rm(self.tokenizer, p, r, self.max_length) for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        scores = [0.0] * len(seqs)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.tensor([seqs[i] + [pad] * (width - len(seqs[i])) for i in idx])
            mask = torch.tensor([[1] * len(seqs[i]) + [0] * (width - len(seqs[i])) for i in idx])
            with torch.no_grad():
                out = self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
            for i, s in zip(idx, out.tolist(), strict=True):
                scores[i] = s
        return scores
