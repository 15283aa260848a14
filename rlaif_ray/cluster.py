"""Start or attach Ray safely, and reserve placement groups with a clear error instead of a silent hang.

Never `ray stop`: it kills every Ray process on the host, including other users' clusters.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

from . import reaper
from .config import RayConfig

log = logging.getLogger(__name__)
_reaper = None

# Environment every actor of a local cluster inherits: offline hub, quiet tokenizers, vLLM on CPU.
ACTOR_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
}


def init_ray(cfg: RayConfig, env: dict[str, str] | None = None, shared: dict[str, str | None] | None = None) -> None:
    """`address='local'` starts a private Ray with its own temp dir; anything else attaches.

    Inside `ray job submit` the job already carries a runtime_env: attaching with another one
    fails, so we pass none there. `shared` names the paths every node must see (`check_shared_paths`).
    """
    import ray

    if not ray.is_initialized():
        _init(cfg, env)
    if shared:
        check_shared_paths(shared)


def _init(cfg: RayConfig, env: dict[str, str] | None) -> None:
    import ray

    t0 = time.perf_counter()
    if cfg.address == "local":
        env_vars = {**ACTOR_ENV, **_passthrough_env(), **(env or {})}
        temp_dir = cfg.temp_dir or tempfile.mkdtemp(prefix="rlaif-ray-")
        ray.init(
            address="local",
            # Logical CPUs are scheduling tokens: advertise at least 8 so that every role (rollout,
            # scorer, judges, learner ranks) fits on a laptop; the OS shares the real cores.
            num_cpus=cfg.num_cpus or max(os.cpu_count() or 1, 8),
            object_store_memory=cfg.object_store_mb * 2**20 if cfg.object_store_mb else None,
            _temp_dir=temp_dir,
            include_dashboard=False,
            runtime_env={"env_vars": env_vars},
            logging_level=logging.WARNING,
        )
        global _reaper
        if _reaper is None:  # one per driver process: kills what a SIGKILLed driver's cluster leaves behind
            _reaper = reaper.start()
    else:
        ray.init(address=cfg.address, logging_level=logging.WARNING)
    log.info("ray ready in %.1fs: %s", time.perf_counter() - t0, ray.cluster_resources())


def _passthrough_env() -> dict[str, str]:
    """Settings (not secrets) that actors must see as the driver does."""
    keys = ("HF_HOME", "HF_DATASETS_CACHE", "TORCH_EXTENSIONS_DIR", "RLAIF_RAY_CACHE", "DS_ACCELERATOR",
            "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")
    return {k: os.environ[k] for k in keys if k in os.environ}


class SharedPathError(RuntimeError):
    """A node of the cluster cannot see a path that every node must share."""


def check_shared_paths(paths: dict[str, str | None], timeout_s: float = 120.0) -> None:
    """One tiny task on every alive node checks that it sees each path the driver sees: the run dir (a
    marker file the driver writes there now, so a same-named local dir does not pass) and the model dirs.
    `run_dir` is created first. Paths the driver itself does not have (hub ids, unset options) are
    skipped. Node-local scratch (/dev/shm, /tmp, Ray's temp dir) is never shared on a real cluster: keep
    run_dir and models elsewhere."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if paths.get("run_dir"):
        os.makedirs(paths["run_dir"], exist_ok=True)
    wanted: dict[str, str] = {}
    for name, path in paths.items():
        if path and os.path.exists(path):
            wanted[name] = os.path.abspath(path)
    markers = []
    if os.path.isdir(wanted.get("run_dir", "")):
        markers.append(os.path.join(wanted["run_dir"], f".shared-check-{uuid.uuid4().hex[:8]}"))
        open(markers[0], "w").close()
        wanted["run_dir"] = markers[0]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    try:
        if len(nodes) < 2 or not wanted:
            return

        @ray.remote(num_cpus=0)
        def unseen(check: dict[str, str]) -> list[str]:
            return [name for name, path in check.items() if not os.path.exists(path)]

        refs = [unseen.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(wanted) for n in nodes]
        for node, missing in zip(nodes, ray.get(refs, timeout=timeout_s), strict=True):
            if missing:
                shown = ", ".join(f"{m} {paths[m]}" for m in missing)
                raise SharedPathError(
                    f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]}) cannot see {shown}: every node "
                    "must see run_dir and the model paths (put them on the cluster's shared filesystem; "
                    "node-local /tmp and /dev/shm are not shared)")
    finally:
        for marker in markers:
            os.remove(marker)


def placement_group(bundles: list[dict[str, float]], strategy: str, name: str, timeout_s: float = 120.0):
    """Reserve `bundles` and wait; on timeout raise with what was asked and what the cluster has."""
    import ray
    from ray.util.placement_group import placement_group as _pg

    pg = _pg(bundles, strategy=strategy, name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise RuntimeError(
            f"placement group {name!r} ({strategy}, bundles={bundles}) not placed within {timeout_s:.0f}s; "
            f"cluster has {ray.cluster_resources()} of which free {ray.available_resources()}")
    return pg


def wait_all(refs: list, names: list[str], timeout_s: float, what: str, error: type = RuntimeError) -> list:
    """`ray.get` every ref within one deadline, results in order. A call that fails, whose actor died, or
    that is still running at the deadline raises `error` naming the actor(s) (`names[i]` for `refs[i]`);
    the underlying Ray error is the `__cause__`."""
    import ray

    deadline = time.monotonic() + timeout_s
    index = {r: i for i, r in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            late = [names[index[r]] for r in pending]
            raise error(f"{what}: {', '.join(late)} did not answer within {timeout_s:.0f}s")
        i = index[ready[0]]
        try:
            results[i] = ray.get(ready[0])
        except ray.exceptions.RayActorError as e:
            raise error(f"{what}: {names[i]} died: {e}") from e
        except ray.exceptions.RayTaskError as e:
            raise error(f"{what}: {names[i]} failed: {e}") from e
    return results


def bundle_strategy(pg, index: int):
    """Scheduling strategy that pins an actor to bundle `index` of `pg`."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index,
                                            placement_group_capture_child_tasks=True)
