"""Models: the tiny-model factory and the offline SmolLM2 load through the real loading code."""

import pytest
import torch

from rlaif_ray.config import LoraConfig, ModelConfig
from rlaif_ray.models import (
    apply_lora,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_model_path,
    tiny_model_path,
)


def test_tokenizer_round_trip_and_chat_template(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    for text in ["the cat finds a red apple slowly", "Unicode ✓ é 中文 and emoji 🙂", "  spaces\tand\nlines "]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text  # byte-level BPE: any UTF-8 text survives
    assert len(tok("the cat finds a red apple")["input_ids"]) < len("the cat finds a red apple")  # merges learned
    assert (tok.pad_token, tok.eos_token, tok.padding_side) == ("<pad>", "<|im_end|>", "left")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids and tok.decode(ids) == rendered


def test_causal_lm_loads_and_generates(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    model, tok = load_causal_lm(cfg), load_tokenizer(str(tiny_model_dir))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    batch = tok(["the cat", "a robot finds the moon"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 6)
    again = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, again)  # greedy is deterministic
    bf16 = load_causal_lm(ModelConfig(path=str(tiny_model_dir), dtype="bf16"))
    assert next(bf16.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("target", [200_000, 10_000_000])
def test_tiny_model_sizes(target):
    path = resolve_model_path(ModelConfig(path="tiny", tiny_params=target))
    assert path == str(tiny_model_path(target, 0))
    n = sum(p.numel() for p in load_causal_lm(ModelConfig(), path).parameters())
    assert abs(n - target) / target < 0.25, f"{n} params for a {target} target"


def test_lora_trains_only_adapters(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), lora=LoraConfig(enabled=True, r=4, alpha=8))
    model = load_causal_lm(cfg, trainable=True)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    # q/k/v/o with equal kv heads: each adapter is A (r x hidden) + B (hidden x r).
    assert sum(trainable.values()) == layers * 4 * 2 * 4 * hidden
    # Only the adapters change under an optimizer step.
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    tok = load_tokenizer(str(tiny_model_dir))
    batch = tok(["the cat finds a red apple"], return_tensors="pt")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # B starts at zero: the second step moves A too
        model(**batch, labels=batch["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert apply_lora(load_causal_lm(ModelConfig(path=str(tiny_model_dir))), ModelConfig()) is not None


def test_reward_model_scores_padded_batches_like_single_sequences(tiny_model_dir):
    rm, tok = load_reward_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    rm.eval()
    assert rm.config.pad_token_id == tok.pad_token_id and rm.config.num_labels == 1
    texts = ["the cat", "a robot paints three blue stones with care"]
    with torch.no_grad():
        batch = rm(**tok(texts, return_tensors="pt", padding=True)).logits
        single = torch.cat([rm(**tok([t], return_tensors="pt")).logits for t in texts])
    assert batch.shape == (2, 1)
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_smollm2_offline_answers():
    """The offline real model: GGUF -> safetensors once (cached), then the normal loading path."""
    from rlaif_ray.models.smollm2 import smollm2_path

    path = smollm2_path("bf16")
    assert (path / "model.safetensors").exists() and smollm2_path("bf16") == path  # converted once, reused
    model = load_causal_lm(ModelConfig(path="smollm2", dtype="bf16"))
    tok = load_tokenizer(str(path))
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
