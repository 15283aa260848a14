"""GPU weight sync: NCCL broadcast from learner rank 0 straight into the vLLM engines' GPU workers, using
vLLM's own weight-transfer engine (vLLM >= 0.3x: `weight_transfer_config={"backend": "nccl"}`, which
`VLLMEngine` sets when the worker has GPUs). Parameters are streamed in packed buckets of
`SyncConfig.bucket_mb`; the learner's ZeRO-3 parameters are gathered one at a time as the source is
iterated, so no full copy of the model is ever held.

Runs inside the learner's rank-0 actor (the process holding the GPU tensors):

    sender = NcclSender(pool.workers, cfg.rollout.tensor_parallel_size, cfg.sync, address, port,
                        meta=[(hf_name, dtype, shape), ...], produce=lambda: iter_hf_named_tensors())
    sender.send()                                             # every sync
    # then, in the driver: WeightSync(pool, cfg.sync).confirm(version, probe_reference)

Needs CUDA and NCCL; the CPU path (/dev/shm + reload_weights, `weight_sync.py`) is the one tested here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

from ..config import SyncConfig


class _Source:
    """vLLM `WeightSource` over a callable yielding (HF name, full tensor) pairs in a fixed order."""

    def __init__(self, meta: list[tuple[str, object, tuple[int, ...]]], produce: Callable[[], Iterator]):
        self.meta, self.produce = meta, produce

    def metadata(self):
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(n, d, tuple(s)) for n, d, s in self.meta]

    def __iter__(self):
        return iter(self.produce())


class NcclSender:
    """Opens one NCCL group {learner rank 0, every engine GPU worker} and broadcasts weights into it."""

    def __init__(self, workers: list, tp_size: int, cfg: SyncConfig, master_address: str, master_port: int,
                 meta: list[tuple[str, object, tuple[int, ...]]], produce: Callable[[], Iterator]):
        import torch.distributed as dist
        from vllm.distributed.weight_transfer.base import WeightSource
        from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )

        source = type("HFSource", (_Source, WeightSource), {})(meta, produce)
        info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                                   world_size=1 + len(workers) * tp_size, rank=0,
                                   packed_buffer_size_bytes=cfg.bucket_mb * 2**20)
        # A dead peer must fail the step, not hang it: NCCL ops inherit torch's default group timeout.
        dist.distributed_c10d.default_pg_timeout = timedelta(seconds=cfg.timeout_s)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(
            info, client=RayVLLMWeightSyncClient(workers), source=source)

    def send(self) -> None:
        self.engine.send_weights()

    def close(self) -> None:
        self.engine.shutdown()
