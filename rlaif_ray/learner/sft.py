"""Supervised fine-tuning: examples to token ids with a completion mask, optional packing, the loss.

    rows = encode_sft(records, tokenizer, max_length)      # [(ids, loss_mask, id)], keep-start truncated
    rows = pack(rows, max_length) if packing else rows     # several examples per row, best-fit decreasing
    batch = pad_sft([rows[i] for i in idx], pad_id)        # input_ids, attention_mask, loss_mask (+ position_ids)
    loss, stats = SFTObjective().loss(model, batch)        # mean NLL over the completion tokens

The loss covers completion tokens only (TRL's completion_only_loss): the completion of a prompt/completion
example, every assistant turn of a `messages` conversation. A packed row carries `position_ids` that restart
at 0 for each example and no padding mask, from which transformers builds a block-diagonal causal mask
(`masking_utils.find_packed_sequence_indices`): an example never attends to its neighbours.
"""

from __future__ import annotations

import torch

from .objectives import encode_prompt_response


def encode_messages(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation (the chat template) and a mask over its assistant turns; each turn's
    span is where the template of the conversation up to it extends the template of what precedes it."""
    def ids(msgs, **kw):
        return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"])

    full = ids(messages)
    mask = [0] * len(full)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(ids(messages[:k], add_generation_prompt=True)) if k else 0
        end = len(ids(messages[:k + 1]))
        mask[start:end] = [1] * (end - start)
    return full, mask


def encode_sft(records, tokenizer, max_length: int) -> list[tuple[list[int], list[int], str]]:
    """(ids, loss mask, id) per record, cut to `max_length` from the end (as TRL truncates)."""
    out = []
    for r in records:
        if r.messages is not None:
            if not tokenizer.chat_template:
                raise ValueError(f"sft record {r.id}: `messages` needs a tokenizer with a chat template")
            ids, mask = encode_messages(tokenizer, r.messages)
        else:
            ids, n = encode_prompt_response(tokenizer, r.prompt, r.completion)
            mask = [0] * n + [1] * (len(ids) - n)
        out.append((ids[:max_length], mask[:max_length], r.id))
    return out


def pack(rows: list[tuple], max_length: int) -> list[tuple]:
    """Best-fit decreasing: longest example first, each into the fullest row it still fits (a new row
    when none). A packed row is (ids, mask, ids of its examples joined by '+', the examples' lengths)."""
    bins: list[list] = []  # [free, ids, mask, ids of the examples, lengths]
    for ids, mask, rid in sorted(rows, key=lambda r: -len(r[0])):
        fits = [b for b in bins if b[0] >= len(ids)]
        b = min(fits, key=lambda b: b[0]) if fits else None
        if b is None:
            b = [max_length, [], [], [], []]
            bins.append(b)
        b[0] -= len(ids)
        b[1] += ids
        b[2] += mask
        b[3].append(rid)
        b[4].append(len(ids))
    return [(ids, mask, "+".join(names), lengths) for _, ids, mask, names, lengths in bins]


def pad_sft(rows: list[tuple], pad_id: int) -> dict:
    """Right-padded [B, L] batch; packed rows (a 4th element: example lengths) add `position_ids`."""
    width = max(len(r[0]) for r in rows)
    batch = {"input_ids": torch.tensor([r[0] + [pad_id] * (width - len(r[0])) for r in rows]),
             "attention_mask": torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]),
             "loss_mask": torch.tensor([r[1] + [0] * (width - len(r[1])) for r in rows]),
             "ids": [r[2] for r in rows]}
    if len(rows[0]) > 3:
        positions = []
        for r in rows:
            pos = [p for n in r[3] for p in range(n)]
            positions.append(pos + list(range(width - len(pos))))  # the padding: one more "example"
        batch["position_ids"] = torch.tensor(positions)
    return batch


def completion_nll(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed NLL of the completion tokens and their count."""
    if "position_ids" in batch:  # packed: no padding mask, so transformers masks per example
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets, mask = batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum(1), mask.sum(1)


class SFTObjective:
    """Next-token cross-entropy on completion tokens, averaged over the completion tokens of the batch."""

    name = "sft"

    def loss(self, model, batch):
        nll, tokens = completion_nll(model, batch)
        loss = nll.sum() / tokens.sum().clamp(min=1)
        return loss, {"loss": loss.detach(), "completion_tokens": tokens.sum()}

    @torch.no_grad()
    def forward(self, model, batch) -> dict:
        nll, tokens = completion_nll(model, batch)
        return {"nll": nll, "tokens": tokens}
