"""Typed configs: every bad value is rejected with its full key path; overrides, nesting and saving work."""

import pytest
import yaml

from rlaif_ray import cli
from rlaif_ray.config import (
    ConfigError,
    DPOStage,
    LabelJob,
    ModelConfig,
    TrainDPOJob,
    TrainPPOJob,
    describe,
    from_dict,
    load,
    save,
    to_dict,
)
from rlaif_ray.jobs import Job


@pytest.mark.parametrize("override, message", [
    ("ppo.bogus=1", "ppo.bogus: unknown key"),
    ("learner.lr=fast", "learner.lr: expected a number, got str 'fast'"),
    ("ppo.steps=2.5", "ppo.steps: expected an integer, got float 2.5"),
    ("ppo.steps=true", "ppo.steps: expected an integer, got bool True"),
    ("learner.grad_checkpointing=3", "learner.grad_checkpointing: expected true/false"),
    ("learner.zero_stage=4", "learner.zero_stage: 4 is above the maximum 3"),
    ("ppo.steps=0", "ppo.steps: 0 is below the minimum 1"),
    ("ppo.clip_ratio=0", "ppo.clip_ratio: 0.0 must be greater than 0"),
    ("learner.dtype=int8", "learner.dtype: 'int8' is not one of ['fp32', 'bf16', 'fp16']"),
    ("learner.lr=null", "learner.lr: null is not allowed"),
    ("sync.verify=sometimes", "sync.verify: 'sometimes' is not 'every', 'never' or a positive integer"),
    ("sampling.stop=oops", "sampling.stop: expected a list"),
    ("ppo.steps.x=1", "ppo.steps: expected an integer, got dict"),
    ("ppo.steps", "expected key.sub=value"),
])
def test_bad_override_names_the_key_path(override, message):
    with pytest.raises(ConfigError) as e:
        load(TrainPPOJob, None, [override])
    assert message in str(e.value)


