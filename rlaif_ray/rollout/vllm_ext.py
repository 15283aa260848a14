"""Methods vLLM mixes into each of its engine workers (`LLM(worker_extension_cls=...)`), called through
`collective_rpc`: the worker process that holds the model (one per tensor-parallel rank, on GPU or CPU)
joins the weight-transfer group itself and loads what arrives with vLLM's in-place `reload_weights`
(the CPU engine repacks its linear weights, so that, not `model.load_weights`, is the entry point).
Received tensors stream straight from the group into the reload: nothing is staged on disk.
"""

from __future__ import annotations

WORKER_EXTENSION = "rlaif_ray.rollout.vllm_ext.WeightReceiver"


class WeightReceiver:
    """Mixed into vLLM's Worker class; `self.rank` is the worker's rank inside its engine."""

    def rlaif_join_transfer(self, host: str, port: int, rank_base: int, world: int, backend: str,
                            timeout_s: float) -> None:
        from ..sync.transfer import TransferGroup

        self.rlaif_transfer = TransferGroup.join(host, port, rank_base + self.rank, world, backend, timeout_s)

    def rlaif_receive_weights(self) -> None:
        self.reload_weights(weights_iterator=self.rlaif_transfer.receive(), is_checkpoint_format=True)

    def rlaif_receive_raw(self, nbytes: int) -> None:
        self.rlaif_transfer.receive_raw(nbytes)
