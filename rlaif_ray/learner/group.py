"""LearnerGroup: M Ray actors forming one torch.distributed group, each rank a DeepSpeed engine.

    group = LearnerGroup(learner_cfg, model_cfg, {"dpo": DPOObjective(...)}, name="policy")
    out = group.forward("dpo", batch)                   # no-grad outputs, rows in input order
    metrics = group.train_step("dpo", batch)            # one optimizer step on the whole batch
    state = group.state_for_sync()                      # full weights via the driver: tests only (jobs use
                                                        # rlaif_ray.sync.WeightSync: rank 0 -> engines)
    group.save(dir, extra); extra = group.load(dir)     # HF safetensors + DeepSpeed/optimizer + RNG
    group.set_reference(path | "initial" | None)        # frozen reference; forward(..., model="reference")
    group.set_lr(lr); group.shutdown()
    refs = group.submit("send_weights", ...); group.wait(refs, what)   # calls that run beside other actors'

A batch is a dict of tensors with rows on dim 0, plus optional lists (e.g. "ids"); the group splits
it evenly across ranks. An objective is a small picklable object with `loss(model, batch) ->
(loss, stats)` and `forward(model, batch) -> dict`, see `objectives.py`. `loss` gets the DeepSpeed
engine (call it like the module; `objectives.unwrap(model)` is the module itself), `forward` the module.
Constructor options: `model_kind` "causal_lm" | "reward" | a callable(path, torch_dtype) -> module;
`wrap(module) -> module` applied after LoRA, before DeepSpeed (e.g. PPO's value head).
Every remote call has `LearnerConfig.timeout_s`; a dead or stuck rank raises `LearnerError` naming
the actor instead of hanging.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

from ..config import LearnerConfig, ModelConfig
from .engine import check_precision

log = logging.getLogger(__name__)


class LearnerError(RuntimeError):
    """A learner rank died, timed out or failed; the message names the actor."""


class NonFiniteLossError(LearnerError):
    """A loss was NaN/inf: no optimizer step was taken. `ids` are the offending batch's row ids."""

    def __init__(self, message: str, ids: list):
        super().__init__(message)
        self.ids = ids


# ---------------------------------------------------------------- batch helpers (driver side)

def batch_len(batch: dict) -> int:
    return len(next(iter(batch.values())))


