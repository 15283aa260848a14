"""API judges against a misbehaving server (the loopback fake, the real anthropic/openai SDKs): the
attempt timeout starts at send, the limiter learns the real limit and is not stalled by one request's
retry-after, 529s are retried for max_wait_s, answers without a verdict are re-asked, and every billed
attempt is in the cost. No Ray here (test_label_pool.py has the pool's shared budget)."""


import pytest
from test_feedback import _many

from rlaif_ray.config import JudgeConfig, RateLimitConfig, RetryConfig
from rlaif_ray.feedback import LabelStore, Task, make_judge
from rlaif_ray.feedback.cost import CLAUDE_PRICES
from rlaif_ray.feedback.labels import cost_of
from rlaif_ray.feedback.parsing import ParseError, parse_letter
from rlaif_ray.feedback.ratelimit import RateLimiter
from rlaif_ray.feedback.store import InflightTally, ShardWriter, record_of
from rlaif_ray.feedback.types import Usage
from rlaif_ray.testing.fake_api import billed_usd, p_first

RETRY = RetryConfig(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, retry_after_cap_s=0.2, timeout_s=5)


def _judge(fake, kind="anthropic", retry=RETRY, rpm=0.0, **kw):
    url = fake.base_url + ("/v1" if kind == "openai" else "")
    limiter = RateLimiter(RateLimitConfig(requests_per_min=rpm))
    return make_judge(JudgeConfig(kind=kind, model="fake-judge", base_url=url, **kw), retry, limiter), limiter


def _tasks(n, tag="r"):
    return [Task(f"p{i}", "q", f"{tag} one {i}", f"{tag} two {i}") for i in range(n)]


def _billed_usd(fake) -> float:
    return billed_usd(fake.stats(), CLAUDE_PRICES)


def _right(task, v) -> bool:
    return (v.p_first >= 0.5) == (p_first(task.first, task.second) >= 0.5)


def test_attempt_timeout_starts_at_send_not_in_the_limiter_queue(fake):
    # 12 requests at 2/s wait up to ~5 s for a slot; each attempt may take only 1.5 s once sent.
    judge, _ = _judge(fake, retry=RetryConfig(max_attempts=1, timeout_s=1.5), rpm=120)
    fake.latency_s = 0.2
    tasks = _tasks(12)
    verdicts = _many(judge, tasks)
    assert all(v.ok and v.attempts == 1 for v in verdicts), [v.error for v in verdicts]
    stats = fake.stats()
    assert stats["billable"] == 12 and stats["abandoned"] == 0 and stats["repaid"] == 0


def test_limiter_learns_a_short_interval_limit_from_headers_and_429s(fake):
    fake.requests_per_min = 120  # enforced as 2 per second; the pool is configured for 4,000/min
    judge, limiter = _judge(fake, retry=RetryConfig(base_delay_s=0.05, max_delay_s=0.5, retry_after_cap_s=2,
                                                    timeout_s=10), rpm=4000)
    tasks = _tasks(30)
    verdicts = _many(judge, tasks)
    assert all(v.ok for v in verdicts)
    snap, stats = limiter.snapshot(), fake.stats()
    assert snap["learned_limit"]["requests"] == 120 and snap["requests_per_min"] <= 120
    # Only the burst sent before the first answer taught the limit can be refused; after it, none.
    refused = stats["requests"].get("429-rate", 0)
    assert refused < 30 and max(v.attempts for v in verdicts) <= 3, (refused, [v.attempts for v in verdicts])
    assert stats["billable"] == 30 and stats["repaid"] == 0


