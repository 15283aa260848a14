"""Model and tokenizer loading (HF ids, local dirs, LoRA), the tiny-model factory, offline SmolLM2."""

from .loading import (
    apply_lora,
    is_model_dir,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_model_path,
    tokenizer_path,
    torch_dtype,
)
from .tiny import build_tiny_model, tiny_model_path

__all__ = ["apply_lora", "build_tiny_model", "is_model_dir", "load_causal_lm", "load_reward_model",
           "load_tokenizer", "resolve_model_path", "tiny_model_path", "tokenizer_path", "torch_dtype"]