def test_bad_yaml_key_names_file_and_path(tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_text("ppo:\n  steps: 3\n  kl_coeff: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load(TrainPPOJob, path)
    assert str(e.value).startswith(f"{path}: ppo.kl_coeff: unknown key")
    assert "kl_coef" in str(e.value)  # the known keys are listed, so the typo is easy to spot


def test_job_level_check():
    with pytest.raises(ConfigError, match="input: a pairs file is required"):
        load(LabelJob)
    assert load(LabelJob, None, ["input=pairs.jsonl"]).input == "pairs.jsonl"


def test_overrides_apply_over_yaml_and_coerce(tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_text("ppo:\n  steps: 3\nlearner:\n  lr: 0.001\n")
    cfg = load(TrainPPOJob, path, ["prompts=p.jsonl", "ppo.steps=7", "learner.lr=1", 'sampling.stop=["\\n", END]',
                                   "policy.lora.enabled=true", "ray.num_cpus=4"])
    assert cfg.ppo.steps == 7
    assert cfg.learner.lr == 1.0 and isinstance(cfg.learner.lr, float)  # int -> float is lossless
    assert cfg.sampling.stop == ["\n", "END"]
    assert cfg.policy.lora.enabled is True
    assert cfg.ray.num_cpus == 4
    assert cfg.ppo.kl_coef == 0.05  # untouched defaults stay


def test_override_text_for_string_fields_stays_text():
    # YAML would read these as int / bool / float; a string field takes the text as typed.
    cfg = load(TrainPPOJob, None, ["prompts=p.jsonl", "run_dir=2024", "policy.path=no", "policy.tokenizer=1.50", "sync.verify=3",
                                   "reward.rm_path=null"])
    assert (cfg.run_dir, cfg.policy.path, cfg.policy.tokenizer, cfg.sync.verify) == ("2024", "no", "1.50", "3")
    assert cfg.reward.rm_path is None and cfg.sync.verify_every == 3  # the older spelling still works
    assert load(TrainPPOJob, None, ["prompts=p.jsonl", "sync.verify=never"]).sync.verify_every == 0
    with pytest.raises(ConfigError, match="learner.lr: NaN is not allowed"):
        load(TrainPPOJob, None, ["prompts=p.jsonl", "learner.lr=.nan"])
    with pytest.raises(ConfigError, match="sampling.stop: expected a list, got str '\\[unclosed'"):
        load(TrainPPOJob, None, ["prompts=p.jsonl", "sampling.stop=[unclosed"])


def test_optional_section_is_built_when_set():
    assert load(TrainPPOJob, None, ["prompts=p.jsonl"]).reward.rm_path is None
    from rlaif_ray.config import GeneratePairsJob

    cfg = load(GeneratePairsJob, None, ["prompts=p.jsonl", "policy_b.path=other", "policy_b.dtype=bf16"])
    assert isinstance(cfg.policy_b, ModelConfig)
    assert (cfg.policy_b.path, cfg.policy_b.dtype, cfg.policy_b.lora.r) == ("other", "bf16", 16)


def test_nested_list_of_stages(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump({"stages": [
        {"name": "ai", "data": "ai.jsonl", "soft_labels": True},
        {"name": "human", "data": "human.jsonl", "beta": 0.2, "reference": "previous", "loss": "ipo"},
    ]}))
    cfg = load(TrainDPOJob, path)
    assert [type(s) for s in cfg.stages] == [DPOStage, DPOStage]
    assert [s.name for s in cfg.stages] == ["ai", "human"]
    assert cfg.stages[0].soft_labels and cfg.stages[0].beta == 0.1
    assert (cfg.stages[1].beta, cfg.stages[1].reference, cfg.stages[1].loss) == (0.2, "previous", "ipo")

    path.write_text(yaml.safe_dump({"stages": [{"name": "ai"}, {"name": "human", "beta": -1}]}))
    with pytest.raises(ConfigError, match=r"stages\[1\]\.beta: -1.0 must be greater than 0"):
        load(TrainDPOJob, path)
    path.write_text(yaml.safe_dump({"stages": [{"name": "ai", "epoch": 2}]}))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.epoch: unknown key"):
        load(TrainDPOJob, path)
    with pytest.raises(ConfigError, match=r"stages: expected a list"):
        load(TrainDPOJob, None, ["stages=ai"])


def test_defaults_are_independent_copies():
    a, b = load(TrainDPOJob), load(TrainDPOJob)
    a.stages[0].beta = 9.0
    a.model.lora.target_modules.append("gate_proj")
    assert b.stages[0].beta == 0.1 and "gate_proj" not in b.model.lora.target_modules


def test_save_round_trip(tmp_path):
    cfg = load(TrainDPOJob, None, ["learner.zero_stage=3", "model.lora.enabled=true", "ray.num_cpus=2"])
    cfg.stages.append(DPOStage(name="human", data="h.jsonl", beta=0.3))
    out = save(cfg, tmp_path / "run")
    assert out == tmp_path / "run" / "config.yaml"
    again = from_dict(TrainDPOJob, yaml.safe_load(out.read_text()))
    assert again == cfg
    assert load(TrainDPOJob, out) == cfg  # a saved config is a valid config file
    bad = to_dict(cfg)
    bad["learner"]["zero_stage"] = 5
    with pytest.raises(ConfigError, match="learner.zero_stage: 5 is above the maximum 3"):
        from_dict(TrainDPOJob, bad)
    with pytest.raises(ConfigError, match="rollout.kv_block_size: vLLM's CPU attention takes a multiple of 32, got 48"):
        load(TrainPPOJob, None, ["prompts=p.jsonl", "rollout.kv_block_size=48"])


def test_every_field_has_a_doc():
    from rlaif_ray.jobs import JOBS

    for name, job in JOBS.items():
        for key, doc, _ in describe(job.config) if job.config else ():
            assert doc.strip(), f"{name}: {key} has no doc"


JOB_MODULE = """
def run(cfg, args):
    print("ran with zero_stage", cfg.learner.zero_stage)
    return 0
"""


@pytest.fixture
def cli_job(tmp_path, monkeypatch):
    """A job module of our own behind the real CLI dispatcher, so these tests do not depend on which
    of the real jobs are built yet."""
    (tmp_path / "cfg_test_job.py").write_text(JOB_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.JOBS, "cfg-test", Job("cfg_test_job", "a test job", TrainDPOJob))
    return "cfg-test"


def test_show_config_prints_every_key_with_its_doc(cli_job, capsys):
    assert cli.main([cli_job, "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "learner.zero_stage = 2\n    DeepSpeed ZeRO stage" in out
    assert "model.lora.r = 16\n    LoRA rank" in out
    assert "stages = [DPOStage(" in out


def test_cli_runs_the_job_and_saves_the_effective_config(cli_job, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main([cli_job, f"run_dir={run_dir}", "learner.zero_stage=3"]) == 0
    assert "ran with zero_stage 3" in capsys.readouterr().out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["learner"]["zero_stage"] == 3
    assert from_dict(TrainDPOJob, saved).run_dir == str(run_dir)


def test_cli_config_error_exits_2(cli_job, capsys):
    assert cli.main([cli_job, "learner.zero_stage=9"]) == 2
    assert "learner.zero_stage: 9 is above the maximum 3" in capsys.readouterr().err


def test_partial_section_override_keeps_the_parents_default_instance():
    from rlaif_ray.config import DemoJob, load

    cfg = load(DemoJob, overrides=["judge.model=tiny", "rm_learner.dtype=fp32"])
    assert cfg.judge.kind == "local" and cfg.judge.model == "tiny"  # DemoJob's judge, not JudgeConfig()'s
    assert cfg.rm_learner.lr == 2e-4 and cfg.rm_learner.dtype == "fp32"


def test_list_items_are_overridden_by_index(tmp_path):
    cfg = load(TrainDPOJob, None, ["stages.0.lr=1e-4", "stages.0.loss=ipo"])  # onto the default list
    assert (len(cfg.stages), cfg.stages[0].lr, cfg.stages[0].loss, cfg.stages[0].name) == (1, 1e-4, "ipo", "ai")
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"name": "ai"}, {"name": "human", "beta": 0.2}]}))
    cfg = load(TrainDPOJob, path, ["stages.1.beta=0.3", "stages.1.reference=previous"])  # into the file's list
    assert [(s.name, s.beta, s.reference) for s in cfg.stages] == [("ai", 0.1, "initial"), ("human", 0.3, "previous")]
    with pytest.raises(ConfigError, match=r"stages.2.lr: '2' is not an item of the list \(2 items\)"):
        load(TrainDPOJob, path, ["stages.2.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"stages.1: no item 1 \(the list has 1\)"):
        load(TrainDPOJob, None, ["stages.1.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.lr: -1.0 must be greater than 0"):
        load(TrainDPOJob, None, ["stages.0.lr=-1"])


def test_exponent_without_a_dot_is_a_number_in_files_and_overrides(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("learner:\n  lr: 1e-4\n")  # YAML 1.1 alone would read this as the string '1e-4'
    assert load(TrainDPOJob, path).learner.lr == 1e-4
    assert load(TrainDPOJob, None, ["learner.lr=5E-6"]).learner.lr == 5e-6
    with pytest.raises(ConfigError, match="learner.lr: expected a number, got str 'fast'"):
        load(TrainDPOJob, None, ["learner.lr=fast"])


def test_sampling_cache_key_leaves_out_ignore_eos_when_unset():
    """Answer caches written before ignore_eos existed still match a default config."""
    from rlaif_ray.config import SamplingConfig

    old = {"n": 1, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_new_tokens": 64, "stop": [], "seed": 0}
    assert SamplingConfig().cache_key() == old
    assert SamplingConfig(ignore_eos=True).cache_key() == {**old, "ignore_eos": True}
