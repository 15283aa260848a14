"""`rlaif-ray critique-revise` (Constitutional AI's supervised stage) against the loopback fake through the
real SDKs: free-text critic calls re-ask an empty answer and keep to their budget on both APIs; a run with
injected faults (529, 429, dropped connections) is SIGKILLed mid-run and resumed: one SFT row per prompt with its
provenance, one preference pair per changed answer, and no delivered answer bought twice."""

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from test_label_cli import _assert_key_never_written, _ray_dir, _stored, _wait

from rlaif_ray.config import JudgeConfig, RateLimitConfig, RetryConfig
from rlaif_ray.feedback import make_judge
from rlaif_ray.feedback.constitution import load_constitution, principles_for
from rlaif_ray.feedback.prompts import CRITIC_SYSTEM, critique_user, revision_user
from rlaif_ray.feedback.ratelimit import RateLimiter
from rlaif_ray.feedback.types import WriteTask
from rlaif_ray.testing.fake_api import FakeAPI, _written

KEY = "sk-ant-api03-NEVER-WRITE-ME-5150"
FAST_RETRY = RetryConfig(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, retry_after_cap_s=0.2, timeout_s=5)


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_critic_writes_through_both_sdks_reasking_an_empty_answer(fake, kind):
    url = fake.base_url + ("/v1" if kind == "openai" else "")
    judge = make_judge(JudgeConfig(kind=kind, model="fake-judge", base_url=url), FAST_RETRY,
                       RateLimiter(RateLimitConfig(requests_per_min=0)))
    request = "Identify anything rude in the answer."
    critique = WriteTask("c0", CRITIC_SYSTEM, critique_user("Hi?", "Go away.", request), "critique", max_tokens=64)
    revision = WriteTask("r0", CRITIC_SYSTEM, revision_user("Hi?", "Go away.", "It is rude.", "Be kind."),
                         "revision", max_tokens=4)
    fake.faults = [{"kind": "empty", "when": "Identify anything rude", "unless": "previous reply"}]

    async def go():
        try:
            return await judge.write_many([critique, revision])
        finally:
            await judge.close()

    c, r = asyncio.run(go())
    assert c.ok and c.text == _written("critique", "Go away.", request) and c.reasks == 1
    assert c.usage.output > 0 and (c.cost_usd > 0) == (kind == "anthropic")  # unpriced servers cost 0
    assert r.ok and r.reasks == 0 and len(r.text) <= 16  # cut at its 4-token budget, as a model would be
    assert fake.stats()["repaid"] == 0


def _critique_revise(tmp_path, fake, policy, *overrides):
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    args = [sys.executable, "-m", "rlaif_ray.cli", "critique-revise", f"prompts={tmp_path / 'prompts.jsonl'}",
            f"run_dir={tmp_path / 'run'}", f"policy.path={policy}", "rollout.backend=hf",
            "sampling.max_new_tokens=12", "rounds=2", "critic.judge.kind=anthropic", "critic.judge.model=fake-judge",
            f"critic.judge.base_url={fake.base_url}", "critic.num_actors=2", "critic.max_in_flight=4",
            "critic.shard_size=8", "critic.retry.base_delay_s=0.05", f"ray.temp_dir={_ray_dir(tmp_path)}",
            *overrides]
    log = (tmp_path / f"log{len(list(tmp_path.glob('log*')))}.txt").open("w")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killed_and_resumed_run_writes_every_row_and_repays_nothing(tmp_path, tiny_model_dir):
    from rlaif_ray.reaper import _stat, descendants

    n = 24
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"How do I water plant {i}?"}) + "\n"
                                                    for i in range(n)))
    # Refusals and dropped connections on a third of the calls (empty answers and their re-asks: above).
    fake = FakeAPI(api_key=KEY, latency_s=2.0, faults=[
        {"kind": "529", "range": (0.0, 0.12)}, {"kind": "429", "range": (0.12, 0.24)},
        {"kind": "reset", "range": (0.24, 0.33)}]).start()
    try:
        proc = _critique_revise(tmp_path, fake, tiny_model_dir)
        _wait(lambda: _stored(tmp_path / "run") >= n + 4 or proc.poll() is not None)  # into the revisions
        family = descendants(proc.pid)
        assert proc.poll() is None
        proc.kill()
        proc.wait(30)
        _wait(lambda: all(_stat(pid) is None or _stat(pid)[1] != start for pid, start in family.items()), 30)
        time.sleep(1.5)  # answers the server was still generating for the dead actors finish (billed, abandoned)
        killed = fake.stats()
        assert killed["billable"] == _stored(tmp_path / "run") + killed["abandoned"]  # every delivered answer is on disk

        fake.latency_s = 0.05
        assert _critique_revise(tmp_path, fake, tiny_model_dir).wait(240) == 0
        stats = fake.stats()
    finally:
        fake.stop()
    # Bought twice: only calls the kill cut off mid-flight, never a delivered answer.
    assert stats["repaid_after_delivery"] == 0 and stats["repaid"] == killed["abandoned"]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rows"] == n and summary["incomplete"] == 0 and not summary["interrupted"]
    assert stats["billable"] - stats["repaid"] == 2 * 2 * n  # a critique and a revision per prompt and round
    rows = [json.loads(line) for line in (run / "sft.jsonl").read_text().splitlines()]
    answers = {r["prompt_id"]: r["answer"] for r in map(json.loads, (run / "answers.jsonl").read_text().splitlines())}
    shipped = load_constitution("default")
    assert len(rows) == n and len({r["prompt_id"] for r in rows}) == n
    for r in rows:
        assert r["principles"] == [principles_for(f"0:{r['prompt_id']}:{k}", shipped, 1)[0] for k in range(2)]
        assert r["critic"] == "anthropic:fake-judge" and r["rounds"] == 2 and r["config_hash"] == summary["config_hash"]
        assert r["original"] == answers[r["prompt_id"]] and r["completion"] == r["revisions"][-1]
        # The fake's revision appends a courtesy to the text it revises: round 2 revised round 1's revision.
        assert r["revisions"][1].startswith(r["revisions"][0]) and r["revisions"][0].startswith(r["original"].strip())
    prefs = [json.loads(line) for line in (run / "preferences.jsonl").read_text().splitlines()]
    assert len(prefs) == n and all(p["chosen"] != p["rejected"] and p["principles"] for p in prefs)
    stored = [json.loads(line) for f in (run / "labels").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {r["principle"] for r in stored} <= set(shipped) and all(r["order"] in ("critique", "revision") for r in stored)
    assert summary["cost_cumulative"]["cost_usd"] > 0
    _assert_key_never_written(tmp_path)
