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


def add_arguments(parser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run_dir")


def run(cfg: TrainDPOJob, args) -> int:
    import torch

    from ..cluster import init_ray
    from ..data import read_preferences, split_by_id
    from ..learner.checkpoint import export_final, latest_checkpoint, save_checkpoint
    from ..learner.group import LearnerGroup, NonFiniteLossError, epoch_batches
    from ..learner.metrics import MetricsWriter
    from ..learner.objectives import DPOObjective, encode_preferences, pad_preferences
    from ..models import load_tokenizer, resolve_model_path, tokenizer_path

    L = cfg.learner
    tok = load_tokenizer(tokenizer_path(cfg.model), padding_side="right")
    batch_size = L.micro_batch_size * L.grad_accum * L.num_ranks
    data = []  # per stage: (train, val) encoded once
    for s in cfg.stages:
        train, val = split_by_id(read_preferences(s.data), cfg.val_fraction, L.seed)
        if len(train) < batch_size:
            raise ValueError(f"stages[{s.name}].data {s.data}: {len(train)} training pairs, fewer than one batch "
                             f"({batch_size} = micro_batch_size x grad_accum x num_ranks)")
        data.append((encode_preferences(train, tok, L.max_length), encode_preferences(val, tok, L.max_length)))
    steps_total = sum(s.epochs * (len(tr) // batch_size) for s, (tr, _) in zip(cfg.stages, data, strict=True))

    init_ray(cfg.ray, shared={"run_dir": cfg.run_dir, "model": resolve_model_path(cfg.model)})
    objectives = {s.name: DPOObjective(s.beta, s.loss, s.label_smoothing, s.soft_labels) for s in cfg.stages}
    group = LearnerGroup(L, cfg.model, objectives, name="dpo-policy")
    cursor = {"stage": 0, "epoch": 0, "batch": 0, "step": 0}
    ckpt = latest_checkpoint(cfg.run_dir) if getattr(args, "resume", False) else None
    if ckpt:
        cursor = group.load(ckpt)
        log.info("resumed from %s at %s", ckpt, cursor)
    pad = tok.pad_token_id

    def batches(encoded, ref, size):
        for i in range(0, len(encoded), size):
            b = pad_preferences(encoded[i:i + size], pad)
            if ref is not None:
                b["ref_logps"] = ref[i:i + size]
            yield b

    def logps(encoded, model="policy"):
        return torch.cat([group.forward(name, b, model)["logps"] for b in batches(encoded, None, batch_size)])

    try:
        with MetricsWriter(cfg.run_dir, steps_total, resume=cursor if ckpt else None) as metrics:
            step = cursor["step"]
            for si in range(cursor["stage"], len(cfg.stages)):
                stage, (train, val) = cfg.stages[si], data[si]
                name = stage.name
                group.set_lr(stage.lr)
                ref_train, ref_val = _reference_logps(cfg, si, group, train, val, logps)
                for epoch in range(cursor["epoch"] if si == cursor["stage"] else 0, stage.epochs):
                    order = epoch_batches(len(train), batch_size, L.seed + 1000 * si + epoch)
                    first = cursor["batch"] if (si, epoch) == (cursor["stage"], cursor["epoch"]) else 0
                    for bi in range(first, len(order)):
                        idx = order[bi]
                        batch = pad_preferences([train[i] for i in idx], pad)
                        batch["ref_logps"] = ref_train[idx]
                        out = group.train_step(name, batch)
                        step += 1
                        metrics.log(step, {**out, "stage": si, "epoch": epoch}, prefix=f"train/{name}")
                        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                            nxt = {"stage": si, "epoch": epoch, "batch": bi + 1, "metrics_rows": metrics.rows}
                            save_checkpoint(group, cfg.run_dir, step, nxt)
                    if val:
                        metrics.log(step, _validate(group, name, val, ref_val, batches, batch_size, stage),
                                    prefix=f"val/{name}")
                save_checkpoint(group, cfg.run_dir, step, {"stage": si + 1, "epoch": 0, "batch": 0,
                                                           "metrics_rows": metrics.rows})
            final = export_final(group, cfg.run_dir, {"step": step, "stages": [s.name for s in cfg.stages]})
            log.info("policy written to %s", final)
    except NonFiniteLossError as e:
        log.error("stopped: %s; the last good checkpoint is %s", e, latest_checkpoint(cfg.run_dir))
        return 1
    finally:
        group.shutdown()
    return 0


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
