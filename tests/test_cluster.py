"""Ray plumbing: the session's local cluster runs tasks and actors; placement groups fail loudly."""

import os

import pytest

from rlaif_ray.cluster import bundle_strategy, init_ray, placement_group
from rlaif_ray.config import RayConfig


def test_remote_call_and_actor_round_trip(ray_session):
    ray = ray_session

    @ray.remote
    def square(x):
        return x * x, os.environ.get("HF_HUB_OFFLINE")

    assert ray.get([square.remote(i) for i in range(4)]) == [(i * i, "1") for i in range(4)]

    @ray.remote
    class Counter:
        def __init__(self, start):
            self.value = start

        def add(self, payload):
            self.value += sum(payload["items"])
            return {"value": self.value, "pid": os.getpid()}

    counter = Counter.remote(10)
    first = ray.get(counter.add.remote({"items": [1, 2]}))
    second = ray.get(counter.add.remote({"items": [3]}))
    assert (first["value"], second["value"]) == (13, 16)  # state lives in one actor process
    assert first["pid"] == second["pid"] != os.getpid()
    ray.kill(counter)


def test_init_ray_attaches_to_the_running_session(ray_session):
    before = ray_session.get_runtime_context().get_node_id()
    init_ray(RayConfig(address="local"))  # already initialised: a no-op, not a second cluster
    assert ray_session.get_runtime_context().get_node_id() == before
    assert ray_session.cluster_resources()["CPU"] >= 8  # logical CPUs: every role fits on a laptop


def test_actor_pinned_to_a_bundle(ray_session):
    ray = ray_session
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], "PACK", name="test-pack", timeout_s=60)
    try:
        @ray.remote(num_cpus=1)
        class Where:
            def bundle(self):
                return ray.get_runtime_context().get_placement_group_id()

        actors = [Where.options(scheduling_strategy=bundle_strategy(pg, i)).remote() for i in range(2)]
        assert ray.get([a.bundle.remote() for a in actors]) == [pg.id.hex()] * 2
        for a in actors:
            ray.kill(a)
    finally:
        ray.util.remove_placement_group(pg)


def test_unplaceable_placement_group_names_bundles_and_resources(ray_session):
    with pytest.raises(RuntimeError) as e:
        placement_group([{"CPU": 1}, {"CPU": 512}], "STRICT_PACK", name="too-big", timeout_s=2)
    msg = str(e.value)
    assert "placement group 'too-big' (STRICT_PACK, bundles=[{'CPU': 1}, {'CPU': 512}]) not placed within 2s" in msg
    assert "cluster has {" in msg and "'CPU': " in msg and "of which free" in msg
