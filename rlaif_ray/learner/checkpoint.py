"""Learner checkpoints and full-weight export.

A checkpoint directory holds:
    config.json, model.safetensors, tokenizer files  HF `save_pretrained` (LoRA merged) -> loads anywhere
    value_head/model.safetensors                     when the module has a value head (PPO)
    deepspeed/state/...                              engine + optimizer state per rank (exact resume)
    deepspeed/rng_rank{r}.pt                         torch / python / numpy RNG per rank
    trainer_state.json                               the driver's data cursor, step, metrics (written last)
`latest_checkpoint(run_dir)` finds the newest complete one (it has trainer_state.json).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

TRAINER_STATE = "trainer_state.json"


def _hf_target(module):
    """The HF model inside a wrapper (PPO's PolicyWithValueHead keeps it as `.lm`)."""
    return module.lm if hasattr(module, "policy_state_dict") else module


def _is_peft(module) -> bool:
    return hasattr(module, "peft_config")


def iter_full_state(module, zero3: bool, rank: int):
    """HF-named full weights, one (name, tensor) at a time, on rank 0 (nothing on other ranks, which must
    still iterate under ZeRO-3: every rank gathers the same parameters in the same order). LoRA adapters
    are merged (exact, fp32). A tensor is only valid until the next one is asked for (a ZeRO-3 parameter
    is released again): copy it, do not keep it."""
    from ..models.lora import merged_state_dict

    target = _hf_target(module)
    if not zero3:
        if rank == 0:
            yield from merged_state_dict(target).items()
        return
    from deepspeed import zero

    if _is_peft(target):  # the merge needs A, B and W at once: gather the whole model
        with zero.GatheredParameters(list(target.parameters()), modifier_rank=None):
            if rank == 0:
                yield from merged_state_dict(target).items()
        return
    params = dict(target.named_parameters(remove_duplicate=False))
    for key, tensor in target.state_dict().items():  # one parameter at a time keeps peak memory low
        if key in params:
            with zero.GatheredParameters([params[key]], modifier_rank=None):
                if rank == 0:
                    yield key, params[key].detach()
        elif rank == 0:
            yield key, tensor.detach()


def full_state(module, zero3: bool, rank: int) -> dict | None:
    """`iter_full_state` as a dict of CPU copies on rank 0 (None on other ranks)."""
    state = {k: v.cpu().clone() for k, v in iter_full_state(module, zero3, rank)}
    return state if rank == 0 else None


def save_rank(engine, directory: str, rank: int, zero3: bool, tokenizer_path: str | None,
              hf_only: bool = False) -> None:
    """Every rank: DeepSpeed state + RNG; rank 0 also the HF model (merged) and tokenizer."""
    import numpy as np
    import torch

    module = engine.module
    state = full_state(module, zero3, rank)
    if rank == 0:
        os.makedirs(directory, exist_ok=True)
        target = _hf_target(module)
        base = target.get_base_model() if _is_peft(target) else target
        base.save_pretrained(directory, state_dict=state, safe_serialization=True)
        if tokenizer_path:
            from ..models import load_tokenizer

            load_tokenizer(tokenizer_path).save_pretrained(directory)
    if hasattr(module, "value_head"):
        _save_value_head(module.value_head, directory, zero3, rank)
    if hf_only:
        return
    engine.save_checkpoint(os.path.join(directory, "deepspeed"), tag="state")
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    torch.save(rng, os.path.join(directory, "deepspeed", f"rng_rank{rank}.pt"))


def _save_value_head(head, directory: str, zero3: bool, rank: int) -> None:
    if zero3:
        from deepspeed import zero

        with zero.GatheredParameters(list(head.parameters()), modifier_rank=None):
            if rank == 0:
                head.save(directory)
    elif rank == 0:
        head.save(directory)


def load_rank(engine, directory: str, rank: int) -> None:
    import numpy as np
    import torch

    path, _ = engine.load_checkpoint(os.path.join(directory, "deepspeed"), tag="state",
                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"{directory}: no DeepSpeed state to resume from")
    rng = torch.load(os.path.join(directory, "deepspeed", f"rng_rank{rank}.pt"), weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])


def write_trainer_state(directory: str, extra: dict) -> None:
    tmp = Path(directory) / (TRAINER_STATE + ".tmp")
    tmp.write_text(json.dumps(extra, indent=1, default=str))
    os.replace(tmp, Path(directory) / TRAINER_STATE)


def read_trainer_state(directory: str) -> dict:
    path = Path(directory) / TRAINER_STATE
    if not path.exists():
        raise FileNotFoundError(f"{directory}: not a complete checkpoint (no {TRAINER_STATE})")
    return json.loads(path.read_text())


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step-{step:07d}")


def save_checkpoint(group, run_dir: str, step: int, extra: dict, keep: int = 2) -> str:
    """Save a resumable checkpoint at `step` and drop older ones beyond `keep`."""
    path = checkpoint_dir(run_dir, step)
    group.save(path, {"step": step, **extra})
    prune_checkpoints(run_dir, keep)
    return path


def export_final(group, run_dir: str, extra: dict) -> str:
    """The trained model as a plain HF dir `<run_dir>/final` (LoRA merged, no optimizer state): what
    eval, the RewardScorer and vLLM load."""
    final = os.path.join(run_dir, "final")
    group.save(final, extra, hf_only=True)
    return final


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint under `run_dir/checkpoints` (None when there is none)."""
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / TRAINER_STATE).exists()) if root.exists() else []
    return str(done[-1]) if done else None


def prune_checkpoints(run_dir: str, keep: int = 2) -> None:
    """Delete all but the newest `keep` complete checkpoints (and any incomplete older ones)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return
    steps = sorted(root.glob("step-*"))
    complete = [p for p in steps if (p / TRAINER_STATE).exists()]
    keepers = set(complete[-keep:])
    newest = complete[-1] if complete else None
    for p in steps:
        if p not in keepers and (newest is None or p < newest):
            shutil.rmtree(p, ignore_errors=True)
