"""The loop every supervised trainer shares (train-rm, train-dpo): stages of epochs of seeded batches
through a LearnerGroup, with a resumable cursor, metrics, checkpoints, a stop on a non-finite loss that
keeps the last good checkpoint, a graceful stop on SIGTERM/SIGUSR1 (checkpoint after the step in progress,
exit 0, `--resume` continues), the final export, and the group shut down whatever happens.

    stages = [Stage("dpo", rows, epochs=1, seed=0, batch=lambda idx: ..., evaluate=lambda epoch: {...})]
    return train_stages(group, stages, run_dir=..., batch_size=32, checkpoint_every=0, resume=False,
                        final={"stages": ["dpo"]}, what="policy")

The cursor {"stage", "epoch", "batch", "step"} is saved with every checkpoint; the batch order of an epoch
is a function of (stage.seed + epoch), so a resumed run takes the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str  # the objective trained (a key of the group's objectives)
    rows: list  # encoded training examples
    epochs: int
    seed: int  # epoch e shuffles with seed + e
    batch: Callable[[list[int]], dict]  # row indices -> a training batch
    prefix: str = "train"  # metrics prefix of the training rows
    start: Callable[[], None] | None = None  # before the stage's first batch (and again on resume)
    evaluate: Callable[[int], dict[str, dict]] | None = None  # after each epoch: {metrics prefix: values}
    checkpoint_each_epoch: bool = False  # besides the end of the stage


def batch_rows(learner) -> int:
    """Rows of one optimizer step: micro_batch_size x grad_accum x num_ranks."""
    return learner.micro_batch_size * learner.grad_accum * learner.num_ranks


def preference_splits(path: str, what: str, tok, learner, val_fraction: float) -> tuple[list, list]:
    """A preferences file split by id into encoded (train, val); `what` names it in the error raised when
    the training split cannot fill one batch."""
    from ..data import read_preferences, split_by_id
    from .objectives import encode_preferences

    train, val = split_by_id(read_preferences(path), val_fraction, learner.seed)
    if len(train) < batch_rows(learner):
        raise ValueError(f"{what} {path}: {len(train)} training pairs, fewer than one batch ({batch_rows(learner)} "
                         "= micro_batch_size x grad_accum x num_ranks)")
    return encode_preferences(train, tok, learner.max_length), encode_preferences(val, tok, learner.max_length)


def train_stages(group, stages: list[Stage], *, run_dir: str, batch_size: int, checkpoint_every: int,
                 resume: bool, final: dict, what: str) -> int:
    """Run `stages` in order (from the newest checkpoint with `resume`), export `<run_dir>/final`; the
    exit code: 0, or 1 after a non-finite loss. Shuts `group` down."""
    from ..stopping import StopSignal
    from .checkpoint import export_final, latest_checkpoint, save_checkpoint
    from .group import NonFiniteLossError, epoch_batches
    from .metrics import MetricsWriter

    cursor = {"stage": 0, "epoch": 0, "batch": 0, "step": 0}
    try:
        ckpt = latest_checkpoint(run_dir) if resume else None
        if ckpt:
            cursor.update(group.load(ckpt))
            log.info("resumed from %s at %s", ckpt, cursor)
        total = sum(s.epochs * (len(s.rows) // batch_size) for s in stages)
        with MetricsWriter(run_dir, total, resume=cursor if ckpt else None) as metrics, StopSignal() as stop:
            step = cursor["step"]

            def save(stage: int, epoch: int, batch: int) -> None:
                save_checkpoint(group, run_dir, step, {"stage": stage, "epoch": epoch, "batch": batch,
                                                       "metrics_rows": metrics.rows})

            for si in range(cursor["stage"], len(stages)):
                stage = stages[si]
                if stage.start is not None:
                    stage.start()
                for epoch in range(cursor["epoch"] if si == cursor["stage"] else 0, stage.epochs):
                    order = epoch_batches(len(stage.rows), batch_size, stage.seed + epoch)
                    first = cursor["batch"] if (si, epoch) == (cursor["stage"], cursor["epoch"]) else 0
                    for bi in range(first, len(order)):
                        out = group.train_step(stage.name, stage.batch(order[bi]))
                        step += 1
                        metrics.log(step, {**out, "stage": si, "epoch": epoch}, prefix=stage.prefix)
                        if stop.requested:
                            save(si, epoch, bi + 1)
                            log.info("stopped at step %d, checkpointed; --resume continues", step)
                            return 0
                        if checkpoint_every and step % checkpoint_every == 0:
                            save(si, epoch, bi + 1)
                    for prefix, values in (stage.evaluate(epoch) if stage.evaluate else {}).items():
                        metrics.log(step, {**values, "epoch": epoch}, prefix=prefix)
                    if stage.checkpoint_each_epoch and epoch + 1 < stage.epochs:
                        save(si, epoch + 1, 0)
                save(si + 1, 0, 0)
            log.info("%s written to %s", what, export_final(group, run_dir, {"step": step, **final}))
    except NonFiniteLossError as e:
        log.error("stopped: %s; the last good checkpoint is %s", e, latest_checkpoint(run_dir))
        return 1
    finally:
        group.shutdown()
    return 0
