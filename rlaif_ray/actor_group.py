"""ActorGroup: N Ray actors of one class in a placement group the group owns. Every call fans out with
one deadline, and a failure names the actor and its node. The rollout pool, the labeling pool and the
learner group are each one of these plus what their role adds.

    group = ActorGroup(RolloutWorker, 2, {"CPU": 1}, name="rollout", kind="rollout worker",
                       timeout_s=600, args=lambda i: (path, cfg, seed + i))
    infos = group.call("info")                                     # one result per actor, in order
    outs = group.call("generate", per_actor=[(chunk,) for chunk in chunks])  # chunks[i] to actor i
    refs = group.submit("send", nbytes, ranks=[0])                 # beside other groups' calls...
    group.wait(refs, "send", ranks=[0])                            # ...finished with the same deadline
    group.shutdown("shutdown")                                     # a graceful method first, then kill

`bundles_per_actor > 1` gives every actor a STRICT_PACK placement group of its own with that many
bundles, the actor in the first (vLLM's tensor-parallel workers fill the rest); otherwise one group holds
one bundle per actor under `strategy`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from .cluster import bundle_strategy, placement_group, wait_all

log = logging.getLogger(__name__)


class ActorGroup:
    def __init__(self, cls: type, num: int, bundle: dict[str, float], *, name: str, kind: str, timeout_s: float,
                 args: Callable[[int], tuple], strategy: str = "PACK", bundles_per_actor: int = 1,
                 options: dict | None = None, error: type = RuntimeError):
        import ray

        self.kind, self.timeout_s, self.error = kind, timeout_s, error
        tag = uuid.uuid4().hex[:6]
        if bundles_per_actor > 1:
            self.pgs = [placement_group([dict(bundle)] * bundles_per_actor, "STRICT_PACK", f"{name}-{i}-{tag}",
                                        timeout_s) for i in range(num)]
            slots = [(pg, 0) for pg in self.pgs]
            own = {"num_cpus": 0, "num_gpus": 0}  # the bundles are for the actor's engine processes
        else:
            self.pgs = [placement_group([dict(bundle)] * num, strategy, f"{name}-{tag}", timeout_s)]
            slots = [(self.pgs[0], i) for i in range(num)]
            own = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}
        remote = ray.remote(cls)
        self.actors = [remote.options(name=f"{name}-{i}-{tag}", scheduling_strategy=bundle_strategy(pg, index),
                                      **{**own, **(options or {})}).remote(*args(i))
                       for i, (pg, index) in enumerate(slots)]
        self.nodes = _nodes_of(slots)
        self.names = [f"{kind} {i} on {node}" for i, node in enumerate(self.nodes)]

    def __len__(self) -> int:
        return len(self.actors)

    def submit(self, method: str, *args, per_actor: list[tuple] | None = None, ranks: list[int] | None = None) -> list:
        """Start `method` on every actor (or on `ranks`; the first len(per_actor) with `per_actor`), with
        `args` or `per_actor[i]`; the refs, in order."""
        ranks = self._ranks(ranks, per_actor)
        return [getattr(self.actors[r], method).remote(*(per_actor[n] if per_actor is not None else args))
                for n, r in enumerate(ranks)]

    def wait(self, refs: list, what: str, ranks: list[int] | None = None) -> list:
        """The results of `refs` (one per actor of `ranks`) within the group's deadline."""
        names = self.names if ranks is None else [self.names[r] for r in ranks]
        return wait_all(refs, names, self.timeout_s, what, self.error)

    def call(self, method: str, *args, per_actor: list[tuple] | None = None, ranks: list[int] | None = None) -> list:
        """`submit` then `wait`: one result per actor."""
        ranks = self._ranks(ranks, per_actor)
        return self.wait(self.submit(method, *args, per_actor=per_actor, ranks=ranks), method, ranks)

    def _ranks(self, ranks: list[int] | None, per_actor: list[tuple] | None) -> list[int]:
        return ranks if ranks is not None else list(range(len(self.actors) if per_actor is None else len(per_actor)))

    def shutdown(self, graceful: str | None = None, graceful_timeout_s: float = 60.0) -> None:
        """Call `graceful` on every actor (a dead one is only logged), then kill them and free the bundles."""
        import ray

        if graceful is not None:
            for actor, name in zip(self.actors, self.names, strict=True):
                try:
                    ray.get(getattr(actor, graceful).remote(), timeout=graceful_timeout_s)
                except Exception as e:  # a dead actor must not keep the others alive
                    log.warning("%s %s: %s", name, graceful, e)
        for actor in self.actors:
            ray.kill(actor)
        for pg in self.pgs:
            ray.util.remove_placement_group(pg)
        self.actors, self.pgs = [], []


def _nodes_of(slots: list[tuple]) -> list[str]:
    """The address of the node holding each (ready placement group, bundle index)."""
    import ray

    address = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    out = []
    for pg, index in slots:
        node_id = ray.util.placement_group_table(pg)["bundles_to_node_id"][index]
        out.append(address.get(node_id, node_id[:12]))
    return out
