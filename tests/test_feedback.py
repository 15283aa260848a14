"""Judges against the loopback fake (real SDKs), parsing, both-order soft labels, every fault class,
the durable store and costs. No Ray here: see test_label_pool.py for the actors."""

import asyncio
import json
import math

import pytest

from rlaif_ray.config import JudgeConfig, RateLimitConfig, RetryConfig
from rlaif_ray.data import PairRecord
from rlaif_ray.feedback import LabelStore, Task, consolidate, make_judge, tasks_for
from rlaif_ray.feedback.cost import cost_usd
from rlaif_ray.feedback.parsing import ParseError, p_from_logprobs, parse_letter, parse_score
from rlaif_ray.feedback.ratelimit import RateLimiter
from rlaif_ray.feedback.store import ShardWriter, record_of
from rlaif_ray.feedback.types import Usage, Verdict
from rlaif_ray.testing.fake_api import p_first, score_of, yes_probability

FN = "rlaif_ray.testing.judge_functions"
FAST_RETRY = RetryConfig(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, retry_after_cap_s=0.2, timeout_s=5)


def _judge(fake, kind, retry=FAST_RETRY, **kw):
    url = fake.base_url + ("/v1" if kind == "openai" else "")
    cfg = JudgeConfig(kind=kind, model="fake-judge", base_url=None if kind == "function" else url, **kw)
    return make_judge(cfg, retry, RateLimiter(RateLimitConfig(requests_per_min=0)))


def _run(coro):
    return asyncio.run(coro)


def _many(judge, tasks):
    """judge_many, then close the SDK client on the same event loop."""
    async def go():
        try:
            return await judge.judge_many(tasks)
        finally:
            await judge.close()

    return asyncio.run(go())


PAIRS = [PairRecord(prompt=f"q{i}", response_a=f"answer a{i}", response_b=f"answer b{i}") for i in range(6)]


def test_parse_letter_variants_and_failures():
    assert parse_letter("A") == "A" and parse_letter(" b.") == "B" and parse_letter("Response A") == "A"
    assert parse_letter("<rationale>B is wrong, A cites sources</rationale>\nVerdict: A") == "A"
    assert parse_letter("Reasoning...\n**Verdict:** B") == "B"
    assert parse_letter("A is better because it is concise.") == "A"
    for bad in ("", "Both are fine", "<rationale>A</rationale>", "I cannot decide between A or B?"):
        with pytest.raises(ParseError):
            parse_letter(bad)
    assert parse_score("Score: 7") == 7 and parse_score(" 9 ") == 9
    with pytest.raises(ParseError):
        parse_score("Score: 42")
    assert p_from_logprobs({"A": -0.5, " B": -1.5, "Tie": -0.1}) == pytest.approx(1 / (1 + 2.718281828 ** -1))


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_api_judges_pairwise_pointwise_and_cot(fake, kind):
    async def go():
        out = []
        for cot in (False, True):
            j = _judge(fake, kind, cot=cot)
            out.append((await j.judge(Task("p", "q", "first text", "second text")), await j.score("q", "resp")))
            await j.close()
        return out

    p = p_first("first text", "second text")
    for (v, s), cot in zip(_run(go()), (False, True), strict=True):
        assert v.ok and s.score is not None, (v, s)
        if kind == "openai":  # soft label = the fake's probability from top_logprobs
            assert v.p_first == pytest.approx(p, abs=1e-9)
            assert abs(s.score - score_of("resp")) <= 1
        else:  # Claude: the argmax letter; the score parsed from text
            assert v.p_first == (1.0 if p >= 0.5 else 0.0)
            assert s.score == score_of("resp")
        assert (v.rationale is not None) == cot
        # Claude at its list prices; an OpenAI-compatible server is free unless price_per_mtok is set
        assert v.usage.output > 0 and (v.cost_usd > 0) == (kind == "anthropic") and 0 <= s.normalized <= 1
    if kind == "anthropic":  # the rubric prefix was marked for caching: later calls read the cache
        assert fake.stats()["billable"] == 4


