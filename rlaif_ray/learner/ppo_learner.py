"""PPOLearnerGroup: M Ray actors forming one torch.distributed (gloo/NCCL) group that run the PPO objective.

Each rank holds a replica of the policy (with its value head), a frozen reference and a torch AdamW;
a batch's rows are split over the ranks in contiguous chunks, gradients are averaged with one
all-reduce per step and clipped, so the replicas stay identical (data parallel, ZeRO stage 0).

    group = PPOLearnerGroup(model_path, policy_cfg, learner_cfg, ppo_cfg, temperature)
    stats = group.forward(batch)        # logprobs, values, entropy, ref_logprobs  [B, L-1]
    stats = group.train_step(batch)     # one optimizer step on this minibatch: loss terms + grad_norm
    state = group.state_for_sync()      # HF names, LoRA merged, for WeightSync
    group.save(dir); group.load(dir)    # weights (HF safetensors) + optimizer + RNG of every rank

This is PPO's own small group, written while the generic DeepSpeed LearnerGroup was not yet in the
tree; it uses the same objective (`ppo_objective.PPOObjective`) a DeepSpeed group would run.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


class LearnerError(RuntimeError):
    """A learner rank died, timed out or produced a non-finite value; the message names it."""


class _PPORank:
    """One rank: policy (+ value head), frozen reference, optimizer."""

    def __init__(self, rank: int, world: int, model_path: str, policy_cfg, learner_cfg, ppo_cfg, temperature: float):
        import torch

        from ..models import apply_lora, load_causal_lm
        from .ppo_objective import PPOObjective

        torch.set_num_threads(max(1, int(learner_cfg.cpus_per_rank)))  # Ray pins actors to one thread
        torch.manual_seed(learner_cfg.seed + rank)
        self.rank, self.world, self.cfg = rank, world, learner_cfg
        self.objective = PPOObjective(ppo_cfg, temperature)
        if learner_cfg.dtype == "fp16":
            raise ValueError("learner.dtype=fp16 is not supported on CPU; use bf16 or fp32")
        base_cfg = type(policy_cfg)(**{**policy_cfg.__dict__, "dtype": learner_cfg.dtype})
        lm = apply_lora(load_causal_lm(base_cfg, model_path, trainable=True), base_cfg)
        if learner_cfg.grad_checkpointing:
            lm.gradient_checkpointing_enable()
        self.model = self.objective.wrap_model(lm)
        self.model.train()
        self.reference = load_causal_lm(base_cfg, model_path, trainable=False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=learner_cfg.lr, weight_decay=learner_cfg.weight_decay)

    def address(self) -> str:
        import socket

        s = socket.socket()
        s.bind(("", 0))
        port = s.getsockname()[1]
        s.close()
        return f"tcp://{os.environ.get('RAY_NODE_IP', '127.0.0.1')}:{port}"

    def init_group(self, address: str) -> None:
        import datetime

        import torch.distributed as dist

        if self.world > 1:
            dist.init_process_group("gloo", init_method=address, rank=self.rank, world_size=self.world,
                                    timeout=datetime.timedelta(seconds=self.cfg.timeout_s))

    def _micro(self, batch: dict):
        n, size = len(batch["input_ids"]), self.cfg.micro_batch_size
        for start in range(0, n, size):
            yield {k: v[start:start + size] for k, v in batch.items()}, min(size, n - start) / n

    def forward(self, batch: dict) -> dict:
        import torch

        from .ppo_objective import token_logprobs

        outs = []
        self.model.eval()
        for mb, _ in self._micro(batch):
            out = self.objective.forward(self.model, mb)
            with torch.no_grad():
                logits = self.reference(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
                out["ref_logprobs"] = token_logprobs(logits / self.objective.temperature, mb["input_ids"])
            outs.append(out)
        self.model.train()
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def train_step(self, batch: dict) -> dict:
        import torch
        import torch.distributed as dist

        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        bad = 0.0
        for mb, weight in self._micro(batch):
            loss, stats = self.objective.loss(self.model, mb)
            if not torch.isfinite(loss):
                bad = 1.0
                break
            (loss * weight).backward()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v) * weight
        flag = torch.tensor([bad])
        if self.world > 1:  # every rank takes part in the collectives, so a bad rank cannot hang the rest
            dist.all_reduce(flag)
        if flag.item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            return {"loss": float("nan"), "nonfinite_rank": self.rank if bad else -1}
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.world > 1:  # average gradients: one flat all-reduce keeps gloo fast
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for p, g in zip(params, grads, strict=True):
                p.grad = flat[offset:offset + g.numel()].view_as(p).to(p.dtype)
                offset += g.numel()
        max_norm = self.cfg.max_grad_norm or float("inf")
        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        return totals

    def state_for_sync(self) -> dict:
        from ..models.lora import merged_state_dict

        return {k: v.detach().cpu().clone() for k, v in merged_state_dict(self.model.lm if hasattr(self.model, "lm")
                                                                          else self.model).items()}

    def save(self, directory: str) -> None:
        import torch

        os.makedirs(directory, exist_ok=True)
        if self.rank == 0:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
                       os.path.join(directory, "learner_state.pt"))
            self._save_hf(os.path.join(directory, "policy"))
        torch.save(torch.get_rng_state(), os.path.join(directory, f"rng_rank{self.rank}.pt"))

    def _save_hf(self, directory: str) -> None:
        """The policy as a plain HF model (LoRA merged) + its value head, loadable by vLLM and RMs alike."""
        import torch
        from transformers import AutoModelForCausalLM

        lm = self.model.lm if hasattr(self.model, "lm") else self.model
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        plain = AutoModelForCausalLM.from_config(base.config, dtype=torch.float32)
        plain.load_state_dict({k: v.float() for k, v in self.state_for_sync().items()}, strict=False)
        plain.save_pretrained(directory, safe_serialization=True)
        if hasattr(self.model, "value_head"):
            self.model.value_head.save(directory)

    def load(self, directory: str) -> None:
        import torch

        state = torch.load(os.path.join(directory, "learner_state.pt"), weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = os.path.join(directory, f"rng_rank{self.rank}.pt")
        if os.path.exists(rng):
            torch.set_rng_state(torch.load(rng, weights_only=False))


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (i < extra)
        out.append((start, end))
        start = end
    return out


class PPOLearnerGroup:
    """Driver-side handle of the ranks: splits batches, gathers results, names a failed rank."""

    def __init__(self, model_path: str, policy_cfg, learner_cfg, ppo_cfg, temperature: float = 1.0,
                 strategy: str = "PACK"):
        import ray

        from ..cluster import bundle_strategy, placement_group

        t0 = time.perf_counter()
        self.cfg, m = learner_cfg, learner_cfg.num_ranks
        bundle = {"CPU": learner_cfg.cpus_per_rank, **({"GPU": learner_cfg.gpus_per_rank}
                                                       if learner_cfg.gpus_per_rank else {})}
        self.pg = placement_group([dict(bundle) for _ in range(m)], strategy, "ppo-learner")
        actor = ray.remote(_PPORank)
        self.ranks = [actor.options(num_cpus=learner_cfg.cpus_per_rank, num_gpus=learner_cfg.gpus_per_rank,
                                    scheduling_strategy=bundle_strategy(self.pg, r))
                      .remote(r, m, model_path, policy_cfg, learner_cfg, ppo_cfg, temperature) for r in range(m)]
        address = self._get([self.ranks[0].address.remote()], "start")[0]
        self._get([r.init_group.remote(address) for r in self.ranks], "join the process group")
        self.startup_s = time.perf_counter() - t0
        log.info("%d PPO learner ranks ready in %.1fs", m, self.startup_s)

    def _get(self, refs: list, what: str) -> list:
        import ray

        try:
            return ray.get(refs, timeout=self.cfg.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise LearnerError(f"learner: {what} did not finish within {self.cfg.timeout_s:.0f}s "
                               "(learner.timeout_s)") from None
        except ray.exceptions.RayActorError as e:
            dead = [i for i, r in enumerate(self.ranks) if not _alive(r)]
            raise LearnerError(f"learner rank(s) {dead or '?'} died during {what}: {e}") from e

    def _scatter(self, method: str, batch: dict, what: str) -> list:
        parts = _split(len(batch["input_ids"]), len(self.ranks))
        refs = [getattr(r, method).remote({k: v[a:b] for k, v in batch.items()})
                for r, (a, b) in zip(self.ranks, parts, strict=True)]
        return self._get(refs, what)

    def forward(self, batch: dict) -> dict:
        import torch

        outs = self._scatter("forward", batch, "forward")
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def train_step(self, batch: dict) -> dict:
        """One optimizer step; stats averaged over ranks (a rank with a non-finite loss is named)."""
        outs = self._scatter("train_step", batch, "train step")
        bad = [o["nonfinite_rank"] for o in outs if o.get("nonfinite_rank", -1) >= 0]
        if bad or any("nonfinite_rank" in o for o in outs):
            return {"loss": float("nan"), "nonfinite_rank": bad[0] if bad else -1}
        return {k: sum(o[k] for o in outs) / len(outs) for k in outs[0]}

    def state_for_sync(self) -> dict:
        return self._get([self.ranks[0].state_for_sync.remote()], "state for sync")[0]

    def save(self, directory: str) -> None:
        self._get([r.save.remote(directory) for r in self.ranks], "save")

    def load(self, directory: str) -> None:
        self._get([r.load.remote(directory) for r in self.ranks], "load")

    def shutdown(self) -> None:
        import ray

        for r in self.ranks:
            ray.kill(r)
        ray.util.remove_placement_group(self.pg)
        self.ranks = []


def _alive(actor) -> bool:
    import ray

    try:
        ray.get(actor.__ray_ready__.remote(), timeout=5)
        return True
    except Exception:
        return False
