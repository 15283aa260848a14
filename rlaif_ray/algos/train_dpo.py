"""train-dpo: DPO (sigmoid / IPO / conservative / soft-label) in chained stages, e.g. AI prefs -> human prefs.

For each stage: split its preferences, compute the reference log-probs once (the stage's reference:
'initial' weights, the 'previous' stage's policy, or a model path), then epochs of shuffled batches
through the LearnerGroup, validation per epoch, checkpoints every N steps. The policy of the last
stage is exported to <run_dir>/final (HF safetensors). `--resume` continues from the newest
checkpoint: same batches, same optimizer state, same reference log-probs.
"""

from __future__ import annotations

import logging
import os

from ..config.jobs import TrainDPOJob

log = logging.getLogger(__name__)


def run(cfg: TrainDPOJob, args) -> int:
    import torch

    from ..cluster import init_ray
    from ..learner.group import LearnerGroup
    from ..learner.objectives import DPOObjective, pad_preferences
    from ..learner.supervised import Stage, batch_rows, preference_splits, train_stages
    from ..models import load_tokenizer, resolve_model_path, tokenizer_path

    batch_size = batch_rows(cfg.learner)
    tok = load_tokenizer(tokenizer_path(cfg.model), padding_side="right")
    data = [preference_splits(s.data, f"stages[{s.name}].data", tok, cfg.learner, cfg.val_fraction)
            for s in cfg.stages]  # per stage: (train, val) encoded once

    init_ray(cfg.ray, shared={"run_dir": cfg.run_dir, "model": resolve_model_path(cfg.model)})
    objectives = {s.name: DPOObjective(s.beta, s.loss, s.label_smoothing, s.soft_labels) for s in cfg.stages}
    group = LearnerGroup(cfg.learner, cfg.model, objectives, name="dpo-policy")
    pad = tok.pad_token_id

    def batches(encoded, ref, size):
        for i in range(0, len(encoded), size):
            b = pad_preferences(encoded[i:i + size], pad)
            if ref is not None:
                b["ref_logps"] = ref[i:i + size]
            yield b

    def logps(encoded, model="policy"):  # every stage's objective has the same forward: summed logps
        return torch.cat([group.forward(cfg.stages[0].name, b, model)["logps"]
                          for b in batches(encoded, None, batch_size)])

    def stage_of(si: int) -> Stage:
        """Stage `si`: its lr, its reference log-probs (computed at its start), its batches, validation."""
        s, (train, val) = cfg.stages[si], data[si]
        ref: dict = {}

        def start() -> None:
            group.set_lr(s.lr)
            ref["train"], ref["val"] = _reference_logps(cfg, si, group, train, val, logps)

        def batch(idx: list[int]) -> dict:
            return {**pad_preferences([train[i] for i in idx], pad), "ref_logps": ref["train"][idx]}

        def evaluate(epoch: int) -> dict[str, dict]:
            return {f"val/{s.name}": _validate(group, s.name, val, ref["val"], batches, batch_size, s)} if val else {}

        return Stage(s.name, train, s.epochs, cfg.learner.seed + 1000 * si, batch, f"train/{s.name}", start, evaluate)

    return train_stages(group, [stage_of(si) for si in range(len(cfg.stages))], run_dir=cfg.run_dir,
                        batch_size=batch_size, checkpoint_every=cfg.checkpoint_every,
                        resume=getattr(args, "resume", False), final={"stages": [s.name for s in cfg.stages]},
                        what="policy")


def _reference_logps(cfg, si, group, train, val, logps):
    """Reference log-probs of a stage's train and val pairs, computed once and kept on disk (a
    resumed stage must not recompute them from the partly trained policy)."""
    import torch

    stage = cfg.stages[si]
    path = os.path.join(cfg.run_dir, "reference", f"{si:02d}-{stage.name}.pt")
    if os.path.exists(path):
        saved = torch.load(path)
        return saved["train"], saved["val"]
    ref = stage.reference
    if ref == "previous" or (ref == "initial" and si == 0):
        model = "policy"  # the policy as it is now: the previous stage's, or the initial one
    else:
        group.set_reference(ref)  # "initial" (the starting weights) or a path
        model = "reference"
    out = {"train": logps(train, model), "val": logps(val, model) if val else torch.zeros(0, 2)}
    group.set_reference(None)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(out, path + ".tmp")
    os.replace(path + ".tmp", path)
    return out["train"], out["val"]


def _validate(group, name, val, ref_val, batches, batch_size, stage) -> dict:
    """Held-out DPO loss and implicit-reward accuracy with the stage's loss."""
    import torch

    from ..learner import losses

    pol = torch.cat([group.forward(name, b)["logps"] for b in batches(val, None, batch_size)])
    lengths = torch.tensor([[sum(c[1]), sum(r[1])] for c, r, _, _ in val], dtype=torch.float32)
    p = torch.tensor([rec[2] for rec in val]) if stage.soft_labels else None
    loss, stats = losses.dpo_loss(stage.loss, pol[:, 0], pol[:, 1], ref_val[:, 0], ref_val[:, 1], stage.beta,
                                  stage.label_smoothing, p, lengths[:, 0], lengths[:, 1])
    return {k: float(v) for k, v in stats.items()} | {"pairs": len(val)}
