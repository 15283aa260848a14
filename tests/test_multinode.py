"""The jobs on a Ray cluster of isolated nodes (`isolated_cluster.py`): a head that holds only the driver
and two worker nodes with their own /dev/shm and /tmp, sharing only the checkout. Each driver is a
`rlaif-ray` subprocess attached with `ray.address=`, as under `ray job submit` or Slurm.

- train-ppo with the learner ranks on one node and the rollout worker on the other: weights go from
  learner rank 0 into the engine over the network, every sync verified, and the metrics equal a one-node
  run of the same seed;
- label against the API fake with one pool actor on each worker node: nothing lost, nothing paid twice;
- generate-pairs and eval with their rollout workers off the driver's node;
- a run_dir that only the driver sees (its /tmp) is refused at start-up, naming the node and the path.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from cluster_fixtures import REPO, VENV, read_jsonl
from isolated_cluster import IsolatedCluster, Node, why_not_isolated

from rlaif_ray.testing.fake_api import FakeAPI

pytestmark = pytest.mark.slow
TRAIN, ROLLOUT = "127.0.0.12", "127.0.0.13"
PPO_ARGS = ["--config", str(REPO / "configs/train_ppo_toy.yaml"), f"prompts={REPO / 'configs/train_ppo_toy.prompts.jsonl'}",
            "ppo.steps=3", "ppo.prompts_per_step=16", "checkpoint_every=3", "sync.verify_every=1"]


@pytest.fixture(scope="module")
def cluster():
    reason = why_not_isolated()
    if reason:
        pytest.fail(reason)  # CI runs as root: an isolated-node test that cannot run is a failure, not a skip
    with IsolatedCluster([Node(TRAIN, 2, {"train_node": 2}), Node(ROLLOUT, 2, {"rollout_node": 1})]) as c:
        yield c


def rlaif(cluster: IsolatedCluster, job: str, *args: str, env: dict | None = None, timeout: int = 600):
    cmd = [str(VENV / "bin" / "rlaif-ray"), job, *args, f"ray.address={cluster.address}"]
    return subprocess.run(cmd, cwd=REPO, env={**cluster.env, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")


def test_ppo_learners_on_one_node_rollout_on_another_matches_one_node(cluster, ray_session, tmp_path):
    from rlaif_ray.algos import train_ppo
    from rlaif_ray.config import load
    from rlaif_ray.config.jobs import TrainPPOJob

    run = cluster.shared / "ppo"
    ok(rlaif(cluster, "train-ppo", *PPO_ARGS, f"run_dir={run}", "learner.resources.train_node=1",
             "rollout.resources.rollout_node=1"))
    placement = json.loads((run / "placement.json").read_text())
    assert placement.pop("driver") not in (TRAIN, ROLLOUT)
    assert placement == {"rollout_workers": [ROLLOUT], "policy_ranks": [TRAIN, TRAIN], "critic_ranks": []}
    rows = _metrics(run)
    assert len(rows) == 3 and all(r["ppo/sync_verified"] for r in rows)
    assert all(r["ppo/sync_bytes"] > 7_000_000 for r in rows)  # the whole policy crossed the network
    assert (run / "final" / "model.safetensors").exists()  # written by rank 0 on its node, seen here

    # The same seed on one machine (this process's local Ray): the same run, within float noise.
    local = train_ppo.train(load(TrainPPOJob, PPO_ARGS[1], [*PPO_ARGS[2:], f"run_dir={tmp_path / 'one-node'}"]))
    for remote_row, local_row in zip(rows, local, strict=True):
        for key in ("reward_mean", "kl", "pg_loss", "vf_loss", "entropy", "rollout_logprob_diff", "samples"):
            a, b = remote_row[f"ppo/{key}"], local_row[key]
            assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-5), (key, a, b)


def test_label_actors_on_both_worker_nodes_lose_nothing_and_pay_once(cluster):
    key = "sk-ant-api03-multinode-test"
    fake = FakeAPI(api_key=key).start()  # on 127.0.0.1: every node reaches it, as they would the API
    try:
        n = 40
        pairs = cluster.shared / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "response_a": f"Answer {i}.",
                                             "response_b": f"Reply {i}!"}) + "\n" for i in range(n)))
        run = cluster.shared / "label"
        ok(rlaif(cluster, "label", f"input={pairs}", f"run_dir={run}", "pool.judge.kind=anthropic",
                 "pool.judge.model=fake-judge", f"pool.judge.base_url={fake.base_url}", "pool.num_actors=2",
                 "ray.placement_strategy=STRICT_SPREAD", env={"ANTHROPIC_API_KEY": key}))
        summary = json.loads((run / "summary.json").read_text())
        stats = fake.stats()
    finally:
        fake.stop()
    assert sorted(x["ip"] for x in summary["nodes"]) == [TRAIN, ROLLOUT]
    assert summary["labeled"] == n and summary["unlabeled"] == 0  # 0 lost
    assert stats["repaid"] == 0 and stats["billable"] == 2 * n  # both orders, each paid once
    assert len(read_jsonl(run / "preferences.jsonl")) == n


def test_generate_pairs_and_eval_run_their_workers_off_the_driver_node(cluster):
    prompts = REPO / "rlaif_ray/assets/prompts/heldout.jsonl"
    pairs = cluster.shared / "gen" / "pairs.jsonl"
    out = ok(rlaif(cluster, "generate-pairs", f"prompts={prompts}", "max_prompts=8", f"run_dir={pairs.parent}",
                   "policy.path=tiny", "rollout.in_process=true", "rollout.max_model_len=256",
                   "sampling.max_new_tokens=12", "sampling.seed=0"))
    rows = read_jsonl(pairs)
    assert rows and all(r["response_a"] != r["response_b"] for r in rows), out.stdout[-2000:]

    run = cluster.shared / "eval"
    ok(rlaif(cluster, "eval", f"prompts={prompts}", "max_prompts=6", f"run_dir={run}", "policies.base=tiny",
             "policies.copy=tiny", "baseline=base", "dtype=fp32", "bootstrap=100", "rollout.in_process=true",
             "rollout.max_model_len=256", "sampling.max_new_tokens=12", "pool.judge.kind=function",
             "pool.judge.function=rlaif_ray.eval.rule_judge:prefer_helpful", "embedding_model=null"))
    res = json.loads((run / "results.json").read_text())
    (pair,) = res["win_rates"]
    assert pair["n"] == 6 and pair["ties"] == 6  # the same weights, greedy: every comparison a tie


def test_run_dir_only_the_driver_sees_is_refused_naming_node_and_path(cluster, tmp_path):
    pairs = tmp_path / "pairs.jsonl"  # the driver reads its input itself: a local file is fine
    pairs.write_text(json.dumps({"prompt": "q?", "response_a": "a.", "response_b": "b!"}) + "\n")
    run = tmp_path / "run"  # under the driver's /tmp: no worker node has it
    result = rlaif(cluster, "label", f"input={pairs}", f"run_dir={run}", "pool.judge.kind=function",
                   "pool.judge.function=rlaif_ray.eval.rule_judge:prefer_helpful")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"cannot see run_dir {run}" in result.stderr and ("node 127.0.0.12" in result.stderr
                                                              or "node 127.0.0.13" in result.stderr)
