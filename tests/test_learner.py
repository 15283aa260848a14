"""LearnerGroup on 2 gloo ranks with real DeepSpeed: ZeRO-2 = ZeRO-3 (fp32, bf16), full-state export,
LoRA merged weights, NaN guard, dead-actor error, fp16 refusal."""

import pytest
import torch

from benchmarks.bench_learner import synthetic_preferences
from rlaif_ray.config import ConfigError, LearnerConfig, ModelConfig
from rlaif_ray.config.schema import from_dict


def test_fp16_on_cpu_is_refused_before_anything_starts():
    from rlaif_ray.config.jobs import TrainDPOJob

    with pytest.raises(ConfigError, match=r"learner\.dtype: fp16 .* CPU"):
        from_dict(TrainDPOJob, {"learner": {"dtype": "fp16"}})
    from rlaif_ray.learner.engine import check_precision

    with pytest.raises(ConfigError, match="fp16"):
        check_precision(LearnerConfig(dtype="fp16"))  # built in code, bypassing the loader
    check_precision(LearnerConfig(dtype="fp16", gpus_per_rank=1))  # fine on GPUs


def _batch(tiny_model_dir, n=8):
    from rlaif_ray.learner.objectives import collate_preferences
    from rlaif_ray.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), padding_side="right")
    return collate_preferences(synthetic_preferences(n, seed=3), tok, 64)


def _group(tiny_model_dir, stage, dtype, lora=False):
    from rlaif_ray.config import LoraConfig
    from rlaif_ray.learner.group import LearnerGroup
    from rlaif_ray.learner.objectives import DPOObjective

    cfg = LearnerConfig(num_ranks=2, zero_stage=stage, dtype=dtype, lr=1e-3, micro_batch_size=2, grad_accum=2,
                        shm_comm=False, timeout_s=300)
    model = ModelConfig(path=str(tiny_model_dir), lora=LoraConfig(enabled=lora, r=4, alpha=8))
    return LearnerGroup(cfg, model, {"dpo": DPOObjective(beta=0.1)}, name=f"test-z{stage}-{dtype}")


def _run(group, batch, steps=3):
    batch = dict(batch)
    batch["ref_logps"] = group.forward("dpo", batch)["logps"]
    return [group.train_step("dpo", batch)["loss"] for _ in range(steps)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_zero2_and_zero3_give_the_same_losses_and_weights(ray_session, tiny_model_dir, dtype):
    batch = _batch(tiny_model_dir)
    results = {}
    for stage in (2, 3):
        with _group(tiny_model_dir, stage, dtype) as g:
            losses = _run(g, batch)
            results[stage] = losses, g.state_for_sync()
    (l2, s2), (l3, s3) = results[2], results[3]
    assert l2[0] == pytest.approx(0.6931472, abs=1e-5)  # policy == reference before the first step
    assert l2[-1] < l2[0]  # it learns
    tol = 1e-5 if dtype == "fp32" else 2e-3
    assert l3 == pytest.approx(l2, abs=tol)
    assert s2.keys() == s3.keys() and "lm_head.weight" in s3
    assert max((s2[k].float() - s3[k].float()).abs().max().item() for k in s2) <= (1e-5 if dtype == "fp32" else 2e-2)


@pytest.mark.slow
def test_lora_trains_and_merged_weights_load_strictly(ray_session, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlaif_ray.learner.objectives import DPOObjective

    batch = _batch(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with _group(tiny_model_dir, 2, "fp32", lora=True) as g:
        losses = _run(g, batch, steps=4)
        merged = g.state_for_sync()
        after = g.forward("dpo", batch)["logps"]
        g.save(str(tmp_path / "export"), {"step": 4}, hf_only=True)
    assert losses[-1] < losses[0]
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    plain.load_state_dict(merged, strict=True)  # HF names only: no base_layer / lora_ tensors
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base.state_dict()[q])  # the adapter is merged in
    mlp = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(merged[mlp], base.state_dict()[mlp])  # untouched where there is no adapter
    with torch.no_grad():
        mine = DPOObjective().forward(plain.eval(), batch)["logps"]
    assert mine == pytest.approx(after, abs=1e-4)  # the merged model is the trained model
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), dtype=torch.float32)
    assert torch.equal(exported.state_dict()[q], merged[q])


@pytest.mark.slow
def test_nan_loss_names_the_batch_and_a_dead_rank_is_named(ray_session, tiny_model_dir):
    import ray

    from rlaif_ray.learner.group import LearnerError, NonFiniteLossError

    batch = _batch(tiny_model_dir)
    g = _group(tiny_model_dir, 2, "fp32")
    try:
        poisoned = dict(batch)
        poisoned["ref_logps"] = torch.full((8, 2), float("nan"))
        with pytest.raises(NonFiniteLossError) as err:
            g.train_step("dpo", poisoned)
        assert err.value.ids == batch["ids"]
        assert all(i in str(err.value) for i in batch["ids"])
        # the group is still usable: no step was taken, no rank is stuck
        assert _run(g, batch, steps=1)[0] == pytest.approx(0.6931472, abs=1e-5)
        ray.kill(g.actors[1])
        with pytest.raises(LearnerError, match=r"learner rank 1 on [\d.]+ died"):  # names the rank and its node
            g.train_step("dpo", dict(batch, ref_logps=torch.zeros(8, 2)))
    finally:
        g.shutdown()


_LOAD_SHM = ("import os, sys; os.environ['DS_ACCELERATOR'] = 'cpu'; from rlaif_ray.learner.engine import load_shm_op; "
             "load_shm_op(float(sys.argv[1]))")


@pytest.mark.slow
def test_shm_op_build_survives_a_killed_builder_and_a_held_lock_times_out(tmp_path):
    """Torch's JIT lock file outlives a builder killed mid-build (a rank stopped at a timeout) and then blocks
    every later rank forever; load_shm_op serialises builds with an flock and removes such a stale file."""
    import fcntl
    import os
    import subprocess
    import sys

    from torch.utils.cpp_extension import get_default_build_root

    directory = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root(), "deepspeed_shm_comm")
    os.makedirs(directory, exist_ok=True)
    stale = os.path.join(directory, "lock")
    open(stale, "w").close()  # what a killed build leaves
    done = subprocess.run([sys.executable, "-c", _LOAD_SHM, "300"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not os.path.exists(stale)
    assert os.path.exists(os.path.join(directory, "deepspeed_shm_comm.so"))

    with open(os.path.join(directory, "build.flock"), "w") as guard:  # a live builder holds the lock
        fcntl.flock(guard, fcntl.LOCK_EX)
        waited = subprocess.run([sys.executable, "-c", _LOAD_SHM, "2"], capture_output=True, text=True, timeout=120)
    assert waited.returncode != 0
    assert "another process has held the build lock of DeepSpeed's shm op for 2s" in waited.stderr