def test_function_judge(fake):
    j = _judge(fake, "function", function=f"{FN}:prefer_longer", score_function=f"{FN}:length_score")
    v = _run(j.judge(Task("p", "q", "long answer", "short")))
    s = _run(j.score("q", "abc"))
    assert v.p_first == 1.0 and s.score == 3.0
    bad = _run(_judge(fake, "function", function=f"{FN}:broken").judge(Task("p", "q", "a", "b")))
    assert not bad.ok and "ZeroDivisionError" in bad.error


def _label_all(judge, store_dir, cfg, chash="h"):
    writer = ShardWriter(store_dir / "labels", "t")
    tasks = tasks_for(PAIRS, cfg)
    verdicts = _many(judge, tasks)
    writer.write([record_of(t, v, chash, judge.id, writer.name) for t, v in zip(tasks, verdicts, strict=True)])
    store = LabelStore(store_dir)
    store.refresh()
    return consolidate(PAIRS, store, cfg, chash, judge.id)


def test_both_order_soft_labels_equal_the_fake_probabilities(fake, tmp_path):
    fake.position_bias = 1.0  # a judge that likes the first slot: averaging both orders cancels it
    cfg = JudgeConfig(kind="openai", model="fake-judge", base_url=fake.base_url + "/v1")
    rows, stats = _label_all(_judge(fake, "openai"), tmp_path, cfg)
    assert len(rows) == len(PAIRS) and stats["unlabeled"] == 0
    for pair, row in zip(PAIRS, rows, strict=True):
        a, b = pair.response_a, pair.response_b
        expected = (p_first(a, b, 1.0) + 1 - p_first(b, a, 1.0)) / 2
        assert row["p_a"] == pytest.approx(expected, abs=1e-9)
        assert row["p_chosen"] == pytest.approx(max(expected, 1 - expected), abs=1e-9)
        assert row["chosen"] == (a if expected >= 0.5 else b)
        assert set(row) >= {"prompt", "chosen", "rejected", "p_chosen", "verdict_ab", "verdict_ba", "judge",
                            "judge_config_hash", "input_tokens", "output_tokens", "cost_usd"}
    assert stats["first_position_rate"] > 0.5  # the bias shows up in the report


def test_calibration_takes_the_content_free_prior_out(fake, tmp_path):
    """The fake leans to the first slot by +1 logit whatever it reads; its content-free P(first) is sigmoid(1),
    and subtracting that logit gives back the unbiased probability, order by order."""
    fake.position_bias = 1.0
    cfg = JudgeConfig(kind="openai", model="fake-judge", calibrate=True, constrain="none")
    rows, _ = _label_all(_judge(fake, "openai", calibrate=True, constrain="none"), tmp_path, cfg)
    for pair, row in zip(PAIRS, rows, strict=True):
        a, b = pair.response_a, pair.response_b
        assert row["p_a_ab"] == pytest.approx(p_first(a, b), abs=1e-6)
        assert row["p_a_ba"] == pytest.approx(1 - p_first(b, a), abs=1e-6)
        assert "content-free P(first)=0.731059" in row["verdict_ab"][0]
    assert fake.stats()["billable"] == 2 * len(PAIRS) + 1  # the prior is asked once


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logit(p: float) -> float:
    return math.log(p) - math.log(1 - p)


@pytest.mark.parametrize("kind, scale, temperature", [("openai", "yes_no", 1.0), ("anthropic", "ten", 2.0),
                                                      ("function", "ten", 0.5)])