def test_one_requests_long_retry_after_delays_only_that_request(fake):
    fake.requests_per_min = 6000  # the fake sends rate-limit headers: the budget is far from spent
    fake.faults = [{"kind": "429", "retry_after": 3600, "range": (0.0, 0.3)}]
    judge, limiter = _judge(fake, rpm=6000)
    tasks = _tasks(20)
    verdicts = _many(judge, tasks)
    assert all(v.ok for v in verdicts)
    assert {v.attempts for v in verdicts} == {1, 2}  # the refused ones waited (capped), then were answered
    snap = limiter.snapshot()
    assert snap["holds"] == 0 and snap["congestion_429"] == 0 and snap["scale"] == 1.0  # nobody else paused
    assert fake.stats()["repaid"] == 0


def test_overloaded_529_retried_past_max_attempts_until_max_wait(fake):
    fake.faults = [{"kind": "529", "fraction": 1.0, "times": 6}]
    patient = RetryConfig(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02, timeout_s=5, max_wait_s=60)
    judge, _ = _judge(fake, retry=patient)
    verdicts = _many(judge, _tasks(3))
    assert all(v.ok and v.attempts == 7 for v in verdicts)
    fake.reset()
    fake.faults = [{"kind": "529", "fraction": 1.0, "times": 999}]
    hurried = RetryConfig(max_attempts=2, base_delay_s=0.05, max_delay_s=0.05, timeout_s=5, max_wait_s=0.3)
    judge, _ = _judge(fake, retry=hurried)
    verdicts = _many(judge, _tasks(2, "x"))
    assert all(not v.ok and "gave up" in v.error and "529" in v.error for v in verdicts)
    assert fake.stats()["billable"] == 0 and all(v.cost_usd == 0 for v in verdicts)


@pytest.mark.parametrize("kind", ["no_verdict", "empty", "verbose"])
def test_answers_without_a_verdict_are_reasked_in_the_same_run(fake, kind):
    # Every first ask of these bodies answers with no verdict (verbose: cut off by max_tokens=16); the
    # re-ask carries a format reminder, so it is a new body and answers cleanly.
    fake.faults = [{"kind": kind, "fraction": 1.0, "times": 99, "unless": "previous reply"}]
    judge, _ = _judge(fake, max_tokens=16)
    tasks = _tasks(6)
    verdicts = _many(judge, tasks)
    assert all(v.ok and v.reasks == 1 and v.attempts == 2 and _right(t, v) for t, v in zip(tasks, verdicts,
                                                                                           strict=True))
    stats = fake.stats()
    assert stats["billable"] == 12 and stats["repaid"] == 0  # both asks billed, neither bought twice
    assert sum(v.cost_usd for v in verdicts) == pytest.approx(_billed_usd(fake), rel=1e-9)


def test_default_verdict_budget_fits_a_sentence_before_the_verdict(fake):
    fake.faults = [{"kind": "verbose", "fraction": 1.0, "times": 99}]
    judge, _ = _judge(fake)  # max_tokens None: 64
    tasks = _tasks(4)
    verdicts = _many(judge, tasks)
    assert all(v.ok and v.reasks == 0 and _right(t, v) for t, v in zip(tasks, verdicts, strict=True))


def test_no_verdict_after_every_reask_stays_failed_and_is_billed(fake):
    fake.faults = [{"kind": "no_verdict", "fraction": 1.0, "times": 99}]
    judge, _ = _judge(fake, reask=2)
    verdicts = _many(judge, _tasks(3))
    assert all(not v.ok and v.p_first is None and "ParseError" in v.error for v in verdicts)
    assert all(v.reasks == 2 and v.attempts == 3 for v in verdicts)
    assert fake.stats()["billable"] == 9
    assert sum(v.cost_usd for v in verdicts) == pytest.approx(_billed_usd(fake), rel=1e-9)


