"""FeedbackPool on a real local Ray: labeling into the store, node ids, a pool actor killed mid-run,
pointwise scores and unstored comparisons."""

import time

import pytest

from rlaif_ray.config import FeedbackPoolConfig, JudgeConfig, RateLimitConfig, RayConfig, RetryConfig
from rlaif_ray.data import PairRecord
from rlaif_ray.feedback import LabelStore, config_hash, consolidate, tasks_for
from rlaif_ray.testing.fake_api import FakeAPI, p_first, score_of

KEY = "sk-test-pool-SECRET-77"


@pytest.fixture()
def fake(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = FakeAPI(api_key=KEY).start()
    yield server
    server.stop()


def _pool(fake, tmp_path, rate_limit: RateLimitConfig | None = None, **kw):
    from rlaif_ray.feedback.pool import FeedbackPool

    judge = JudgeConfig(kind="openai", model="fake-judge", base_url=fake.base_url + "/v1")
    cfg = FeedbackPoolConfig(judge=judge, rate_limit=rate_limit or RateLimitConfig(requests_per_min=0), retry=RetryConfig(base_delay_s=0.01, timeout_s=10),
                             **kw)
    return FeedbackPool(cfg, RayConfig(), str(tmp_path), config_hash(judge)), judge


def test_pool_kill_actor_mid_run_loses_nothing(ray_session, fake, tmp_path, monkeypatch):
    import threading

    # The actors get the key through the environment Ray gives them (runtime_env of this session).
    ray = ray_session
    pairs = [PairRecord(prompt=f"q{i}", response_a=f"a{i}", response_b=f"b{i}") for i in range(150)]
    fake.latency_s = 0.2
    pool, judge = _pool(fake, tmp_path, num_actors=2, max_in_flight=8, shard_size=16)
    try:
        assert {n["index"] for n in pool.nodes()} == {0, 1} and all(n["node_id"] for n in pool.nodes())
        tasks = tasks_for(pairs, judge)
        store = LabelStore(tmp_path)

        def kill_when_started():
            while store.refresh() == 0 and not store.index:
                time.sleep(0.05)
            ray.kill(pool.actors[0], no_restart=False)  # Ray restarts it (max_restarts)

        killer = threading.Thread(target=kill_when_started)
        killer.start()
        summary = pool.label(tasks)
        killer.join()
    finally:
        pool.shutdown()
    store = LabelStore(tmp_path)
    store.refresh()
    chash = config_hash(judge)
    assert all(store.done(t.pair_id, chash, t.order, t.sample) for t in tasks)  # nothing lost
    assert summary["requeued_shards"] >= 1
    rows, stats = consolidate(pairs, store, judge, chash, "openai:fake-judge")
    assert stats["labeled"] == len(pairs)
    for p, row in zip(pairs, rows, strict=True):
        expected = (p_first(p.response_a, p.response_b) + 1 - p_first(p.response_b, p.response_a)) / 2
        assert row["p_a"] == pytest.approx(expected, abs=1e-9)
    # Calls in flight on the killed actor were answered but never stored: at most max_in_flight per shard.
    assert fake.stats()["repaid"] <= 2 * 8


def test_pool_score_and_compare(ray_session, fake, tmp_path):
    pool, _ = _pool(fake, tmp_path, num_actors=2, max_in_flight=4)
    try:
        items = [("q", f"response {i}") for i in range(10)]
        scores = pool.score(items)
        details = pool.score_details(items[:2])
        comps = pool.compare([("q", "x1", "y1"), ("q", "x2", "y2")])
    finally:
        pool.shutdown()
    for (_, r), s in zip(items, scores, strict=True):
        assert s is not None and 0.0 <= s <= 1.0
        assert abs((1 + 9 * s) - score_of(r)) <= 1  # expected score over the fake's digit logprobs
    assert details[0]["error"] is None and details[0]["cost_usd"] == 0.0  # a local server: free by default
    for (a, b), c in zip([("x1", "y1"), ("x2", "y2")], comps, strict=True):
        assert c == pytest.approx((p_first(a, b) + 1 - p_first(b, a)) / 2, abs=1e-9)


def test_pool_actors_share_one_budget_that_learns_the_servers_limit(ray_session, fake, tmp_path):
    # The pool starts from its configured 4,000 requests/min; the server allows 1,200 and says so in its
    # headers. One budget actor serves both feedback actors: it learns the limit once and counts every
    # attempt of both.
    fake.requests_per_min, fake.latency_s = 1200.0, 0.05
    pairs = [PairRecord(prompt=f"q{i}", response_a=f"a{i}", response_b=f"b{i}") for i in range(40)]
    pool, judge = _pool(fake, tmp_path, num_actors=2, max_in_flight=8, shard_size=16,
                        rate_limit=RateLimitConfig(requests_per_min=4000.0))
    try:
        assert pool.budget is not None and pool.limiter()["acquired"] == 0
        summary = pool.label(tasks_for(pairs, judge))
    finally:
        pool.shutdown()
    shared = summary["limiter"]
    assert summary["ok"] == 80 and summary["failed"] == 0
    assert shared["learned_limit"] == {"requests": 1200.0} and shared["requests_per_min"] <= 1200.0
    # Both actors drew every attempt from it (and their OpenAI constraint probes, which are not labels).
    assert shared["acquired"] >= summary["attempts"] >= 80
    assert shared["congestion_429"] == fake.stats()["requests"].get("429-rate", 0)


def test_pool_local_judge_in_actor(ray_session, tmp_path, tiny_model_dir):
    from rlaif_ray.feedback.pool import FeedbackPool

    judge = JudgeConfig(kind="local", model=str(tiny_model_dir), local_backend="hf", local_max_model_len=512)
    cfg = FeedbackPoolConfig(num_actors=1, judge=judge, rate_limit=RateLimitConfig(requests_per_min=0))
    pairs = [PairRecord(prompt=f"q{i}", response_a=f"yes {i}", response_b=f"no {i}") for i in range(3)]
    pool = FeedbackPool(cfg, RayConfig(), str(tmp_path), config_hash(judge))
    try:
        summary = pool.label(tasks_for(pairs, judge))
    finally:
        pool.shutdown()
    store = LabelStore(tmp_path)
    store.refresh()
    rows, stats = consolidate(pairs, store, judge, config_hash(judge), "local")
    assert summary["ok"] == 6 and stats["labeled"] == 3
    assert all(0.0 < r["p_a_ab"] < 1.0 for r in rows)  # real probabilities, not hard votes
