"""Tiny-model factory: a byte-level BPE trained on a generated corpus, a ChatML chat template and a
random Llama of a requested size, written with `save_pretrained` so that everything downstream loads
it through the real loading code (transformers, vLLM, DeepSpeed) exactly like a hub model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

FACTORY_VERSION = 1  # bump when the recipe changes so cached models are rebuilt
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_SUBJECTS = ["the cat", "a robot", "my friend", "the river", "an old map", "the teacher", "a small bird",
             "the city", "our team", "the model", "a kind judge", "the garden"]
_VERBS = ["finds", "explains", "carries", "paints", "answers", "builds", "follows", "helps", "reads", "counts"]
_OBJECTS = ["a red apple", "the long story", "three blue stones", "a simple answer", "the bright moon",
            "a careful plan", "the question", "seven letters", "a warm coat", "the number nine"]
_ADVERBS = ["slowly", "politely", "quickly", "clearly", "at night", "with care", "again", "today"]


def generate_corpus(n_sentences: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic English-like sentences, plus digits and punctuation, for training the BPE."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_sentences):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ADVERBS)}"
        if i % 3 == 0:
            s = f"Question {i}: why does {s}?"
        elif i % 3 == 1:
            s = f"Answer: {s.capitalize()}, because {rng.randint(0, 999)} is {rng.choice(['good', 'bad', 'fine'])}."
        lines.append(s)
    return lines


def train_tokenizer(vocab_size: int = 1024, seed: int = 0):
    """A byte-level BPE (any UTF-8 text encodes) wrapped as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(generate_corpus(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llama_shape(target_params: int, vocab_size: int) -> dict[str, int]:
    """Pick hidden size and depth so that the untied Llama has about `target_params` parameters."""
    best = None
    for hidden in (64, 128, 192, 256, 384, 512, 768, 1024):
        inter = int(hidden * 8 / 3) // 32 * 32
        per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
        embed = 2 * vocab_size * hidden + hidden
        layers = max(1, round((target_params - embed) / per_layer))
        if layers > 24:
            continue
        total = embed + layers * per_layer
        err = abs(total - target_params) / target_params
        if best is None or err < best[0] - 1e-9:
            best = (err, hidden, inter, layers)
    _, hidden, inter, layers = best
    head_dim = 32 if hidden < 256 else 64  # sizes every vLLM CPU attention kernel supports
    return {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": hidden // head_dim, "num_key_value_heads": hidden // head_dim}


def build_tiny_model(out_dir: str | Path, params: int = 2_000_000, seed: int = 0, vocab_size: int = 1024,
                     max_position_embeddings: int = 2048) -> Path:
    """Write tokenizer + random Llama (fp32 safetensors) to `out_dir` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(vocab_size, seed)
    shape = llama_shape(params, len(tokenizer))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         dtype="float32", **shape)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def cache_root() -> Path:
    return Path(os.environ.get("RLAIF_RAY_CACHE", Path.home() / ".cache" / "rlaif-ray"))


def tiny_model_path(params: int = 2_000_000, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Build once per (size, seed, recipe) into the cache and reuse; safe under concurrent callers
    (build in a temp dir, then an atomic rename)."""
    root = Path(cache_dir) if cache_dir else cache_root()
    final = root / f"tiny-llama-{params}-s{seed}-v{FACTORY_VERSION}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=root))
    try:
        build_tiny_model(tmp, params=params, seed=seed)
        (tmp / "rlaif_ray_factory.json").write_text(json.dumps({"params": params, "seed": seed,
                                                                 "version": FACTORY_VERSION}))
        tmp.chmod(0o755)  # mkdtemp makes it private; actors of other users/steps read the cache
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