def test_pointwise_labels_are_a_sigmoid_of_the_score_difference(fake, tmp_path, kind, scale, temperature):
    """protocol=pointwise: each response scored alone (yes/no logprobs, a 1-10 score), one order per pair,
    P(a > b) = sigmoid((s_a - s_b) / T); the protocol and both scores are on every label."""
    fn = {"score_function": f"{FN}:fake_score"} if kind == "function" else {}
    kw = dict(protocol="pointwise", scale=scale, pointwise_temperature=temperature, constrain="none", **fn)
    cfg = JudgeConfig(kind=kind, model="fake-judge", **kw)
    rows, stats = _label_all(_judge(fake, kind, **kw), tmp_path, cfg)
    assert len(rows) == len(PAIRS) and stats["unlabeled"] == 0
    assert stats["position_consistency"] is None and stats["first_position_rate"] is None  # no order shown
    score = (lambda t: _logit(yes_probability(t))) if scale == "yes_no" else score_of
    for pair, row in zip(PAIRS, rows, strict=True):
        s_a, s_b = score(pair.response_a), score(pair.response_b)
        assert (row["protocol"], row["scale"]) == ("pointwise", scale)
        assert [row["score_a"], row["score_b"]] == pytest.approx([s_a, s_b], abs=1e-9)
        assert row["p_a"] == pytest.approx(_sigmoid((s_a - s_b) / temperature), abs=1e-9)
        assert "verdict_ba" not in row
    if kind != "function":  # two requests per pair, each billed once
        assert fake.stats()["billable"] == 2 * len(PAIRS) and fake.stats()["repaid"] == 0


def test_pointwise_config_errors_and_store_hashes():
    from rlaif_ray.config import ConfigError
    from rlaif_ray.config.jobs import LabelJob
    from rlaif_ray.config.schema import from_dict
    from rlaif_ray.feedback.judges import config_hash

    with pytest.raises(ConfigError, match=r"pool\.judge\.scale: yes_no .* Claude returns no logprobs"):
        from_dict(LabelJob, {"input": "x.jsonl", "pool": {"judge": {"kind": "anthropic", "protocol": "pointwise",
                                                                   "scale": "yes_no"}}})
    with pytest.raises(ConfigError, match=r"pool\.judge\.score_function: protocol=pointwise"):
        from_dict(LabelJob, {"input": "x.jsonl", "pool": {"judge": {"protocol": "pointwise"}}})
    with pytest.raises(ConfigError, match=r"pool\.judge\.calibrate: only for protocol=pairwise"):
        from_dict(LabelJob, {"input": "x.jsonl", "pool": {"judge": {"kind": "anthropic-batch", "calibrate": True}}})
    # A store labeled before protocol/scale existed keeps its key: its answers are not bought again.
    assert config_hash(JudgeConfig()) == "c48b8a00f309"
    assert config_hash(JudgeConfig(kind="local", model="smollm2", max_tokens=1)) == "f37e0673a656"
    assert config_hash(JudgeConfig(protocol="pointwise")) != config_hash(JudgeConfig())
    assert config_hash(JudgeConfig(protocol="pointwise", scale="yes_no")) != config_hash(JudgeConfig(protocol="pointwise"))
    # scale=contrast reads likelihoods: a local engine only, and its two instructions are part of the judge.
    with pytest.raises(ConfigError, match=r"pool\.judge\.scale: contrast .* needs kind=local and protocol=pointwise"):
        from_dict(LabelJob, {"input": "x.jsonl", "pool": {"judge": {"kind": "openai", "protocol": "pointwise",
                                                                   "scale": "contrast", "rubric": "friendly"}}})
    with pytest.raises(ConfigError, match=r"contrast_prompts: rubric 'summary' has no shipped pair"):
        from_dict(LabelJob, {"input": "x.jsonl", "pool": {"judge": {"kind": "local", "protocol": "pointwise",
                                                                   "scale": "contrast", "rubric": "summary"}}})
    with pytest.raises(ConfigError, match=r"contrast_prompts: two non-empty instructions"):
        from_dict(LabelJob, {"input": "x.jsonl", "pool": {"judge": {"kind": "local", "protocol": "pointwise",
                                                                   "scale": "contrast", "contrast_prompts": ["x"]}}})
    contrast = JudgeConfig(kind="local", protocol="pointwise", scale="contrast", rubric="friendly")
    assert config_hash(contrast) != config_hash(JudgeConfig(kind="local", protocol="pointwise", scale="contrast",
                                                            rubric="friendly", contrast_prompts=["Be nice.", "Be mean."]))


