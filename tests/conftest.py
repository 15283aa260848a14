"""Shared test set-up: offline hub, private caches, one local Ray per session, one tiny model."""

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="rlaif-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_TMP / "hf"))
os.environ.setdefault("HF_DATASETS_CACHE", str(_TMP / "hf-datasets"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Built models and JIT-compiled DeepSpeed ops are deterministic: keep them across runs.
_CACHE = Path(os.environ.setdefault("RLAIF_RAY_CACHE", str(Path.home() / ".cache" / "rlaif-ray")))
# Per venv: a JIT build records the venv's include paths, so two checkouts sharing one directory rebuild
# each other's ops on every run.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_CACHE / "torch_extensions" / hashlib.md5(sys.prefix.encode()).hexdigest()[:8]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (start-up costs ~10 s); never `ray stop`."""
    import ray

    from rlaif_ray.cluster import init_ray
    from rlaif_ray.config import RayConfig

    init_ray(RayConfig(address="local", object_store_mb=1024, temp_dir=str(_TMP / "ray")))
    yield ray
    ray.shutdown()


@pytest.fixture()
def fake(monkeypatch):
    """The loopback API fake requiring a key that both SDKs read from the environment (modules that need
    another set-up define their own `fake`)."""
    from rlaif_ray.testing.fake_api import FakeAPI

    key = "sk-ant-test-SECRET-4242"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    server = FakeAPI(api_key=key).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A ~2M-parameter Llama + BPE tokenizer built locally and saved with save_pretrained."""
    from rlaif_ray.models import tiny_model_path

    return tiny_model_path(2_000_000, seed=0)
