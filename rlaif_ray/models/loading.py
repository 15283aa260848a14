"""Load policy, reference, reward models and tokenizers from an HF id, a local dir, 'tiny' or 'smollm2'.

Everything goes through `from_pretrained`, the same code a hub model takes. Nothing here knows Ray.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def resolve_model_path(cfg: ModelConfig) -> str:
    """Turn the config's `path` into a directory or hub id that `from_pretrained` takes."""
    if cfg.path == "tiny":
        from .tiny import tiny_model_path

        return str(tiny_model_path(cfg.tiny_params, cfg.seed, cfg.cache_dir))
    if cfg.path == "smollm2":
        from .smollm2 import smollm2_path

        return str(smollm2_path("bf16" if cfg.dtype == "bf16" else "fp32", cfg.cache_dir))
    return cfg.path


def tokenizer_path(cfg: ModelConfig) -> str:
    """The config's tokenizer when it names one, else the model's own."""
    return cfg.tokenizer or resolve_model_path(cfg)


def load_tokenizer(path: str, padding_side: str = "left"):
    """Tokenizer with a pad token (its eos if it has none); left padding suits batched generation."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def apply_lora(model, cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    """Wrap `model` with trainable LoRA adapters when the config asks for them. For a reward model
    pass task_type="SEQ_CLS": peft then also trains the freshly initialised score head."""
    if not cfg.lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), bias="none", task_type=task_type)
    return get_peft_model(model, lora)


def load_causal_lm(cfg: ModelConfig, path: str | None = None, trainable: bool = False):
    """A causal LM in the config's dtype; with LoRA adapters when `trainable` and LoRA is enabled."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path or resolve_model_path(cfg), dtype=torch_dtype(cfg.dtype))
    if trainable:
        return apply_lora(model, cfg)
    model.eval()
    model.requires_grad_(False)
    return model


def load_reward_model(path: str, dtype: str = "fp32"):
    """A sequence-classification model with one output (the scalar reward)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch_dtype(dtype))
    if model.config.pad_token_id is None:
        tok = load_tokenizer(path)
        model.config.pad_token_id = tok.pad_token_id
    return model


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").exists()
