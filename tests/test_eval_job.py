"""End to end `rlaif-ray eval` on tiny models: real vLLM rollout workers, the real labeling pool with the
rule judge, real MiniLM similarity; files complete and consistent; a re-run pays for nothing twice."""

import json

import numpy as np
import pytest
from PIL import Image

from rlaif_ray.config import load
from rlaif_ray.config.jobs import EvalJob
from rlaif_ray.eval import DEMO_PROMPTS
from rlaif_ray.models import tiny_model_path

N = 10


@pytest.mark.slow
def test_eval_job_end_to_end(ray_session, tiny_model_dir, tmp_path, capsys):
    from rlaif_ray.algos import eval as eval_job

    other = tiny_model_path(2_000_000, seed=1)
    cfg = load(EvalJob, None, [
        f"prompts={DEMO_PROMPTS / 'heldout.jsonl'}", f"max_prompts={N}", f"run_dir={tmp_path}",
        f"policies.base={tiny_model_dir}", f"policies.other={other}", f"policies.copy={tiny_model_dir}",
        "kl_reference=base", f"reward_model={tiny_model_dir}", "bootstrap=200", "examples=2",
        "rollout.in_process=true", "rollout.max_model_len=256", "sampling.max_new_tokens=16",
        "pool.num_actors=1", "pool.judge.kind=function",
        "pool.judge.function=rlaif_ray.eval.rule_judge:prefer_helpful",
        "gold.score_function=rlaif_ray.eval.gold:vader_sentiment"])
    assert eval_job.run(cfg, None) == 0
    out = capsys.readouterr().out
    assert f"in {tmp_path}" in out.splitlines()[-1] and "Win rates" in out

    res = json.loads((tmp_path / "results.json").read_text())
    pairs = {(r["x"], r["y"]): r for r in res["win_rates"]}
    assert set(pairs) == {("base", "other"), ("base", "copy"), ("other", "copy")}  # all pairs, no baseline
    same = pairs[("base", "copy")]  # identical weights, greedy: identical answers, every comparison a tie
    assert (same["n"], same["ties"], same["win_rate"]) == (N, N, 0.5)
    m = np.array(res["matrix"], dtype=float)
    assert np.allclose(m + m.T, 1.0)
    for r in pairs.values():
        assert r["wins"] + r["ties"] + r["losses"] == r["n"] == N and r["ci"][0] <= r["win_rate"] <= r["ci"][1]
    assert res["labeling"]["calls"] == res["labeling"]["calls_run"] > 0 and res["labeling"]["failed"] == 0
    # the rule judge is position-blind: both orders always agree on decisive comparisons
    assert not res["position_bias"]["biased"] and res["position_bias"]["n_verdicts"] == 2 * 3 * N
    assert res["kl"]["copy"]["mean"] == pytest.approx(0.0, abs=1e-3) and abs(res["kl"]["other"]["mean"]) > 1e-3
    assert res["similarity"]["base"]["n"] == N and -1 <= res["similarity"]["base"]["mean"] <= 1
    # the RM (a tiny backbone with an untrained score head) scores identical answers identically
    assert res["reward"]["copy"]["n"] == N and res["reward"]["copy"]["mean"] == pytest.approx(res["reward"]["base"]["mean"])

    # the gold (VADER) decides the same comparisons: identical answers tie, every score is in [-1, 1]
    gold = {(r["x"], r["y"]): r for r in res["gold"]["win_rates"]}
    assert (gold[("base", "copy")]["ties"], gold[("base", "copy")]["win_rate"]) == (N, 0.5)
    assert res["gold"]["score"]["copy"]["mean"] == pytest.approx(res["gold"]["score"]["base"]["mean"])
    assert all(-1 <= s["mean"] <= 1 and s["n"] == N for s in res["gold"]["score"].values())
    agree = res["gold"]["judge_agreement"]
    assert agree["n_pairs"] == 3 * N and agree["gold_missing_or_tie"] >= N  # base vs copy: all gold ties
    with Image.open(tmp_path / "plots" / "gold_vs_kl.png") as im:  # the over-optimisation curve
        assert im.size[0] > 200

    comparisons = [json.loads(line) for line in (tmp_path / "comparisons.jsonl").read_text().splitlines()]
    assert len(comparisons) == 3 * N and {c["outcome"] for c in comparisons} <= {0.0, 0.5, 1.0}
    answers = [json.loads(line) for line in (tmp_path / "answers" / "other.jsonl").read_text().splitlines()][1:]
    assert len(answers) == N and all(a["answer"] is not None for a in answers)
    assert (tmp_path / "report.txt").read_text().startswith("Eval of 3 policies")
    assert (tmp_path / "examples.md").read_text().count("## best") == 3 * 2
    for name in ("win_rates", "win_rate_matrix", "similarity"):
        with Image.open(tmp_path / "plots" / f"{name}.png") as im:
            assert im.size[0] > 200
    assert (tmp_path / "metrics.jsonl").exists() and any((tmp_path / "tb").iterdir())

    # a re-run reuses the stored verdicts and cached answers: the same numbers, no judge call
    assert eval_job.run(cfg, None) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["labeling"]["calls_run"] == 0 and again["win_rates"] == res["win_rates"]
