"""The weight-transfer group: learner rank 0 broadcasts HF-named tensors in buckets to every engine rank.

One group {learner rank 0 = rank 0, engine ranks 1..N} built beside (not inside) each process's own
torch.distributed world, on NCCL between GPUs and gloo between CPUs; nothing else differs.

    store = serve_store(timeout_s)                                  # learner rank 0: bind, then publish
    group = TransferGroup.join(host, store.port, rank, world, backend, timeout_s, store=store)
    group.send(named_tensors, bucket_bytes, dtype)                 # rank 0: returns bytes sent
    for name, tensor in group.receive(): ...                       # ranks 1..N, in the sender's order

A bucket is three broadcasts: its sizes, its header (names, dtypes, shapes, offsets; pickled) and one
flat uint8 buffer. Sizes (0, 0) end the stream. A receiver yields views of a fresh buffer per bucket, so a
consumer that keeps tensors (vLLM's layer-wise reload does, until a layer is complete) never sees them
overwritten. `send_raw` / `receive_raw` move one flat buffer of the same bytes: the bench's transport floor.
"""

from __future__ import annotations

import datetime
import math
import pickle
from collections.abc import Iterable, Iterator

PREFIX = "rlaif-weight-transfer"


def serve_store(timeout_s: float):
    """Rank 0's TCPStore on a port the kernel picks as it binds (no probe-then-bind race)."""
    import torch.distributed as dist

    return dist.TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=timeout_s))


class TransferGroup:
    """One process's membership of the transfer group."""

    def __init__(self, pg, rank: int, world: int, device):
        self.pg, self.rank, self.world, self.device = pg, rank, world, device

    @classmethod
    def join(cls, host: str, port: int, rank: int, world: int, backend: str, timeout_s: float,
             store=None) -> TransferGroup:
        """Blocks until all `world` members have joined. `store`: rank 0's own (from `serve_store`)."""
        import torch
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        if store is None:
            store = dist.TCPStore(host, port, world, is_master=False, timeout=timeout)
        prefixed = dist.PrefixStore(PREFIX, store)
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            pg = dist.ProcessGroupNCCL(prefixed, rank, world, opts)
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            pg = dist.ProcessGroupGloo(prefixed, rank, world, timeout)
            device = torch.device("cpu")
        group = cls(pg, rank, world, device)
        group._store = store  # rank 0's master store must live as long as the group
        return group

    def _bcast(self, tensor) -> None:
        self.pg.broadcast([tensor], _root0()).wait()

    def _sizes(self, header_len: int = 0, data_len: int = 0):
        import torch

        sizes = torch.tensor([header_len, data_len], dtype=torch.int64, device=self.device)
        self._bcast(sizes)
        return int(sizes[0]), int(sizes[1])

    def send(self, named: Iterable, bucket_bytes: int, dtype=None) -> int:
        """Broadcast (name, tensor) pairs; floating tensors cast to `dtype` (the engines') when given.
        Returns the bytes sent. A tensor bigger than a bucket goes alone in one of its own size."""
        total, pending, used = 0, [], 0
        for name, t in named:
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            nbytes = t.numel() * t.element_size()
            if pending and used + nbytes > bucket_bytes:
                total += self._send_bucket(pending, used)
                pending, used = [], 0
            pending.append((name, t.detach().to(self.device)))
            used += nbytes
        if pending:
            total += self._send_bucket(pending, used)
        self._sizes(0, 0)
        return total

    def _send_bucket(self, tensors: list, nbytes: int) -> int:
        import torch

        buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        header, off = [], 0
        for name, t in tensors:
            n = t.numel() * t.element_size()
            buf[off:off + n].copy_(t.contiguous().view(-1).view(torch.uint8))
            header.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), off))
            off += n
        head = torch.frombuffer(bytearray(pickle.dumps(header)), dtype=torch.uint8).to(self.device)
        self._sizes(head.numel(), nbytes)
        self._bcast(head)
        self._bcast(buf)
        return nbytes

    def receive(self) -> Iterator:
        """(name, tensor) pairs as the sender streams them, on this member's device."""
        import torch

        while True:
            header_len, data_len = self._sizes()
            if header_len == 0:
                return
            head = torch.empty(header_len, dtype=torch.uint8, device=self.device)
            self._bcast(head)
            buf = torch.empty(data_len, dtype=torch.uint8, device=self.device)
            self._bcast(buf)
            for name, dtype, shape, off in pickle.loads(head.cpu().numpy().tobytes()):
                dt = getattr(torch, dtype)
                n = math.prod(shape) * dt.itemsize
                yield name, buf[off:off + n].view(dt).view(shape)

    def send_raw(self, nbytes: int) -> None:
        import torch

        self._bcast(torch.zeros(nbytes, dtype=torch.uint8, device=self.device))

    def receive_raw(self, nbytes: int) -> None:
        import torch

        self._bcast(torch.empty(nbytes, dtype=torch.uint8, device=self.device))

    def close(self) -> None:
        self.pg = self._store = None


def _root0():
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return opts