def test_pointwise_batches_join_two_score_requests_into_one_label(fake, tmp_path):
    from rlaif_ray.feedback.batch import run_batches

    cfg = JudgeConfig(kind="anthropic-batch", model="fake-judge", base_url=fake.base_url, protocol="pointwise",
                      batch_poll_s=0.05, batch_max_requests=5)  # a batch holds both requests of a pair
    store = LabelStore(tmp_path)
    summary = run_batches(cfg, FAST_RETRY, str(tmp_path), "h", store, tasks_for(PAIRS, cfg))
    assert summary["ok"] == len(PAIRS) and summary["batches_submitted"] == 3
    store.refresh()
    rows, stats = consolidate(PAIRS, store, cfg, "h", "anthropic:fake-judge")
    assert stats["unlabeled"] == 0
    for pair, row in zip(PAIRS, rows, strict=True):
        s_a, s_b = score_of(pair.response_a), score_of(pair.response_b)
        assert [row["score_a"], row["score_b"]] == [s_a, s_b]
        assert row["p_a"] == pytest.approx(_sigmoid(s_a - s_b), abs=1e-9)
    assert fake.stats()["billable"] == 2 * len(PAIRS) and row["cost_usd"] > 0


@pytest.mark.parametrize("cot", [False, True])
def test_claude_structured_verdicts_and_the_text_fallback(fake, cot):
    tasks = [Task(f"p{i}", "q", f"resp {i}", f"other {i}") for i in range(6)]
    expected = [p_first(t.first, t.second) >= 0.5 for t in tasks]
    verdicts = _many(_judge(fake, "anthropic", constrain="json_schema", cot=cot), tasks)
    assert [v.p_first == 1.0 for v in verdicts] == expected
    assert all(v.answer_format == "json_schema" and json.loads(v.raw)["answer"] in "AB" for v in verdicts)
    assert all((v.rationale == "The fake judge compared the responses.") == cot for v in verdicts)
    scored = _run(_judge(fake, "anthropic", constrain="json_schema").score("q", "resp 1"))
    assert scored.score == score_of("resp 1") and scored.answer_format == "json_schema"
    # A model without structured outputs refuses the schema (400, unbilled): the text verdict, recorded so.
    billed = fake.stats()["billable"]
    fake.structured_outputs = False
    verdicts = _many(_judge(fake, "anthropic", constrain="json_schema", cot=cot), tasks)
    assert [v.p_first == 1.0 for v in verdicts] == expected and all(v.answer_format == "none" for v in verdicts)
    assert fake.stats()["billable"] - billed == len(tasks) and fake.stats()["repaid"] == 0


