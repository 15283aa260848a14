"""The loopback fake speaks the real wire formats: driven here by the real anthropic and openai SDKs."""

import json
import math
import urllib.request

import anthropic
import openai
import pytest

from rlaif_ray.feedback.prompts import pair_user
from rlaif_ray.testing.fake_api import FakeAPI, p_first

KEY = "sk-fake-test-key-0123"


@pytest.fixture()
def fake():
    server = FakeAPI(api_key=KEY, requests_per_min=600).start()
    yield server
    server.stop()


def _ask(client, first="It is 4.", second="It is 5."):
    return client.messages.with_raw_response.create(
        model="fake-judge", max_tokens=4, system="judge",
        messages=[{"role": "user", "content": pair_user("2+2?", first, second)}])


def test_messages_auth_headers_and_verdict(fake):
    bearer = anthropic.Anthropic(api_key=KEY, base_url=fake.base_url, max_retries=0)
    raw = _ask(bearer)
    msg = raw.parse()
    expected = "A" if p_first("It is 4.", "It is 5.") >= 0.5 else "B"
    assert msg.content[0].text == expected
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens == 1
    assert int(raw.headers["anthropic-ratelimit-requests-limit"]) == 600
    assert "anthropic-ratelimit-requests-reset" in raw.headers
    body = json.dumps({"model": "fake-judge", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(fake.base_url + "/v1/messages", data=body.encode(), method="POST",
                                 headers={"x-api-key": KEY, "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:  # the real API's own header scheme
        assert json.loads(r.read())["type"] == "message"
    with pytest.raises(anthropic.AuthenticationError):
        _ask(anthropic.Anthropic(api_key="wrong", base_url=fake.base_url, max_retries=0))
    stats = fake.stats()
    assert stats["auth"]["bearer"] == 2 and stats["auth"]["x-api-key"] == 1 and stats["billable"] == 2 and stats["repaid"] == 0


def test_openai_logprobs_are_the_fake_probability(fake):
    client = openai.OpenAI(api_key=KEY, base_url=fake.base_url + "/v1", max_retries=0)
    out = client.chat.completions.create(model="fake-judge", max_tokens=1, logprobs=True, top_logprobs=5,
                                         messages=[{"role": "user", "content": pair_user("q", "x1", "y2")}])
    top = {t.token: t.logprob for t in out.choices[0].logprobs.content[-1].top_logprobs}
    pa, pb = math.exp(top["A"]), math.exp(top["B"])
    assert pa / (pa + pb) == pytest.approx(p_first("x1", "y2"), abs=1e-12)
    assert "Tie" in top  # mass outside A/B: the judge must renormalise


def test_batches_unordered_errored_and_results_before_end(fake):
    fake.batch_latency_s = 0.5
    fake.faults = [{"kind": "batch_errored", "fraction": 0.3, "endpoint": "batch"}]
    client = anthropic.Anthropic(api_key=KEY, base_url=fake.base_url, max_retries=0)
    reqs = [{"custom_id": f"r{i}", "params": {"model": "fake-judge", "max_tokens": 4, "messages": [
        {"role": "user", "content": pair_user("q", f"answer {i}", f"other {i}")}]}} for i in range(30)]
    batch = client.messages.batches.create(requests=reqs)
    assert batch.processing_status == "in_progress" and batch.results_url is None
    with pytest.raises(anthropic.AnthropicError):
        list(client.messages.batches.results(batch.id))
    import time

    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(0.1)
    results = list(client.messages.batches.results(batch.id))
    ids = [r.custom_id for r in results]
    assert sorted(ids) == sorted(r["custom_id"] for r in reqs) and ids != [r["custom_id"] for r in reqs]
    kinds = {r.result.type for r in results}
    assert kinds == {"succeeded", "errored"}
    done = client.messages.batches.retrieve(batch.id).request_counts
    assert done.succeeded + done.errored == 30 and fake.stats()["billable"] == done.succeeded
    client.messages.batches.create(requests=reqs[:1])  # same params again
    assert fake.stats()["batch_duplicates"] == (1 if results[[r.custom_id for r in results].index("r0")].result.type
                                                == "succeeded" else 0)
