"""Eval answers: every policy answers the held-out prompts on rollout workers, cached per policy in
`<run_dir>/answers/<name>.jsonl`; with a KL reference, the per-answer sum of log pi - log ref.

    samples, kl = generate_answers(cfg, prompts, run_dir)   # {policy: [Sample | None]}, {policy: [kl | nan]}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import EvalJob, SyncConfig

log = logging.getLogger(__name__)


def resolve_policy(spec: str, dtype: str) -> str:
    """'tiny' / 'smollm2' / HF id / model dir / a training run dir (its newest complete checkpoint)."""
    from ..config import ModelConfig
    from ..learner.checkpoint import latest_checkpoint
    from ..models import resolve_model_path

    path = resolve_model_path(ModelConfig(path=spec, dtype=dtype))
    if (Path(path) / "final" / "config.json").exists():  # a finished training run
        return str(Path(path) / "final")
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"policies: {spec} holds neither config.json nor a complete checkpoint")
        return ckpt
    return path


def generate_answers(cfg: EvalJob, prompts, run_dir: Path) -> tuple[dict[str, list], dict[str, list]]:
    """{policy: [Sample or None per prompt]} from rollout pools, one policy at a time (reusing
    answers/<name>.jsonl when it holds these prompts from the same model and sampling), and, with a KL
    reference, {policy: [sum of log pi - log ref over the answer's tokens, or nan]}. Consecutive
    policies of one architecture and tokenizer share the engine: their weights are swapped in place
    (seconds) instead of starting a new engine (half a minute on a CPU)."""
    import numpy as np
    from tqdm import tqdm

    from ..rollout import RolloutPool
    from ..rollout.engine import Sample
    from ..sync import WeightSync

    names = sorted(cfg.policies, key=lambda n: n == cfg.kl_reference)  # the KL reference goes last
    samples: dict[str, list] = {}
    own_lp: dict[str, list] = {}
    kl: dict[str, list] = {}
    pool, sync, pool_key = None, None, None
    try:
        for version, name in enumerate(tqdm(names, desc="generate", unit="policy"), start=1):
            path = resolve_policy(cfg.policies[name], cfg.dtype)
            cache = run_dir / "answers" / f"{name}.jsonl"
            cached = _read_cache(cache, path, [p.id for p in prompts], cfg)
            if cached is not None:
                samples[name] = [None if r is None else Sample(**r["sample"]) for r in cached]
                own_lp[name] = [r.get("logprobs_raw") if r else None for r in cached]
            is_ref = name == cfg.kl_reference
            needs_lp = cfg.kl_reference is not None and not is_ref and (
                name not in own_lp or any(lp is None for s, lp in zip(samples[name], own_lp[name], strict=True)
                                          if s is not None and s.token_ids))
            if name in samples and not needs_lp and not is_ref:
                log.info("%s: cached answers in %s", name, cache)
                continue
            key = _engine_key(path)
            if pool is not None and key == pool_key:
                sync.load_dir(path, version)
            else:
                if pool is not None:
                    pool.shutdown()
                pool = RolloutPool(path, cfg.rollout, seed=cfg.seed, dtype=cfg.dtype, name=f"eval-{name}")
                sync, pool_key = WeightSync(pool, SyncConfig(verify_every=0)), key
            if name not in samples:
                samples[name] = [s[0] if s else None for s in pool.generate([p.prompt for p in prompts], cfg.sampling)]
            if needs_lp:
                own_lp[name] = _score(pool, samples[name])
            if is_ref:
                for other in names[:-1]:
                    ref = _score(pool, samples[other])
                    kl[other] = [np.nan if a is None or r is None else float(np.sum(a) - np.sum(r))
                                 for a, r in zip(own_lp[other], ref, strict=True)]
                kl[name] = [0.0 if s is not None else np.nan for s in samples[name]]
            _write_cache(cache, path, prompts, samples[name], own_lp.get(name), cfg)
    finally:
        if pool is not None:
            pool.shutdown()
    return samples, kl


def _engine_key(path: str) -> tuple[str, str]:
    """What an engine must share with a model to take its weights in place: the architecture
    (config.json minus bookkeeping keys) and the tokenizer files."""
    import hashlib

    config = json.loads((Path(path) / "config.json").read_text())
    for k in ("use_cache", "_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        config.pop(k, None)
    tok = hashlib.sha256()
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja"):
        if (Path(path) / f).exists():
            tok.update(f.encode() + (Path(path) / f).read_bytes())
    if (Path(path) / "tokenizer_config.json").exists():
        tok_cfg = json.loads((Path(path) / "tokenizer_config.json").read_text())
        for k in ("local_files_only", "name_or_path", "_commit_hash"):
            tok_cfg.pop(k, None)
        tok.update(json.dumps(tok_cfg, sort_keys=True).encode())
    return json.dumps(config, sort_keys=True), tok.hexdigest()


def _score(pool, samples) -> list:
    """Raw log-probs of each answer's tokens under the pool's model (None for a missing answer)."""
    keep = [i for i, s in enumerate(samples) if s is not None and s.token_ids]
    lps = pool.group.call("sequence_logprobs", [samples[i].prompt_token_ids for i in keep],
                          [samples[i].token_ids for i in keep], ranks=[0])[0] if keep else []
    out: list = [None] * len(samples)
    for i, lp in zip(keep, lps, strict=True):
        out[i] = lp
    return out


def _read_cache(path: Path, model_path: str, ids: list[str], cfg: EvalJob) -> list | None:
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta, rows = rows[0], rows[1:]
    want = {"model_path": model_path, "sampling": cfg.sampling.cache_key()}
    if any(meta.get(k) != v for k, v in want.items()) or [r["prompt_id"] for r in rows] != ids:
        return None
    return [r if r["sample"] is not None else None for r in rows]


def _write_cache(path: Path, model_path: str, prompts, samples, logprobs, cfg: EvalJob) -> None:
    from dataclasses import asdict

    from ..data import write_rows

    meta = {"model_path": model_path, "sampling": cfg.sampling.cache_key()}
    rows = [{"prompt_id": p.id, "prompt": p.prompt, "answer": s.text if s else None,
             "sample": asdict(s) if s else None, **({"logprobs_raw": lp} if logprobs else {})}
            for p, s, lp in zip(prompts, samples, logprobs or [None] * len(prompts), strict=True)]
    write_rows(path, [meta, *rows])