def test_batches_stream_chunks_through_a_window_of_batches_in_flight(fake, tmp_path):
    from rlaif_ray.feedback.batch import run_batches
    from rlaif_ray.feedback.cost import prices_of

    cfg = JudgeConfig(kind="anthropic-batch", model="fake-judge", base_url=fake.base_url, batch_poll_s=0.05,
                      batch_max_requests=5, batch_max_in_flight=2, cache_ttl="1h", constrain="json_schema")
    pairs = [PairRecord(prompt=f"q{i}", response_a=f"answer a{i}", response_b=f"answer b{i}") for i in range(12)]
    fake.faults = [{"kind": "batch_expired", "fraction": 0.25, "endpoint": "batch"}]
    passes = []

    def chunks():  # the input read again for each round, 3 pairs a chunk: batches span chunks
        passes.append(1)
        return (tasks_for(pairs[i:i + 3], cfg) for i in range(0, len(pairs), 3))

    store = LabelStore(tmp_path)
    summary = run_batches(cfg, FAST_RETRY, str(tmp_path), "h", store, chunks)
    store.refresh()
    rows, stats = consolidate(pairs, store, cfg, "h", "anthropic:fake-judge")
    assert stats["unlabeled"] == 0 and summary["ok"] == 24 and summary["calls_submitted"] == 24
    # 24 calls in batches of <= 5 (a pair's two orders may split; both stay whole calls), never more than 2
    # running; the expired quarter went out again in a second round and a third pass found nothing left.
    assert summary["max_batches_in_flight"] == 2 and summary["rounds"] == 2 and len(passes) == 3
    assert summary["failed"] == fake.stats()["batch_requests"] - 24 > 0
    state = json.loads((tmp_path / "batches.json").read_text())
    assert len(state) == summary["batches_submitted"] == len(list((tmp_path / "batches").iterdir()))
    assert all(e["collected"] and "tasks" not in e for e in state)  # the maps live in files, written once
    assert fake.stats()["repaid"] == 0 and fake.stats()["batch_duplicates"] == 0
    sent = next(iter(fake.batches.values()))["requests"][0]["params"]["system"][0]
    assert sent["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert prices_of(cfg)["cache_write"] == 2 * prices_of(cfg)["input"]
    for pair, row in zip(pairs, rows, strict=True):  # structured verdicts, read from their JSON
        assert row["p_a"] == (p_first(pair.response_a, pair.response_b) >= 0.5) and row["answer_format"] == "json_schema"


FAULTS = [
    {"kind": "429", "retry_after": 3600},  # capped by retry_after_cap_s
    {"kind": "529"}, {"kind": "500"}, {"kind": "slow", "delay": 0.3},
    {"kind": "timeout", "delay": 6.0}, {"kind": "malformed"}, {"kind": "reset"},
]


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_every_fault_class_is_retried_and_paid_once(fake, kind):
    n = len(FAULTS)
    fake.faults = [{**f, "range": (i / n, (i + 1) / n)} for i, f in enumerate(FAULTS)]
    # timeout_s sits well below the injected 6 s hang and well above a normal call on a busy machine.
    retry = RetryConfig(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, retry_after_cap_s=0.1, timeout_s=3.0)
    j = _judge(fake, kind, retry=retry)
    tasks = [Task(f"p{i}", "q", f"resp {i}", f"other {i}") for i in range(80)]  # every slice gets some
    verdicts = _many(j, tasks)
    assert all(v.ok for v in verdicts), [v.error for v in verdicts if not v.ok]
    stats = fake.stats()
    seen = {k.removeprefix("fault-") for k in stats["requests"] if k.startswith("fault-")}
    assert seen == {f["kind"] for f in FAULTS}, stats
    probe = kind == "openai"  # the OpenAI judge's one constraint probe (constrain=auto)
    malformed = stats["requests"]["fault-malformed"]  # a truncated 200 body is billed, then bought again
    assert stats["billable"] == 80 + probe + malformed and stats["repaid"] == malformed
    assert stats["repaid_after_delivery"] == 0
    assert min(v.attempts for v in verdicts) == 1 and max(v.attempts for v in verdicts) >= 2


def test_persistent_failure_is_stored_as_failed_and_retried_next_run(fake, tmp_path):
    fake.faults = [{"kind": "500", "fraction": 0.5, "times": 99}]
    cfg = JudgeConfig(kind="anthropic", model="fake-judge", base_url=fake.base_url)
    judge = _judge(fake, "anthropic", retry=RetryConfig(max_attempts=2, base_delay_s=0.01, timeout_s=5))
    rows, stats = _label_all(judge, tmp_path, cfg)
    assert 0 < stats["unlabeled"] < len(PAIRS) and stats["failed_call_count"] > 0
    assert all("InternalServerError" in f["error"] for f in stats["failed_calls"])
    assert all(r["p_chosen"] >= 0.5 for r in rows)  # never a default preference for a failed pair
    store = LabelStore(tmp_path)
    store.refresh()
    failed = [t for t in tasks_for(PAIRS, cfg) if not store.done(t.pair_id, "h", t.order, t.sample)]
    fake.faults = []  # the outage is over: the next run retries only the failed calls
    before = fake.stats()["billable"]
    judge = _judge(fake, "anthropic")
    writer = ShardWriter(tmp_path / "labels", "run2")
    writer.write([record_of(t, v, "h", judge.id, writer.name)
                  for t, v in zip(failed, _many(judge, failed), strict=True)])
    store.refresh()
    rows, stats = consolidate(PAIRS, store, cfg, "h", judge.id)
    assert stats["unlabeled"] == 0 and fake.stats()["billable"] - before == len(failed)
    assert fake.stats()["repaid"] == 0


@pytest.mark.parametrize("block", [8 << 20, 64])  # 64 bytes: every record spans blocks
def test_store_skips_torn_lines_and_keeps_ok_final(tmp_path, monkeypatch, block):
    import rlaif_ray.feedback.store as store_mod

    monkeypatch.setattr(store_mod, "READ_BLOCK", block)
    w = ShardWriter(tmp_path / "labels", "w")
    t = Task("p1", "q", "a", "b")
    w.write([record_of(t, Verdict(None, error="boom"), "h", "j", w.name),
             record_of(t, Verdict(0.7), "h", "j", w.name), record_of(t, Verdict(0.1), "h", "j", w.name)])
    with (tmp_path / "labels" / "torn.jsonl").open("w") as fh:
        fh.write(json.dumps(record_of(Task("p2", "q", "a", "b"), Verdict(0.9), "h", "j", "x")) + "\n{\"pair_id\": \"p3\", ")
    store = LabelStore(tmp_path)
    store.refresh()
    assert store.get("p1", "h", "ab", 0)["p_first"] == 0.7 and store.done("p2", "h", "ab", 0)
    assert not store.done("p3", "h", "ab", 0) and store.totals["h"]["ok"] == 2 and store.totals["h"]["failed"] == 0
    # The index holds where records lie, not the records: a later write is found by the next refresh, and
    # an ok record read back from disk is the one stored, whole.
    w.write([record_of(Task("p3", "q", "a", "b", "ba", 1), Verdict(0.2, raw="B" * 300), "h", "j", w.name)])
    assert store.refresh() == 1
    assert store.get("p3", "h", "ba", 1)["raw"] == "B" * 300 and store.get("p1", "h", "ab", 0)["p_first"] == 0.7
    assert sorted(r["pair_id"] for r in store.records("h")) == ["p1", "p2", "p3"] and store.get("p9", "h", "ab", 0) is None


def test_unlimited_shared_limiter_asks_its_actor_only_once_a_budget_is_spent():
    from rlaif_ray.feedback.ratelimit import SharedLimiter

    calls = []

    class Method:
        def __init__(self, name):
            self.name = name

        def remote(self, *args):
            calls.append(self.name)
            done = asyncio.get_running_loop().create_future()  # awaitable like an ObjectRef, or dropped
            done.set_result(None)
            return done

    class Handle:
        acquire, observe, refused = Method("acquire"), Method("observe"), Method("refused")

    async def go():
        shared = SharedLimiter(Handle(), unlimited=True)
        for _ in range(3):
            await shared.acquire(10, 1)
        shared.observe({"content-type": "application/json"})  # the first answer is always told
        shared.observe({"anthropic-ratelimit-requests-remaining": "12"})
        await shared.acquire()
        assert calls == ["observe", "observe"]  # no round trip per request while nothing is spent
        shared.observe({"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": "x"})
        await shared.acquire()
        assert calls[-2:] == ["observe", "acquire"]
        limited = SharedLimiter(Handle())
        await limited.acquire()
        assert calls[-1] == "acquire"  # a configured budget: every request draws from the actor

    _run(go())


def test_cost_and_rate_limit_headers():
    u = Usage(input=1_000_000, output=1_000_000, cache_write=1_000_000, cache_read=1_000_000)
    prices = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}
    assert cost_usd(u, prices) == pytest.approx(22.05) and cost_usd(u, prices, batch=True) == pytest.approx(11.025)
    limiter = RateLimiter(RateLimitConfig(requests_per_min=60))
    import time

    limiter.observe({"anthropic-ratelimit-requests-remaining": "0",
                     "anthropic-ratelimit-requests-reset": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                        time.gmtime(time.time() + 30))})
    assert limiter.blocked_until > time.monotonic() + 20  # exhausted budget: wait for its reset
