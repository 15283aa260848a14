"""RL-CAI labels under a written constitution: the shipped sample loads, a bad file names its entry and
field, each pair's principles are drawn by its id, and `label` against the API fake (real anthropic SDK)
judges each pair under its principles, pairwise or each answer scored alone (the principle's question is in
the request), averages them and
records them on the label; calls of one failing principle leave exactly the pairs that drew it unlabeled."""

import json

import pytest

from rlaif_ray.config import ConfigError, JudgeConfig, load
from rlaif_ray.config.jobs import LabelJob
from rlaif_ray.feedback.constitution import load_constitution, principles_for
from rlaif_ray.feedback.judges import config_hash


def test_shipped_constitution_and_bad_files(tmp_path):
    shipped = load_constitution("default")
    assert {"harmless", "honest", "helpful"} <= set(shipped) and all(p.compare and p.revision for p in shipped.values())
    bad = tmp_path / "c.yaml"
    bad.write_text("principles:\n  - id: a\n    critique: Is it kind?\n    revision: Make it kind.\n  - id: b\n    critique: ''\n")
    with pytest.raises(ValueError, match=r"c\.yaml: principles\[1\]\.critique: missing or empty"):
        load_constitution(str(bad))
    with pytest.raises(ConfigError, match="principles_per_pair: 9"):
        JudgeConfig(kind="function", function="x:y", constitution="default", principles_per_pair=9).validate()
    draws = {pid: principles_for(pid, shipped, 2) for pid in ("p1", "p2", "p3", "p4")}
    assert draws == {pid: principles_for(pid, shipped, 2) for pid in draws}  # a function of the pair id
    assert all(len(set(d)) == 2 for d in draws.values()) and len({tuple(d) for d in draws.values()}) > 1
    plain = JudgeConfig(kind="anthropic", model="m")
    assert config_hash(plain) != config_hash(JudgeConfig(kind="anthropic", model="m", constitution="default"))


@pytest.mark.parametrize("protocol", ["pairwise", "pointwise"])
def test_label_under_a_constitution_records_principles_and_masks_a_failing_one(ray_session, fake, tmp_path, protocol):
    from rlaif_ray.algos import label
    from rlaif_ray.data import read_pairs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "response_a": f"Answer {i}.",
                                         "response_b": f"Reply {i}!"}) + "\n" for i in range(12)))
    # Every call judged under 'honest' answers without a verdict: only the pairs that drew it fail.
    fake.faults = [{"kind": "no_verdict", "when": "principle 'honest'", "times": 10_000}]
    cfg = load(LabelJob, None, [f"input={pairs}", f"run_dir={tmp_path / 'run'}", "pool.judge.kind=anthropic",
                                "pool.judge.model=fake-judge", f"pool.judge.base_url={fake.base_url}",
                                "pool.judge.constitution=default", "pool.judge.principles_per_pair=2",
                                "pool.judge.reask=0", "pool.retry.base_delay_s=0.05", f"pool.judge.protocol={protocol}"])
    label.run(cfg, None)
    shipped = load_constitution("default")
    drawn = {p.id: principles_for(p.id, shipped, 2) for p in read_pairs(str(pairs))}
    rows = [json.loads(line) for line in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {pid for pid, d in drawn.items() if "honest" not in d}
    assert all(r["principles"] == drawn[r["id"]] for r in rows)
    # pairs x principles x (both orders | both responses scored alone), each paid once
    assert fake.stats()["billable"] == 12 * 2 * 2 and fake.stats()["repaid"] == 0
    stored = [json.loads(line) for f in (tmp_path / "run" / "labels").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert all(r["principle"] == drawn[r["pair_id"]][r["sample"]] for r in stored)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["unlabeled"] == sum("honest" in d for d in drawn.values()) > 0
