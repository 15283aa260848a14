"""One learner rank's torch.distributed group and DeepSpeed engine, built from a `LearnerConfig`.

    store = serve_rendezvous(cfg)                      # rank 0, before the others hear (addr, store.port)
    init_process_group(rank, world, addr, port, cfg, store=store if rank == 0 else None)  # gloo / NCCL
    engine = build_engine(module, cfg, world)          # deepspeed.initialize with ZeRO 0-3

Only this module knows DeepSpeed's config format. Torch AdamW is the default optimizer: DeepSpeed's
own FusedAdam / CPUAdam are JIT-compiled C++ (minutes on first use) and only worth it on big models.
"""

from __future__ import annotations

import datetime
import logging
import os
import time

from ..config import ConfigError, LearnerConfig

log = logging.getLogger(__name__)


def check_precision(cfg: LearnerConfig) -> None:
    """Refuse fp16 on CPU before any actor starts (DeepSpeed would fail late, inside every rank)."""
    if cfg.dtype == "fp16" and cfg.gpus_per_rank == 0:
        raise ConfigError("learner.dtype: fp16 training is refused by DeepSpeed on CPU; use bf16 or fp32")


def serve_rendezvous(cfg: LearnerConfig):
    """Rank 0's TCPStore on a port the kernel picks as it binds. Probing a free port and binding it later
    is a race: another process can take the port in between, and the group then hangs in rendezvous."""
    from ..sync.transfer import serve_store

    return serve_store(cfg.timeout_s)


def init_process_group(rank: int, world: int, addr: str, port: int, cfg: LearnerConfig, store=None) -> None:
    """Join the group through rank 0's store (`store` on rank 0 itself) and make DeepSpeed's comm layer
    adopt it (no second rendezvous)."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0" if cfg.gpus_per_rank else str(rank),
                      MASTER_ADDR=addr, MASTER_PORT=str(port))
    if cfg.gpus_per_rank == 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ["LOCAL_RANK"] = "0"
    backend = "nccl" if cfg.gpus_per_rank > 0 else "gloo"
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    if store is None:
        store = dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    import deepspeed
    import deepspeed.ops

    if cfg.gpus_per_rank == 0 and not cfg.shm_comm:
        # The shm all-reduce is a JIT-built C++ op; marking it incompatible makes DeepSpeed use gloo.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    elif cfg.gpus_per_rank == 0:
        load_shm_op(cfg.timeout_s)  # built (or loaded) here, so init_distributed finds it in DeepSpeed's cache
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)


def load_shm_op(timeout_s: float) -> None:
    """Build or load DeepSpeed's CPU shared-memory all-reduce into TORCH_EXTENSIONS_DIR, one process at a time.

    Torch guards a JIT build with a plain `lock` file. A builder killed mid-build (a rank stopped at a timeout,
    a cancelled job) leaves it behind, and every later rank on any run waits on it forever. An flock dies with
    its process: holding it, nobody else is building, so a `lock` file found then is stale and removed."""
    import fcntl

    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import get_default_build_root

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    directory = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root(), builder.name)
    os.makedirs(directory, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(os.path.join(directory, "build.flock"), "w") as guard:
        while True:
            try:
                fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{directory}: another process has held the build lock of DeepSpeed's "
                                       f"shm op for {timeout_s:.0f}s") from None
                time.sleep(0.5)
        stale = os.path.join(directory, "lock")
        if os.path.exists(stale):
            log.warning("%s: removing the lock file a killed build left behind", stale)
            os.remove(stale)
        t0 = time.perf_counter()
        builder.load(verbose=False)  # cached in DeepSpeed's OpBuilder._loaded_ops for init_distributed
        log.info("DeepSpeed shm op ready in %.1fs (%s)", time.perf_counter() - t0, directory)


def ds_config(cfg: LearnerConfig, world: int) -> dict:
    """DeepSpeed config dict: batch shape, ZeRO stage, precision, clipping, optional DS optimizers."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        # Gather small params eagerly; keeps tiny models from paying a fetch per layer.
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=5e7)
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    conf = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.dtype == "bf16"},
        "fp16": {"enabled": cfg.dtype == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.optimizer != "torch_adamw":
        conf["optimizer"] = {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                                         "torch_adam": False}}
    return conf


def build_engine(module, cfg: LearnerConfig, world: int):
    """`deepspeed.initialize` on `module` (fp32 master weights; DeepSpeed casts for bf16)."""
    import deepspeed
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the learner model has no trainable parameters")
    optimizer = None
    if cfg.optimizer == "torch_adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine, *_ = deepspeed.initialize(model=module, model_parameters=params, optimizer=optimizer,
                                      config=ds_config(cfg, world))
    return engine