def split_batch(batch: dict, parts: int, min_rows: int = 1) -> list[dict]:
    """Split every tensor/list of `batch` into `parts` contiguous, near-equal shards."""
    n = batch_len(batch)
    if n < parts * min_rows:
        raise ValueError(f"a batch of {n} rows cannot give {parts} shards of at least {min_rows} rows "
                         f"(ranks x grad_accum); use a larger batch")
    bounds = [n * i // parts for i in range(parts + 1)]
    return [{k: v[bounds[i]:bounds[i + 1]] for k, v in batch.items()} for i in range(parts)]


def epoch_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """A seeded permutation of range(n) cut into full batches (the last partial one is dropped so
    every step has the same shape across ranks). Same seed, same order: the resume cursor is an index."""
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def prompt_indices(n_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """The prompts of `step`: a fresh seeded shuffle per pass over the data, so any step's batch is known
    without replaying the ones before it (the data cursor is the step number)."""
    import random

    out, perms = [], {}
    for g in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(g, n_prompts)
        if epoch not in perms:
            perms[epoch] = random.Random(seed * 1_000_003 + epoch).sample(range(n_prompts), n_prompts)
        out.append(perms[epoch][pos])
    return out


def concat_outputs(outputs: list[dict]) -> dict:
    import torch

    return {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}


# ---------------------------------------------------------------- the actor (one rank)

class LearnerActor:
    """One rank: a model (+ optional frozen reference) under DeepSpeed, running named objectives."""

    def __init__(self, rank: int, world: int, cfg: LearnerConfig, model_cfg: ModelConfig, objectives: dict,
                 model_kind: str | Callable, wrap: Callable | None, threads: int):
        import torch

        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in actors
        self.rank, self.world, self.cfg, self.model_cfg = rank, world, cfg, model_cfg
        self.objectives, self.model_kind, self.wrap = objectives, model_kind, wrap
        self.engine = self.reference = self._store = None  # _store: rank 0's rendezvous (see address)
        self._transfer_store = self._transfer = None  # rank 0's weight-transfer group (see open_transfer)

    def address(self) -> tuple[str, int]:
        """Rank 0 opens the group's rendezvous store now, so its port is bound before anyone is told it."""
        import ray

        from .engine import serve_rendezvous

        self._store = serve_rendezvous(self.cfg)
        return ray.util.get_node_ip_address(), self._store.port

    def setup(self, addr: str, port: int, model_path: str) -> tuple[int, str]:
        """Join the process group, load the model and wrap it in DeepSpeed; returns (trainable params,
        this rank's node address)."""
        import ray
        import torch

        from .engine import build_engine, init_process_group

        init_process_group(self.rank, self.world, addr, port, self.cfg, store=self._store)
        torch.manual_seed(self.cfg.seed)  # same init of any new head on every rank
        module = self._load(model_path, trainable=True)
        if self.cfg.grad_checkpointing:
            target = getattr(module, "lm", module)
            target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(target, "enable_input_require_grads"):
                target.enable_input_require_grads()
        if self.wrap is not None:
            module = self.wrap(module)
        self.engine = build_engine(module, self.cfg, self.world)
        torch.manual_seed(self.cfg.seed + 1000 * self.rank)
        return sum(p.numel() for p in module.parameters() if p.requires_grad), ray.util.get_node_ip_address()

    def _load(self, path: str, trainable: bool):
        import torch

        from ..models import apply_lora, load_reward_model

        dtype = torch.float32  # fp32 master weights; DeepSpeed casts the compute copy for bf16
        if callable(self.model_kind):
            module = self.model_kind(path, dtype)
        elif self.model_kind == "reward":
            module = load_reward_model(path, "fp32")
        else:
            from transformers import AutoModelForCausalLM

            module = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if hasattr(module, "config"):
            module.config.use_cache = False
        if not trainable:
            module.eval().requires_grad_(False)
            return module.to(torch.bfloat16) if self.cfg.dtype == "bf16" else module
        task = "SEQ_CLS" if self.model_kind == "reward" else "CAUSAL_LM"
        return apply_lora(module, self.model_cfg, task_type=task) if self.model_cfg.lora.enabled else module

    def set_reference(self, path: str | None) -> None:
        """Load (or drop, with None) a frozen reference model, replicated on every rank."""
        self.reference = self._load(path, trainable=False) if path else None

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def forward(self, objective: str, batch: dict, model: str = "policy") -> dict:
        """No-grad outputs under `model`: "policy", "reference", or "policy+reference" (the policy's outputs
        plus the reference's as `ref_<key>`, one round trip for both)."""
        import torch

        obj = self.objectives[objective]
        if "reference" in model and self.reference is None:
            raise RuntimeError(f"forward(model={model!r}) before set_reference(path)")
        nets = {"policy": [("", self.engine.module)], "reference": [("", self.reference)],
                "policy+reference": [("", self.engine.module), ("ref_", self.reference)]}[model]
        out = {}
        for prefix, net in nets:
            was_training = net.training
            net.eval()
            with torch.no_grad():
                out.update({prefix + k: v.detach().float().cpu() for k, v in obj.forward(net, batch).items()})
            net.train(was_training)
        return out

    def train_step(self, objective: str, batch: dict) -> dict:
        """grad_accum micro-batches of this rank's shard, then one optimizer step (all ranks together)."""
        import torch
        import torch.distributed as dist

        obj = self.objectives[objective]
        n = batch_len(batch)
        micro = split_batch(batch, self.cfg.grad_accum)
        self.engine.train()
        sums: dict[str, float] = {}
        for mb in micro:
            # The engine, not engine.module: its forward arms ZeRO's backward hooks (without them ZeRO-3
            # drops all but the last micro-batch's gradients). Objectives use `objectives.unwrap` for attributes.
            loss, stats = obj.loss(self.engine, mb)
            # Every rank must agree before backward: one rank skipping it would hang the others' reduces.
            finite = torch.tensor([1.0 if torch.isfinite(loss).item() else 0.0])
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                self.engine.zero_grad()
                raise FloatingPointError(f"rank {self.rank}: non-finite loss {loss.item()} in a batch; ids="
                                         f"{list(batch.get('ids', []))}")
            w = batch_len(mb) / n
            # DeepSpeed divides by grad_accum: weighting by rows makes the gradient the shard mean.
            self.engine.backward(loss * w * len(micro))
            self.engine.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v) * w
        sums["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        sums["lr"] = self.engine.optimizer.param_groups[0]["lr"]
        return {"rows": n, **sums}

    def state_for_sync(self):
        """HF-named full weights on rank 0 (None elsewhere); every rank must call (ZeRO-3 gathers)."""
        from .checkpoint import full_state

        return full_state(self.engine.module, self.cfg.zero_stage == 3, self.rank)

    # -- weight transfer to the rollout engines (rlaif_ray.sync): rank 0 is the sender
    def open_transfer(self, timeout_s: float) -> tuple[str, int]:
        """Rank 0 binds the transfer group's store now; the driver tells the engines (host, port)."""
        import ray

        from ..sync.transfer import serve_store

        self._transfer_store = serve_store(timeout_s)
        return ray.util.get_node_ip_address(), self._transfer_store.port

    def join_transfer(self, host: str, port: int, world: int, timeout_s: float) -> None:
        from ..sync.transfer import TransferGroup

        backend = "nccl" if self.cfg.gpus_per_rank > 0 else "gloo"
        self._transfer = TransferGroup.join(host, port, 0, world, backend, timeout_s, store=self._transfer_store)

    def send_weights(self, bucket_bytes: int, dtype: str) -> int:
        """Every rank (ZeRO-3 gathers one parameter at a time); rank 0 streams them out. Bytes sent. A
        tied output head is left out: it is the embedding, and the engines tie it again."""
        from ..models import torch_dtype
        from .checkpoint import _hf_target, iter_full_state

        named = iter_full_state(self.engine.module, self.cfg.zero_stage == 3, self.rank)
        if self.rank != 0:
            for _ in named:
                pass
            return 0
        config = getattr(_hf_target(self.engine.module), "config", None)
        if getattr(config, "tie_word_embeddings", False):
            named = ((k, v) for k, v in named if k != "lm_head.weight")
        return self._transfer.send(named, bucket_bytes, torch_dtype(dtype))

    def send_raw(self, nbytes: int) -> None:
        self._transfer.send_raw(nbytes)

    def probe_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float] | None:
        """The sync probe's logprobs under the weights this group holds (rank 0's; every rank forwards
        since ZeRO-3 gathers), to compare with what the engines compute after a sync."""
        from ..sync.probe import Probe, reference_logprobs
        from .checkpoint import _hf_target

        net = _hf_target(self.engine.module)
        was_training = net.training
        out = reference_logprobs(net.eval(), Probe(prompt_ids, completion_ids))
        net.train(was_training)
        return out if self.rank == 0 else None

    def save(self, directory: str, tokenizer_path: str | None, hf_only: bool = False) -> None:
        from .checkpoint import save_rank

        save_rank(self.engine, directory, self.rank, self.cfg.zero_stage == 3, tokenizer_path, hf_only)

    def load(self, directory: str) -> None:
        from .checkpoint import load_rank

        load_rank(self.engine, directory, self.rank)

    def ping(self) -> int:
        return os.getpid()


# ---------------------------------------------------------------- the group (driver side)

class LearnerGroup:
    """Driver-side handle: starts the ranks, splits batches, gathers results with timeouts."""

    def __init__(self, cfg: LearnerConfig, model_cfg: ModelConfig, objectives: dict, *,
                 model_kind: str | Callable = "causal_lm", wrap: Callable | None = None,
                 model_path: str | None = None, name: str = "learner", strategy: str = "PACK"):
        from ..actor_group import ActorGroup
        from ..models import resolve_model_path

        check_precision(cfg)
        self.cfg, self.name = cfg, name
        self.model_path = model_path or resolve_model_path(model_cfg)
        self.tokenizer_path = model_cfg.tokenizer or self.model_path
        bundle = {"CPU": cfg.cpus_per_rank, **({"GPU": cfg.gpus_per_rank} if cfg.gpus_per_rank else {}),
                  **cfg.resources}
        threads, n = max(1, int(cfg.cpus_per_rank)), cfg.num_ranks
        t0 = time.perf_counter()
        self.group = ActorGroup(LearnerActor, n, bundle, name=name, kind=f"{name} learner rank",
                                timeout_s=cfg.timeout_s, strategy=strategy, options={"max_concurrency": 1},
                                args=lambda i: (i, n, cfg, model_cfg, objectives, model_kind, wrap, threads),
                                error=LearnerError)
        self.actors = self.group.actors
        addr, port = self.wait(self.submit("address", ranks=[0]), "address", ranks=[0])[0]
        ready = self._call("setup", addr, port, self.model_path)
        self.trainable_params, self.nodes = ready[0][0], [node for _, node in ready]
        log.info("learner group %s: %d ranks, %d trainable params, ready in %.1fs", name, n,
                 self.trainable_params, time.perf_counter() - t0)

    # -- plumbing
    def wait(self, refs: list, what: str, ranks: list[int] | None = None) -> list:
        """The results of `refs` (one per rank of `ranks`, default all) with the group timeout; the first
        failure names its actor. A non-finite loss on any rank raises NonFiniteLossError."""
        import ray

        try:
            return self.group.wait(refs, what, ranks)
        except LearnerError as e:
            cause = e.__cause__
            if isinstance(cause, ray.exceptions.RayTaskError) and isinstance(getattr(cause, "cause", None),
                                                                              FloatingPointError):
                raise NonFiniteLossError(f"{what}: {cause.cause}", _ids_of(str(cause.cause))) from None
            raise

    def submit(self, method: str, *args, ranks: list[int] | None = None) -> list:
        """Start `method(*args)` on every rank (or on `ranks`) and return the refs (finish with `wait`):
        for calls that must run beside other actors' calls, like the weight transfer into the engines."""
        return self.group.submit(method, *args, ranks=ranks)

    def _call(self, method: str, *args, per_rank: list[tuple] | None = None) -> list:
        return self.wait(self.group.submit(method, *args, per_actor=per_rank), method)

    # -- the API drivers call
    def forward(self, objective: str, batch: dict, model: str = "policy") -> dict:
        """No-grad outputs of `objective.forward` for every row, in input order. Every rank gets rows
        (ZeRO-3 forwards gather collectively), small batches are padded by repeating row 0."""
        n = batch_len(batch)
        m = len(self.actors)
        padded = batch
        if n < m:
            padded = {k: v[:1].repeat(m - n, *[1] * (v.dim() - 1)) if hasattr(v, "repeat") and hasattr(v, "dim")
                      else list(v[:1]) * (m - n) for k, v in batch.items()}
            padded = {k: _cat(batch[k], padded[k]) for k in batch}
        shards = split_batch(padded, m)
        out = concat_outputs(self._call("forward", per_rank=[(objective, s, model) for s in shards]))
        return {k: v[:n] for k, v in out.items()}

    def train_step(self, objective: str, batch: dict) -> dict:
        """One optimizer step on `batch` (split over ranks, then over grad_accum micro-batches).
        Returns row-weighted means of the objective's stats, grad_norm, lr, tokens/s, step_time_s."""
        t0 = time.perf_counter()
        shards = split_batch(batch, len(self.actors), self.cfg.grad_accum)
        try:
            per_rank = self._call("train_step", per_rank=[(objective, s) for s in shards])
        except NonFiniteLossError as e:  # name the whole batch, not one rank's shard
            ids = list(batch.get("ids", []))
            raise NonFiniteLossError(f"train_step {objective}: non-finite loss, no step taken; batch ids={ids} "
                                     f"({e})", ids) from None
        total = sum(r["rows"] for r in per_rank)
        out = {k: sum(r[k] * r["rows"] for r in per_rank) / total for k in per_rank[0] if k != "rows"}
        out["grad_norm"], out["lr"] = per_rank[0]["grad_norm"], per_rank[0]["lr"]
        dt = time.perf_counter() - t0
        tokens = sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
        out.update(step_time_s=dt, tokens=tokens, tokens_per_s=tokens / dt if dt > 0 else math.nan)
        if not all(math.isfinite(v) for k, v in out.items() if k not in ("grad_norm",)):
            raise NonFiniteLossError(f"train_step {objective}: non-finite metrics {out}; ids={batch.get('ids')}",
                                     list(batch.get("ids", [])))
        return out

    def set_reference(self, path: str | None) -> None:
        """Load a frozen reference model from `path` on every rank ("initial": the starting weights)."""
        self._call("set_reference", self.model_path if path == "initial" else path)

    def set_lr(self, lr: float) -> None:
        self._call("set_lr", lr)

    def open_transfer(self, timeout_s: float) -> tuple[str, int]:
        """Rank 0 binds the weight-transfer store; (its node's address, port) for the engines."""
        return self.wait(self.submit("open_transfer", timeout_s, ranks=[0]), "open transfer", ranks=[0])[0]

    def probe_logprobs(self, probe) -> list[float]:
        """The probe's logprobs under the weights the group holds now (see `rlaif_ray.sync.probe`)."""
        return self._call("probe_logprobs", probe.prompt_ids, probe.completion_ids)[0]

    def state_for_sync(self):
        """Rank 0's HF-named full state dict, through the driver: for tests and inspection. Jobs move
        weights with `rlaif_ray.sync.WeightSync`, straight from rank 0 into the engines."""
        return self._call("state_for_sync")[0]

    def save(self, directory: str, extra: dict | None = None, hf_only: bool = False) -> None:
        """HF checkpoint (rank 0) + DeepSpeed engine/optimizer + per-rank RNG (not with `hf_only`: an
        export); `extra` (data cursor, metrics, ...) is written last as `trainer_state.json`, so its
        presence marks a complete save."""
        from .checkpoint import write_trainer_state

        self._call("save", directory, self.tokenizer_path, hf_only)
        write_trainer_state(directory, extra or {})

    def load(self, directory: str) -> dict:
        """Restore engine, optimizer and RNG from `save`; returns the saved `extra`."""
        from .checkpoint import read_trainer_state

        extra = read_trainer_state(directory)
        self._call("load", directory)
        return extra

    def shutdown(self) -> None:
        self.group.shutdown()
        self.actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def _cat(a, b):
    import torch

    return torch.cat([a, b]) if isinstance(a, torch.Tensor) else list(a) + list(b)


def _ids_of(message: str) -> list:
    import ast

    _, _, tail = message.partition("ids=")
    try:
        return list(ast.literal_eval(tail.strip().splitlines()[0])) if tail else []
    except (ValueError, SyntaxError):
        return []
