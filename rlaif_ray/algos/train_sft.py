"""train-sft: supervised fine-tuning, the first stage of an SFT -> reward model -> PPO/DPO pipeline.

Data in TRL's formats ({prompt, completion}, text or messages, or conversational {messages}); the loss is
on completion tokens only (every assistant turn of a conversation). Split by record id into train and
validation; with `packing`, several examples share a row of `learner.max_length` (best-fit decreasing,
attention within each example). Epochs of seeded batches through the LearnerGroup (ZeRO 0-3, LoRA),
the validation loss (completion-token mean) after every epoch, checkpoints, `--resume` taking the same
batches as an uninterrupted run, and the model exported to <run_dir>/final (HF safetensors, LoRA merged).
"""

from __future__ import annotations

import logging

from ..config.jobs import TrainSFTJob

log = logging.getLogger(__name__)


def run(cfg: TrainSFTJob, args) -> int:
    from ..cluster import init_ray
    from ..data import read_sft, split_by_id
    from ..learner.group import LearnerGroup
    from ..learner.sft import SFTObjective, encode_sft, pack, pad_sft
    from ..learner.supervised import Stage, batch_rows, train_stages
    from ..models import load_tokenizer, resolve_model_path, tokenizer_path

    L, batch_size = cfg.learner, batch_rows(cfg.learner)
    tok = load_tokenizer(tokenizer_path(cfg.model), padding_side="right")
    train_recs, val_recs = split_by_id(read_sft(cfg.data), cfg.val_fraction, L.seed)
    train, val = encode_sft(train_recs, tok, L.max_length), encode_sft(val_recs, tok, L.max_length)
    if cfg.packing:
        train = pack(train, L.max_length)
    if len(train) < batch_size:
        raise ValueError(f"data {cfg.data}: {len(train)} training rows, fewer than one batch ({batch_size} = "
                         "micro_batch_size x grad_accum x num_ranks)")
    log.info("%d training rows (%d examples%s), %d validation examples", len(train), len(train_recs),
             ", packed" if cfg.packing else "", len(val))
    pad = tok.pad_token_id

    init_ray(cfg.ray, shared={"run_dir": cfg.run_dir, "model": resolve_model_path(cfg.model)})
    group = LearnerGroup(L, cfg.model, {"sft": SFTObjective()}, name="sft-policy")

    def evaluate(epoch: int) -> dict[str, dict]:
        if not val:
            return {}
        nll = tokens = 0.0
        for i in range(0, len(val), batch_size):
            out = group.forward("sft", pad_sft(val[i:i + batch_size], pad))
            nll, tokens = nll + float(out["nll"].sum()), tokens + float(out["tokens"].sum())
        loss = nll / max(tokens, 1.0)
        log.info("epoch %d validation loss %.4f over %d completion tokens", epoch, loss, tokens)
        return {"val": {"loss": loss, "completion_tokens": tokens, "examples": len(val)}}

    stage = Stage("sft", train, cfg.epochs, L.seed, lambda idx: pad_sft([train[i] for i in idx], pad),
                  evaluate=evaluate, checkpoint_each_epoch=True)
    return train_stages(group, [stage], run_dir=cfg.run_dir, batch_size=batch_size,
                        checkpoint_every=cfg.checkpoint_every, resume=getattr(args, "resume", False),
                        final={"stages": ["sft"]}, what="policy")
