"""The demo pipeline end to end on the tiny locally built model: every stage runs as a real job
(vLLM rollouts, local LLM judge in the pool, DeepSpeed learners, weight sync, eval), files are complete
and consistent, and a second run resumes without redoing or re-paying anything."""

import json

import pytest
import yaml

from rlaif_ray import cli
from rlaif_ray.config import DemoJob

TINY = [
    "policy.path=tiny", "policy.dtype=fp32", "policy.lora.enabled=true",
    "judge.model=tiny",  # the demo's contrastive judge, reading the pairs' two instructions
    "pair_prompts=24", "rm_val_fraction=0.1", "eval_prompts=8", "sampling.max_new_tokens=12",
    "rollout.in_process=true", "rollout.max_model_len=256",
    "rm_learner.micro_batch_size=2", "rm_learner.dtype=fp32", "rm_epochs=1",
    "learner.micro_batch_size=2", "learner.dtype=fp32",
    "ppo.steps=2", "ppo.prompts_per_step=8", "dpo.epochs=1",
]


@pytest.mark.slow
def test_demo_pipeline_on_tiny_model(ray_session, tmp_path, capsys):
    run_dir = tmp_path / "demo"
    assert cli.main(["demo", f"run_dir={run_dir}", *TINY]) == 0
    out = capsys.readouterr().out

    pairs = [json.loads(x) for x in (run_dir / "1-generate-pairs" / "pairs.jsonl").read_text().splitlines()]
    prefs = [json.loads(x) for x in (run_dir / "2-label" / "preferences.jsonl").read_text().splitlines()]
    assert pairs and len(prefs) == len(pairs)
    assert {p["id"] for p in prefs} == {p["id"] for p in pairs}
    assert all(0.0 <= p["p_chosen"] <= 1.0 for p in prefs)
    for stage in ("3-train-rm", "4-train-ppo", "5-train-dpo"):
        assert (run_dir / stage / "final" / "model.safetensors").exists(), stage
        assert (run_dir / stage / "config.yaml").exists(), stage
    ppo_rows = [json.loads(x) for x in (run_dir / "4-train-ppo" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in ppo_rows if "ppo/reward_mean" in r]) == 2

    results = json.loads((run_dir / "6-eval" / "results.json").read_text())
    rows = {r["policy"]: r for r in results["vs_baseline"]}
    assert set(rows) == {"ppo", "dpo"}
    for r in rows.values():
        assert 0.0 <= r["ci_low"] <= r["win_rate"] <= r["ci_high"] <= 1.0 and r["n"] == 8
    assert (run_dir / "6-eval" / "plots" / "win_rates.png").stat().st_size > 1000
    assert "time per stage" in out and "judge-gold agreement on the demo's pairs" in out
    assert "ppo win rate over start, by the gold" in out and "dpo win rate over start, by the judge" in out
    label = json.loads((run_dir / "2-label" / "summary.json").read_text())
    assert label["gold"]["n_pairs"] == len(pairs) and all(p["protocol"] == "pointwise" for p in prefs)
    assert {p["instruction_b"] for p in pairs} == set(DemoJob().instructions_b)
    label_cfg = yaml.safe_load((run_dir / "2-label" / "config.yaml").read_text())
    assert label_cfg["pool"]["judge"]["contrast_prompts"] == DemoJob().instructions_b
    assert (run_dir / "6-eval" / "plots" / "gold_vs_kl.png").stat().st_size > 1000
    assert (run_dir / "summary.txt").read_text().strip() in out

    # A second run finds every stage done: nothing is regenerated, labeled or trained again.
    label_summary = (run_dir / "2-label" / "summary.json").read_text()
    assert cli.main(["demo", f"run_dir={run_dir}", *TINY]) == 0
    assert (run_dir / "2-label" / "summary.json").read_text() == label_summary
