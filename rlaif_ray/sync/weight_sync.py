"""Learner -> rollout workers weight sync through shared memory, with a verified probe.

    sync = WeightSync(pool, SyncConfig())
    report = sync.push(state_or_dir, version, probe_reference=ref)   # SyncReport

`state_or_dir` is the learner rank 0's `state_for_sync()`: HF-named tensors (ZeRO-3 gathered, LoRA
merged, see `rlaif_ray.models.lora.merged_state_dict`) or a directory of HF-named safetensors. A dict is
written once to /dev/shm as safetensors and every worker loads it with vLLM's in-place
`reload_weights` (the CPU engine repacks its linear weights, so `model.load_weights` cannot be used);
the worker then resets its prefix cache and takes the new version. When the verify policy says so, each
engine's logprobs of the fixed probe are compared with `probe_reference` (the learner's own, from
`probe.reference_logprobs`; when None it is computed here from the state with an HF forward) and a
difference above the tolerance raises `WeightSyncError`. Every RPC has `SyncConfig.timeout_s`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from ..config import SyncConfig
from .probe import Probe, make_probe, reference_logprobs

log = logging.getLogger(__name__)


class WeightSyncError(RuntimeError):
    """A sync failed, timed out or did not verify: the engines may hold wrong weights."""


@dataclass
class SyncReport:
    version: int
    bytes: int
    seconds: float  # staging + every worker loaded
    verify_seconds: float
    verified: bool | None  # None: not checked this time
    max_abs_diff: float | None


def shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def write_safetensors(state: dict, directory: str) -> int:
    """Write `state` as one safetensors file; tied tensors (one storage) are written once."""
    from safetensors.torch import save_file

    seen, tensors = set(), {}
    for name, t in state.items():
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if t.data_ptr() and key in seen:
            continue  # a tied copy (e.g. lm_head = embed_tokens); the engine ties it again
        seen.add(key)
        tensors[name] = t.detach().to("cpu").contiguous()
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    return sum(t.numel() * t.element_size() for t in tensors.values())


def load_safetensors_dir(directory: str) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(os.listdir(directory)):
        if f.endswith(".safetensors"):
            state.update(load_file(os.path.join(directory, f)))
    return state


class WeightSync:
    """Pushes weights into every worker of a RolloutPool and checks them."""

    def __init__(self, pool, cfg: SyncConfig, probe: Probe | None = None):
        from ..models import load_tokenizer

        cfg.validate()
        self.pool, self.cfg = pool, cfg
        self.tolerance = cfg.tolerance or (1e-3 if pool.dtype == "fp32" else 0.5)
        self.probe = probe or make_probe(load_tokenizer(pool.model_path))
        self.pushes = 0

    def verify_due(self) -> bool:
        if self.cfg.verify == "never":
            return False
        return self.cfg.verify == "every" or self.pushes % int(self.cfg.verify) == 0

    def push(self, state_or_dir, version: int, probe_reference: list[float] | None = None) -> SyncReport:
        t0 = time.perf_counter()
        owned = not isinstance(state_or_dir, (str, os.PathLike))
        directory = tempfile.mkdtemp(prefix="rlaif-sync-", dir=shm_dir()) if owned else str(state_or_dir)
        try:
            if owned:
                nbytes = write_safetensors(state_or_dir, directory)
            else:
                nbytes = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
                             if f.endswith(".safetensors"))
            self._call_all("load_weights", directory, version, self.cfg.timeout_s, what="load weights")
            seconds = time.perf_counter() - t0
            self.pushes += 1
            verified, diff, t1 = None, None, time.perf_counter()
            if self.verify_due():
                if probe_reference is None:
                    probe_reference = self._reference(state_or_dir if owned else load_safetensors_dir(directory))
                diff = self.check(probe_reference, version)
                verified = True
        finally:
            if owned:
                shutil.rmtree(directory, ignore_errors=True)
        report = SyncReport(version, nbytes, seconds, time.perf_counter() - t1, verified, diff)
        log.info("weight sync v%d: %.1f MB in %.2fs, verified=%s (max |dlogp| %s)", version, nbytes / 1e6,
                 seconds, verified, None if diff is None else f"{diff:.2e}")
        return report

    def confirm(self, version: int, probe_reference: list[float] | None) -> SyncReport:
        """After weights arrived another way (NCCL, `sync/nccl.py`): set the version, verify if due."""
        self._call_all("set_version", version, what="set version")
        self.pushes += 1
        t0, verified, diff = time.perf_counter(), None, None
        if self.verify_due():
            if probe_reference is None:
                raise WeightSyncError("weight sync: verification needs the learner's probe logprobs")
            diff, verified = self.check(probe_reference, version), True
        return SyncReport(version, 0, 0.0, time.perf_counter() - t0, verified, diff)

    def check(self, reference: list[float], version: int) -> float:
        """Max |engine - reference| logprob over the probe on every worker; raises above the tolerance."""
        results = self._call_all("sequence_logprobs", [self.probe.prompt_ids], [self.probe.completion_ids],
                                 what="probe logprobs")
        worst = 0.0
        for i, (lps,) in enumerate(results):
            diff = max(abs(a - b) for a, b in zip(lps, reference, strict=True))
            worst = max(worst, diff)
            if not diff <= self.tolerance:  # also catches NaN
                raise WeightSyncError(
                    f"weight sync v{version}: rollout worker {i} does not hold the learner's weights: probe "
                    f"logprobs differ by up to {diff:.3e} (tolerance {self.tolerance:.1e}); stopping")
        return worst

    def _reference(self, state: dict) -> list[float]:
        """The learner-side reference computed here: an HF model from the pool's config with `state`."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.pool.model_path)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if [m for m in missing if not m.endswith("lm_head.weight")] or unexpected:
            raise WeightSyncError(f"state does not match {self.pool.model_path}: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}")
        if missing:
            model.tie_weights()
        return reference_logprobs(model.eval(), self.probe)

    def _call_all(self, method: str, *args, what: str) -> list:
        import ray

        refs = [getattr(w, method).remote(*args) for w in self.pool.workers]
        try:
            return ray.get(refs, timeout=self.cfg.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise WeightSyncError(f"weight sync: {what} did not finish on every rollout worker within "
                                  f"{self.cfg.timeout_s:.0f}s (sync.timeout_s)") from None
        except ray.exceptions.RayError as e:
            raise WeightSyncError(f"weight sync: {what} failed on a rollout worker: {e}") from e
