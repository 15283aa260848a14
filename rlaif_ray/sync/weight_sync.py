"""Learner -> rollout engines weight sync, straight from learner rank 0 into every engine, verified.

    sync = WeightSync(pool, SyncConfig(), learners)    # opens the transfer group once
    report = sync.push(version)                        # SyncReport; every engine now holds the weights
    sync.load_dir(path, version)                       # or: weights from a dir on the shared filesystem

`push` streams the learner group's HF-named weights (ZeRO-3 gathered one parameter at a time, LoRA
merged, cast to the engines' dtype) from rank 0 over the transfer group (`transfer.py`: NCCL between
GPUs, gloo between CPUs) into each engine process, which loads them with vLLM's in-place reload while
they arrive. The driver only starts the calls and reads a byte count: no weights pass through it, its
object store or a file, so engines on other nodes get them as local ones do. When the verify policy says
so, learner rank 0 computes the fixed probe's logprobs from the weights it holds while every engine
computes the same; the driver compares the two short lists and a difference above the tolerance raises
`WeightSyncError`. Every call has `SyncConfig.timeout_s`; an actor that fails or stalls is named.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..config import ConfigError, SyncConfig
from .probe import Probe, make_probe

log = logging.getLogger(__name__)


class WeightSyncError(RuntimeError):
    """A sync failed, timed out or did not verify: the engines may hold wrong weights."""


@dataclass
class SyncReport:
    version: int
    bytes: int
    seconds: float  # transfer + every engine loaded
    verify_seconds: float
    verified: bool | None  # None: not checked this time
    max_abs_diff: float | None
    transfer: str = "gloo"  # the transport that ran: "gloo" | "nccl" | "shared-dir"


class WeightSync:
    """Pushes the learner group's weights into every worker of a RolloutPool and checks them."""

    def __init__(self, pool, cfg: SyncConfig, learners=None, probe: Probe | None = None):
        from ..models import load_tokenizer

        cfg.validate()
        self.pool, self.cfg, self.learners = pool, cfg, learners
        learner_dtype = learners.cfg.dtype if learners is not None else "fp32"
        self.tolerance = cfg.tolerance or (1e-3 if pool.dtype == learner_dtype == "fp32" else 0.5)
        self.probe = probe or make_probe(load_tokenizer(pool.model_path))
        self.pushes = 0
        self.transfer = None
        if learners is not None:
            self.transfer = self._connect()

    def _connect(self) -> str:
        """The group {learner rank 0, every engine rank}; rank 0's store is bound before anyone joins."""
        gpu_learners, gpu_engines = self.learners.cfg.gpus_per_rank > 0, self.pool.cfg.gpus_per_worker > 0
        if gpu_learners != gpu_engines:
            raise ConfigError(f"sync: learner.gpus_per_rank={self.learners.cfg.gpus_per_rank} and "
                              f"rollout.gpus_per_worker={self.pool.cfg.gpus_per_worker}: the weight transfer "
                              "needs both on GPUs (NCCL) or both on CPUs (gloo)")
        ranks = self.pool.engine_ranks()
        world, timeout = 1 + sum(ranks), self.cfg.timeout_s
        host, port = self.learners.open_transfer(timeout)
        bases = [1 + sum(ranks[:i]) for i in range(len(ranks))]
        self._run(self.learners.submit("join_transfer", host, port, world, timeout, ranks=[0])
                  + self.pool.group.submit("join_transfer", per_actor=[(host, port, b, world, timeout) for b in bases]),
                  [0], "join the weight-transfer group")
        log.info("weight-transfer group: learner rank 0 on %s:%d + %d engine ranks", host, port, world - 1)
        return "nccl" if gpu_engines else "gloo"

    def verify_due(self) -> bool:
        every = self.cfg.verify_every
        return every > 0 and self.pushes % every == 0

    def push(self, version: int) -> SyncReport:
        """Learner rank 0 -> every engine, then the probe check when due."""
        if self.learners is None:
            raise WeightSyncError("weight sync: push() needs the learner group (WeightSync(pool, cfg, learners))")
        t0, timeout = time.perf_counter(), self.cfg.timeout_s
        sent = self._run(self.learners.submit("send_weights", self.cfg.bucket_mb * 2**20, self.pool.dtype)
                         + self.pool.group.submit("receive_weights", version, timeout),
                         None, "weight transfer")
        return self._finish(version, sent[0], time.perf_counter() - t0, self.transfer)

    def load_dir(self, path: str, version: int) -> SyncReport:
        """Every engine reloads from `path` (a dir of HF safetensors on the shared filesystem)."""
        import os

        t0 = time.perf_counter()
        self._run(self.pool.group.submit("load_weights", path, version, self.cfg.timeout_s), [], "load weights")
        nbytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
        return self._finish(version, nbytes, time.perf_counter() - t0, "shared-dir")

    def transport_seconds(self, nbytes: int) -> float:
        """One flat buffer of `nbytes` over the same group, no packing or loading: the transfer's floor."""
        t0, timeout = time.perf_counter(), self.cfg.timeout_s
        self._run(self.learners.submit("send_raw", nbytes, ranks=[0])
                  + self.pool.group.submit("receive_raw", nbytes, timeout),
                  [0], "raw transport")
        return time.perf_counter() - t0

    def _finish(self, version: int, nbytes: int, seconds: float, transfer: str) -> SyncReport:
        self.pushes += 1
        verified, diff, t1 = None, None, time.perf_counter()
        if self.verify_due():
            if self.learners is None:
                raise WeightSyncError("weight sync: verification needs the learner group's probe logprobs")
            diff, verified = self.check(version), True
        report = SyncReport(version, nbytes, seconds, time.perf_counter() - t1, verified, diff, transfer)
        log.info("weight sync v%d (%s): %.1f MB in %.2fs, verified=%s (max |dlogp| %s)", version, transfer,
                 nbytes / 1e6, seconds, verified, None if diff is None else f"{diff:.2e}")
        return report

    def check(self, version: int) -> float:
        """Max |engine - learner| probe logprob over every engine; raises above the tolerance. The learner
        and the engines compute theirs at the same time."""
        p = self.probe
        refs = self.learners.submit("probe_logprobs", p.prompt_ids, p.completion_ids)
        refs += self.pool.group.submit("sequence_logprobs", [p.prompt_ids], [p.completion_ids])
        results = self._run(refs, None, "probe logprobs")
        reference, engines = results[0], results[len(self.learners.actors):]
        worst = 0.0
        for name, (lps,) in zip(self.pool.names, engines, strict=True):
            diff = max(abs(a - b) for a, b in zip(lps, reference, strict=True))
            worst = max(worst, diff)
            if not diff <= self.tolerance:  # also catches NaN
                raise WeightSyncError(
                    f"weight sync v{version}: {name} does not hold the learner's weights: probe "
                    f"logprobs differ by up to {diff:.3e} (tolerance {self.tolerance:.1e}); stopping")
        return worst

    def _run(self, refs: list, learner_ranks: list[int] | None, what: str) -> list:
        """Wait for the refs of learner `learner_ranks` (first; None: every rank) and one ref per engine
        worker (last), naming whoever fails."""
        from ..cluster import wait_all

        ours = self.learners.group.names if self.learners is not None else []
        names = [ours[r] for r in (range(len(ours)) if learner_ranks is None else learner_ranks)] + self.pool.names
        return wait_all(refs, names, self.cfg.timeout_s, f"weight sync: {what}", WeightSyncError)
