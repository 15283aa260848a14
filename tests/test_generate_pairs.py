"""generate-pairs end to end on tiny models (transformers backend in a Ray worker: the vLLM engine and
the pool of two are covered by test_rollout): pairs readable by read_pairs, identical responses skipped
and counted, long prompts counted, two policies, Parquet output."""

import argparse
import json

import pytest

from rlaif_ray.config import ConfigError, ModelConfig, RolloutConfig, SamplingConfig, load
from rlaif_ray.config.jobs import GeneratePairsJob


@pytest.fixture()
def prompts_file(tmp_path):
    rows = [{"prompt": "the cat finds"}, {"prompt": [{"role": "user", "content": "a robot explains"}]},
            {"prompt": "Question 3: why?"}, {"prompt": "word " * 200}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job(prompts_file, tmp_path, **kw):
    return GeneratePairsJob(prompts=str(prompts_file), run_dir=str(tmp_path / "run"),
                            rollout=RolloutConfig(backend="hf", num_workers=1, max_model_len=96, long_prompt="reject"),
                            **kw)


@pytest.mark.slow
def test_one_policy_sampled_pairs_and_greedy_duplicates(ray_session, prompts_file, tmp_path):
    from rlaif_ray.algos import generate_pairs
    from rlaif_ray.data import read_pairs

    cfg = job(prompts_file, tmp_path, sampling=SamplingConfig(n=4, temperature=1.0, max_new_tokens=8),
              pairs_per_prompt=2)
    assert generate_pairs.run(cfg, argparse.Namespace()) == 0
    report = json.loads((tmp_path / "run" / "generate_pairs_report.json").read_text())
    assert report["prompts"] == 4 and report["prompts_rejected_too_long"] == 1 and report["pairs"] == 6
    pairs = read_pairs(tmp_path / "run" / "pairs.jsonl")
    assert len({p.id for p in pairs}) == 6 and all(p.response_a != p.response_b for p in pairs)
    assert pairs[2].prompt == [{"role": "user", "content": "a robot explains"}]



def test_identical_and_empty_responses_are_skipped_and_counted(tmp_path):
    from rlaif_ray.algos.generate_pairs import build_rows
    from rlaif_ray.data import PromptRecord
    from rlaif_ray.rollout import Sample

    def samples(*texts):
        return [Sample([1], t, [-1.0], "stop") for t in texts]

    records = [PromptRecord("p1"), PromptRecord("p2"), PromptRecord("p3")]
    got = [samples("same", "same ", "x", "y"), samples("", "a", "b", "c"), samples("u", "v", "w", "z")]
    cfg = GeneratePairsJob(prompts="p.jsonl", pairs_per_prompt=2)
    rows, counts = build_rows(records, got, got, cfg)
    assert [(r["response_a"], r["response_b"]) for r in rows] == [("x", "y"), ("b", "c"), ("u", "v"), ("w", "z")]
    assert counts == {"identical_skipped": 1, "empty_skipped": 1}
    assert rows[0]["prompt_id"] == records[0].id and len({r["id"] for r in rows}) == 4


@pytest.mark.slow
def test_two_policies(ray_session, tmp_path):
    from rlaif_ray.algos import generate_pairs
    from rlaif_ray.data import read_pairs

    prompts_file = tmp_path / "prompts.jsonl"  # plain-text prompts: one Parquet column type
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the cat", "a robot", "why?"]))

    cfg = job(prompts_file, tmp_path, sampling=SamplingConfig(n=1, temperature=0.0, max_new_tokens=8),
              policy_b=ModelConfig(path="tiny", seed=1), output=str(tmp_path / "pairs.parquet"))
    assert generate_pairs.run(cfg, argparse.Namespace()) == 0
    pairs = read_pairs(tmp_path / "pairs.parquet")
    assert len(pairs) == 3 and all(p.meta["model_b"] == "tiny" for p in pairs)


@pytest.mark.slow
def test_instructed_variant_of_the_same_policy(ray_session, tmp_path):
    """response_b from the same engine with an instruction (cycled) appended; the pair keeps the plain prompt."""
    from rlaif_ray.algos import generate_pairs
    from rlaif_ray.algos.generate_pairs import with_instruction
    from rlaif_ray.data import read_pairs

    prompts_file = tmp_path / "prompts.jsonl"
    texts = ["the cat", "a robot", "why?", "the sea", "a tree", "how?"]
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    systems = ["Be warm and kind.", "Be curt."]  # instructions
    cfg = job(prompts_file, tmp_path, sampling=SamplingConfig(n=1, temperature=1.0, max_new_tokens=16),
              instructions_b=systems)
    assert generate_pairs.run(cfg, argparse.Namespace()) == 0
    pairs = read_pairs(tmp_path / "run" / "pairs.jsonl")
    report = json.loads((tmp_path / "run" / "generate_pairs_report.json").read_text())
    # a random tiny model may answer both the same way (skipped and counted); the rest are pairs
    assert len(pairs) >= 2 and len(pairs) + report["identical_skipped"] == len(texts)
    expected = {t: systems[i % 2] for i, t in enumerate(texts)}  # cycled over the prompts
    assert all(p.meta["instruction_b"] == expected[p.prompt] for p in pairs)
    assert with_instruction("q?", "Be kind.") == "q? Be kind."
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q?"}]
    assert with_instruction(chat, "Be kind.") == chat[:2] + [{"role": "user", "content": "q? Be kind."}]
    with pytest.raises(ConfigError, match="instructions_b: response_b comes from policy_b or"):
        load(GeneratePairsJob, None, [f"prompts={prompts_file}", "instructions_b=[x]", "policy_b.path=tiny"])


def test_config_needs_two_samples_from_one_policy(tmp_path):
    with pytest.raises(ConfigError, match="sampling.n: 1 is below 2"):
        load(GeneratePairsJob, None, [f"prompts={tmp_path}/p.jsonl", "sampling.n=1"])
    load(GeneratePairsJob, "configs/generate_pairs.yaml", [f"prompts={tmp_path}/p.jsonl"])
