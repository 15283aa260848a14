"""train-rm: a Bradley–Terry reward model (soft labels, optional margin) from preferences.

The backbone gets a one-output sequence-classification head; each pair is scored as prompt (user
turn) + response (assistant turn), the same text the RewardScorer scores at inference. Accuracy on
the held-out AI-labeled split and, when given, on a human-labeled file is reported every epoch.
The model is exported to <run_dir>/final (HF safetensors, loads with `load_reward_model`);
`--resume` continues from the newest checkpoint.
"""

from __future__ import annotations

import logging

from ..config.jobs import TrainRMJob

log = logging.getLogger(__name__)


def run(cfg: TrainRMJob, args) -> int:
    from ..cluster import init_ray
    from ..data import read_preferences
    from ..learner.group import LearnerGroup
    from ..learner.objectives import RMObjective, encode_preferences, pad_preferences
    from ..learner.supervised import Stage, batch_rows, preference_splits, train_stages
    from ..models import load_tokenizer, resolve_model_path, tokenizer_path

    L, batch_size = cfg.learner, batch_rows(cfg.learner)
    tok = load_tokenizer(tokenizer_path(cfg.model), padding_side="right")
    train, val = preference_splits(cfg.train, "train", tok, L, cfg.val_fraction)
    evals = {"val": val}
    if cfg.human_eval:
        evals["human"] = encode_preferences(read_preferences(cfg.human_eval), tok, L.max_length)
    pad = tok.pad_token_id

    init_ray(cfg.ray, shared={"run_dir": cfg.run_dir, "model": resolve_model_path(cfg.model)})
    group = LearnerGroup(L, cfg.model, {"rm": RMObjective(cfg.margin, cfg.soft_labels)}, model_kind="reward",
                         name="rm")

    def evaluate(epoch: int) -> dict[str, dict]:
        out = {}
        for split, encoded in evals.items():
            if encoded:
                acc = accuracy(group, encoded, pad, batch_size)
                out[split] = {"accuracy": acc, "pairs": len(encoded)}
                log.info("epoch %d %s accuracy %.3f on %d pairs", epoch, split, acc, len(encoded))
        return out

    stage = Stage("rm", train, cfg.epochs, L.seed, lambda idx: pad_preferences([train[i] for i in idx], pad),
                  evaluate=evaluate, checkpoint_each_epoch=True)
    return train_stages(group, [stage], run_dir=cfg.run_dir, batch_size=batch_size,
                        checkpoint_every=cfg.checkpoint_every, resume=getattr(args, "resume", False), final={},
                        what="reward model")


def accuracy(group, encoded, pad: int, batch_size: int) -> float:
    """Fraction of decided pairs (label ≠ 0.5) whose score order agrees with the label."""
    import torch

    from ..learner.objectives import pad_preferences, rm_accuracy

    outs = [group.forward("rm", pad_preferences(encoded[i:i + batch_size], pad))
            for i in range(0, len(encoded), batch_size)]
    scores = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return rm_accuracy(scores, torch.tensor([rec[2] for rec in encoded]))