def test_cut_off_lower_case_prose_is_never_read_as_a_verdict():
    for text in ("After weighing both, I think response a reads a little better and",
                 "After weighing both, I think response b", "Both are fine.", ""):
        with pytest.raises(ParseError):
            parse_letter(text)
    assert parse_letter("After weighing both, I think response a reads better.\nVerdict: A") == "A"


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_billed_but_lost_answers_are_in_the_cost_as_estimates(fake, kind):
    # A truncated 200 body (billed, unreadable) and a stall past the attempt timeout (billed when the
    # server finishes, after the client gave up) are each bought again; the ledger counts both purchases.
    fake.faults = [{"kind": "malformed", "range": (0.0, 0.25)}, {"kind": "stall", "delay": 2.5, "range": (0.25, 0.5)},
                   {"kind": "reset", "range": (0.5, 0.6)}]  # a dropped connection: not billed
    judge, _ = _judge(fake, kind, retry=RetryConfig(max_attempts=4, base_delay_s=0.01, timeout_s=1.0),
                      price_per_mtok=CLAUDE_PRICES, constrain="none")
    tasks = _tasks(24)
    verdicts = _many(judge, tasks)
    assert all(v.ok for v in verdicts), [v.error for v in verdicts if not v.ok]
    import time

    time.sleep(3.0)  # the stalled answers finish (and are billed) after the client gave up
    stats = fake.stats()
    lost = sum(v.estimated_usd > 0 for v in verdicts)
    assert stats["requests"].get("fault-malformed") and stats["abandoned"] > 0 and lost > 0
    assert stats["repaid_after_delivery"] == 0
    assert stats["billable"] == len(tasks) + stats["requests"]["fault-malformed"] + stats["abandoned"]
    billed = _billed_usd(fake)
    assert sum(v.cost_usd for v in verdicts) == pytest.approx(billed, rel=0.02)


def test_cumulative_cost_keeps_failed_records_a_later_run_replaced(tmp_path):
    t = Task("p1", "q", "a", "b")
    from rlaif_ray.feedback.types import Verdict

    w = ShardWriter(tmp_path / "labels", "run1")
    w.write([record_of(t, Verdict(None, error="ParseError: none", cost_usd=0.25, reasks=2, attempts=3), "h", "j",
                       w.name)])
    w2 = ShardWriter(tmp_path / "labels", "run2")
    w2.write([record_of(t, Verdict(0.8, cost_usd=0.10, usage=Usage(input=100, output=2)), "h", "j", w2.name)])
    store = LabelStore(tmp_path)
    store.refresh()
    assert store.done("p1", "h", "ab", 0)
    assert cost_of(store.records())["cost_usd"] == pytest.approx(0.10)       # what the labels are
    ledger = cost_of(store.ledger("h"))                                       # what was paid for them
    assert ledger["cost_usd"] == pytest.approx(0.35) and ledger["calls"] == 2 and ledger["reasks"] == 2
    assert store.totals["h"]["cost_usd"] == pytest.approx(0.35)
    # A writer killed with two attempts in flight (sent, never ended): each priced as the mean answer read
    # (the ok record's 0.10; the failed one read nothing), marked estimated; a writer whose attempts all
    # ended adds nothing.
    killed, clean = InflightTally(tmp_path / "labels", "run3", "h"), InflightTally(tmp_path / "labels", "run4", "h")
    for tally, opened, ended in ((killed, 3, 1), (clean, 2, 2)):
        for _ in range(opened):
            tally.sent()
        for _ in range(ended):
            tally.done()
    ledger = cost_of(store.ledger("h"))
    assert ledger["estimated_usd"] == pytest.approx(2 * 0.10) and ledger["calls"] == 2 and ledger["attempts"] == 4 + 2


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_a_429_about_the_spend_limit_is_not_retried(fake, kind):
    fake.faults = [{"kind": "429_quota", "times": 99}]
    judge, _ = _judge(fake, kind, constrain="none")
    verdicts = _many(judge, _tasks(3))
    assert all(not v.ok and v.attempts == 1 and "quota" in v.error for v in verdicts), [v.error for v in verdicts]
    assert fake.stats()["requests"]["fault-429_quota"] == 3 and fake.stats()["billable"] == 0
