"""`rlaif-ray generate-pairs`: prompts -> n samples each from a policy (or one per policy from two) ->
unlabeled pairs (prompt, response_a, response_b, id) for `rlaif-ray label`.

One policy: up to `pairs_per_prompt` disjoint pairs of distinct responses among its n samples.
Two policies: response_a from `policy`, response_b from `policy_b`, sample i against sample i.
Instructed variant (`instructions_b`): response_b from the same policy and engine, one of those instructions
(cycled) appended to the prompt's last user turn, sample i against sample i; the pair keeps the plain prompt.
Identical (or empty) responses are skipped and counted; prompts over the context are truncated or
rejected per `rollout.long_prompt`, counted too. The counts go to <run_dir>/generate_pairs_report.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ..config.jobs import GeneratePairsJob

log = logging.getLogger(__name__)


def sample_policy(model_cfg, cfg: GeneratePairsJob, *prompt_sets: list) -> tuple[list, dict]:
    """Start a RolloutPool on the policy, generate every prompt set on it, shut it down; (samples per prompt
    of each set, pool stats). Set k samples with seed + k: independent draws, not the same random numbers
    pushed through two prompts."""
    import dataclasses

    from ..models import resolve_model_path
    from ..rollout import RolloutPool

    path = resolve_model_path(model_cfg)
    pool = RolloutPool(path, cfg.rollout, model_cfg.seed, model_cfg.dtype, cfg.ray.placement_strategy)
    try:
        seed = cfg.sampling.seed
        return [pool.generate(prompts, dataclasses.replace(cfg.sampling, seed=None if seed is None else seed + k))
                for k, prompts in enumerate(prompt_sets)], dict(pool.stats)
    finally:
        pool.shutdown()


def with_instruction(prompt, instruction: str):
    """The prompt with `instruction` appended to its last user turn (a string prompt is that turn). Small
    models follow an instruction there far better than in a system prompt (measured with SmolLM2-135M: see FACTS.md)."""
    if isinstance(prompt, str):
        return f"{prompt} {instruction}"
    last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    return [{**m, "content": f"{m['content']} {instruction}"} if i == last else m for i, m in enumerate(prompt)]


def make_pairs(candidates: list[tuple[str, str]], limit: int) -> tuple[list[tuple[int, int]], int, int]:
    """Disjoint index pairs of distinct non-empty texts from (text_a, text_b) candidate pairs;
    returns (pairs, identical skipped, empty skipped)."""
    pairs, identical, empty = [], 0, 0
    for i, (a, b) in enumerate(candidates):
        if len(pairs) >= limit:
            break
        if not a.strip() or not b.strip():
            empty += 1
        elif a.strip() == b.strip():
            identical += 1
        else:
            pairs.append(i)
    return pairs, identical, empty


def build_rows(records, samples_a, samples_b, cfg: GeneratePairsJob) -> tuple[list[dict], dict]:
    from ..data import PairRecord

    rows, counts = [], {"identical_skipped": 0, "empty_skipped": 0}
    name_a = cfg.policy.path
    name_b = cfg.policy_b.path if cfg.policy_b else name_a
    for i, (rec, sa, sb) in enumerate(zip(records, samples_a, samples_b, strict=True)):
        if samples_b is samples_a:  # one policy: samples (0,1), (2,3), ...
            cand = [(sa[k], sa[k + 1]) for k in range(0, len(sa) - 1, 2)]
        else:
            cand = list(zip(sa, sb, strict=False))
        keep, identical, empty = make_pairs([(x.text, y.text) for x, y in cand], cfg.pairs_per_prompt)
        counts["identical_skipped"] += identical
        counts["empty_skipped"] += empty
        for k in keep:
            x, y = cand[k]
            pair = PairRecord(rec.prompt, x.text, y.text)
            rows.append({"id": pair.id, "prompt": rec.prompt, "response_a": x.text, "response_b": y.text,
                         "prompt_id": rec.id, "model_a": name_a, "model_b": name_b,
                         "finish_a": x.finish_reason, "finish_b": y.finish_reason,
                         **({"instruction_b": _instruction_b(cfg, i)} if cfg.instructions_b else {})})
    return rows, counts


def _instruction_b(cfg: GeneratePairsJob, i: int) -> str:
    return cfg.instructions_b[i % len(cfg.instructions_b)]


def run(cfg: GeneratePairsJob, args: argparse.Namespace) -> int:
    from ..cluster import init_ray
    from ..data import read_prompts, write_rows
    from ..models import resolve_model_path

    t0 = time.perf_counter()
    records = read_prompts(cfg.prompts, cfg.max_prompts)  # empty prompts fail here as file:row:field
    if not records:
        raise ValueError(f"{cfg.prompts}: no prompts")
    init_ray(cfg.ray, shared={"policy": resolve_model_path(cfg.policy),
                              "policy_b": resolve_model_path(cfg.policy_b) if cfg.policy_b else None})
    prompts = [r.prompt for r in records]
    if cfg.instructions_b:
        (samples_a, samples_b), stats = sample_policy(
            cfg.policy, cfg, prompts, [with_instruction(p, _instruction_b(cfg, i)) for i, p in enumerate(prompts)])
    else:
        (samples_a,), stats = sample_policy(cfg.policy, cfg, prompts)
        samples_b = samples_a
    if cfg.policy_b is not None:
        (samples_b,), _ = sample_policy(cfg.policy_b, cfg, prompts)
    if samples_b is not samples_a:
        rejected_b = {i for i, s in enumerate(samples_b) if not s}
        stats["rejected"] = len({i for i, s in enumerate(samples_a) if not s} | rejected_b)
    rows, counts = build_rows(records, samples_a, samples_b, cfg)
    output = Path(cfg.output or Path(cfg.run_dir) / "pairs.jsonl")
    write_rows(output, rows)
    report = {"prompts": len(records), "pairs": len(rows), **counts,
              "prompts_truncated": stats["truncated"], "prompts_rejected_too_long": stats["rejected"],
              "output": str(output), "seconds": round(time.perf_counter() - t0, 1)}
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run_dir) / "generate_pairs_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0
