"""Objectives a learner rank runs, and the collation of preference records into their batches.

An objective is a small picklable object (the LearnerGroup ships it to every rank):
    name: str
    loss(model, batch) -> (loss tensor, {stat: scalar tensor})   # with grad, inside train_step
    forward(model, batch) -> {output: tensor with rows on dim 0}  # no grad
In `loss`, `model` is the DeepSpeed engine: call it like the module (its forward arms ZeRO's gradient
hooks); `unwrap(model)` gives the module for isinstance checks and attributes.

Preference batch (RM and DPO), built by `collate_preferences`, rows on dim 0:
    input_ids, attention_mask, loss_mask   [B, 2, L]  slot 0 = chosen / response a, slot 1 = rejected / b
    p                                      [B]        P(slot 0 ≻ slot 1) (1.0 for hard labels)
    ref_logps                              [B, 2]     DPO only: reference log-probs, precomputed once
    ids                                    list[str]  record ids (named in NaN errors)
Sequences are right-padded; `loss_mask` marks the response tokens.
"""

from __future__ import annotations

import torch

from . import losses


def unwrap(model):
    """The module inside a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def _messages(value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def encode_prompt_response(tokenizer, prompt, response) -> tuple[list[int], int]:
    """Token ids of prompt + response and the prompt's length. With a chat template: the prompt as
    user turn(s), the response as assistant turn (the same ids TRL's DPOTrainer builds from
    conversational data); without: prompt text + response text + eos."""
    if tokenizer.chat_template:
        def ids(messages, **kw):
            return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])
        prompt_msgs = _messages(prompt, "user")
        prompt_ids = ids(prompt_msgs, add_generation_prompt=True)
        full = ids(prompt_msgs + _messages(response, "assistant"))
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + response + tokenizer.eos_token)["input_ids"]
    n = 0  # the completion starts where the two tokenizations diverge
    while n < min(len(prompt_ids), len(full)) and prompt_ids[n] == full[n]:
        n += 1
    return full, n


def encode_preferences(records, tokenizer, max_length: int) -> list[tuple]:
    """Tokenize once per dataset: per record (ids, loss mask) of chosen and of rejected, keep-start
    truncated to max_length (as TRL does)."""
    out = []
    for r in records:
        pair = []
        for response in (r.chosen, r.rejected):
            ids, n = encode_prompt_response(tokenizer, r.prompt, response)
            pair.append((ids[:max_length], ([0] * n + [1] * (len(ids) - n))[:max_length]))
        out.append((pair[0], pair[1], float(r.p_chosen), r.id))
    return out


def pad_preferences(encoded: list[tuple], pad_id: int) -> dict:
    """Encoded records -> the [B, 2, L] preference batch (right padding)."""
    seqs = [seq for rec in encoded for seq in rec[:2]]
    width = max(len(ids) for ids, _ in seqs)

    def tensor(rows):
        return torch.tensor(rows).view(len(encoded), 2, width)
    return {"input_ids": tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in seqs]),
            "attention_mask": tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in seqs]),
            "loss_mask": tensor([m + [0] * (width - len(m)) for _, m in seqs]),
            "p": torch.tensor([rec[2] for rec in encoded]), "ids": [rec[3] for rec in encoded]}


def collate_preferences(records, tokenizer, max_length: int) -> dict:
    """PreferenceRecords -> the [B, 2, L] preference batch."""
    return pad_preferences(encode_preferences(records, tokenizer, max_length), tokenizer.pad_token_id)


def _pairs_flat(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, 2, L] -> [2B, L] as [all slot 0; all slot 1], columns of padding only dropped."""
    width = int(batch["attention_mask"].sum(-1).max())

    def flat(t):
        return torch.cat([t[:, 0, :width], t[:, 1, :width]])
    return flat(batch["input_ids"]), flat(batch["attention_mask"]), flat(batch["loss_mask"])


class RMObjective:
    """Bradley–Terry reward model on a sequence-classification model (one score per sequence)."""

    name = "rm"

    def __init__(self, margin: float = 0.0, soft_labels: bool = True):
        self.margin, self.soft_labels = margin, soft_labels

    def _scores(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attn, _ = _pairs_flat(batch)
        scores = model(input_ids=ids, attention_mask=attn).logits.squeeze(-1).float()
        return scores.chunk(2)

    def loss(self, model, batch):
        r_a, r_b = self._scores(model, batch)
        p = batch["p"] if self.soft_labels else (batch["p"] >= 0.5).float()
        loss = losses.bradley_terry_loss(r_a, r_b, p, self.margin)
        return loss, {"loss": loss.detach(), "accuracy": _agreement(r_a, r_b, batch["p"]),
                      "reward_mean": torch.cat([r_a, r_b]).mean().detach(), "reward_gap": (r_a - r_b).mean().detach()}

    def forward(self, model, batch) -> dict:
        r_a, r_b = self._scores(model, batch)
        return {"reward_a": r_a, "reward_b": r_b}


def _agreement(r_a, r_b, p) -> torch.Tensor:
    """Fraction of pairs (label ≠ 0.5) where the score order agrees with the label."""
    decided = p != 0.5
    agree = ((r_a > r_b) == (p > 0.5)) & decided
    return agree.float().sum() / decided.float().sum().clamp(min=1)


def rm_accuracy(out: dict, p: torch.Tensor) -> float:
    return float(_agreement(out["reward_a"], out["reward_b"], p))


class DPOObjective:
    """DPO family on a causal LM; `forward` gives the summed response log-probs (the reference pass)."""

    name = "dpo"

    def __init__(self, beta: float = 0.1, loss: str = "sigmoid", label_smoothing: float = 0.0,
                 soft_labels: bool = False):
        self.beta, self.kind, self.eps, self.soft = beta, loss, label_smoothing, soft_labels

    def _logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attn, mask = _pairs_flat(batch)
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        return losses.sequence_logprobs(logits, ids, mask), mask[:, 1:].sum(-1)

    def loss(self, model, batch):
        logps, lengths = self._logps(model, batch)
        pc, pr = logps.chunk(2)
        lc, lr = lengths.chunk(2)
        ref = batch["ref_logps"]
        loss, stats = losses.dpo_loss(self.kind, pc, pr, ref[:, 0], ref[:, 1], self.beta, self.eps,
                                      batch["p"] if self.soft else None, lc, lr)
        stats["logps_chosen"] = pc.mean().detach()
        return loss, stats

    def forward(self, model, batch) -> dict:
        logps, _ = self._logps(model, batch)
        return {"logps": torch.stack(logps.chunk(2), dim=1)}  # [B, 2]
