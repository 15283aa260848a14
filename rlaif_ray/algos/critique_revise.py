"""`rlaif-ray critique-revise`: Constitutional AI's supervised stage (Bai et al. 2022, section 3).

The policy answers each prompt once (rollout workers). For each answer a principle is drawn from the
constitution (seeded by `seed`, the prompt and the round); the critic (a FeedbackPool judge: Claude,
OpenAI-compatible or local) writes a critique of the answer under that principle, then a revision that
answers the critique; round r critiques and revises round r-1's revision. Out: SFT rows (prompt -> final
revision) and, with `preferences`, pairs (final revision over the original answer), each row with its
provenance: principle ids, critic id, rounds, config hash.

Every critique and revision is a call of the pool's durable store (<run_dir>/labels), keyed by a hash of
the whole request, and the policy's answers are kept in <run_dir>/answers.jsonl: a re-run after a crash or
a kill reads back what was paid for and asks only for the rest. A call that failed (after retries) leaves
its prompt out of the outputs and the exit code 1; a re-run retries it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

from ..config.jobs import CritiqueReviseJob
from ..feedback.types import WriteTask

log = logging.getLogger(__name__)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_task(system: str, user: str, order: str, rnd: int, max_tokens: int, principle: str) -> WriteTask:
    """One critic call, identified by what it asks: the same request after a crash is the same stored call."""
    return WriteTask(_digest(system, user, max_tokens), system, user, order, rnd, max_tokens, principle)


def policy_answers(cfg: CritiqueReviseJob, records: list, path: Path) -> dict[str, dict]:
    """{prompt id: {answer, instruction, finish_reason}}, from `path` when it holds this policy's answers to
    these prompts (a re-run), else sampled on rollout workers and saved there first."""
    from ..data import write_rows
    from .generate_pairs import sample_policy, with_instruction

    key = _digest(cfg.policy.path, cfg.sampling.cache_key(), cfg.instructions)
    if path.exists():
        saved = {r["prompt_id"]: r for r in map(json.loads, path.read_text().splitlines())
                 if r.get("policy_key") == key}
        if all(r.id in saved for r in records):
            log.info("%s: reusing the policy's %d answers", path, len(records))
            return {r.id: saved[r.id] for r in records}
        log.warning("%s: holds other answers (policy, sampling or prompts changed); sampling again", path)
    instruction = [cfg.instructions[i % len(cfg.instructions)] if cfg.instructions else None
                   for i in range(len(records))]
    asked = [with_instruction(r.prompt, x) if x else r.prompt for r, x in zip(records, instruction, strict=True)]
    (samples,), _ = sample_policy(cfg.policy, cfg, asked)
    rows = [{"prompt_id": r.id, "policy_key": key, "instruction": x, "answer": s[0].text if s else None,
             "finish_reason": s[0].finish_reason if s else "rejected_too_long"}
            for r, x, s in zip(records, instruction, samples, strict=True)]
    write_rows(path, rows)
    return {row["prompt_id"]: row for row in rows}


class Critic:
    """The critic's pool and store: `write(tasks)` runs the calls the store lacks, returns every stored text."""

    def __init__(self, cfg: CritiqueReviseJob):
        from ..feedback.judges import judge_id, writer_hash
        from ..feedback.pool import FeedbackPool

        self.cfg, self.chash, self.judge_id = cfg, writer_hash(cfg.critic.judge), judge_id(cfg.critic.judge)
        self.pool = FeedbackPool(cfg.critic, cfg.ray, cfg.run_dir, self.chash)
        self.interrupted, self.calls = False, 0

    def write(self, tasks: dict[str, WriteTask], desc: str) -> dict[str, str]:
        from ..feedback.run import Pending

        unique = list({t.key: t for t in tasks.values()}.values())
        pending = Pending(self.cfg.critic.judge, self.cfg.run_dir, tasks=unique, chash=self.chash)
        pending.run(self.cfg.critic, self.cfg.ray, interruptible=True, desc=desc, pool=self.pool)
        self.interrupted |= pending.interrupted
        self.calls += len(pending.todo)
        got = {pid: pending.store.get(t.pair_id, self.chash, t.order, t.sample) for pid, t in tasks.items()}
        return {pid: r["text"] for pid, r in got.items() if r is not None and r["status"] == "ok"}


def run(cfg: CritiqueReviseJob, args: argparse.Namespace) -> int:
    from ..cluster import init_ray
    from ..data import read_prompts, write_rows
    from ..feedback.constitution import load_constitution, principles_for
    from ..feedback.labels import cost_of
    from ..feedback.prompts import CRITIC_SYSTEM, critique_user, revision_user
    from ..feedback.store import LabelStore
    from ..models import resolve_model_path

    t0 = time.perf_counter()
    records = read_prompts(cfg.prompts, cfg.max_prompts)  # empty prompts fail here as file:row:field
    if not records:
        raise ValueError(f"{cfg.prompts}: no prompts")
    constitution = load_constitution(cfg.constitution)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.ray, shared={"run_dir": str(run_dir), "policy": resolve_model_path(cfg.policy)})
    answers = policy_answers(cfg, records, run_dir / "answers.jsonl")
    prompt_of = {r.id: r.prompt for r in records}

    # Per prompt: the text now under revision and its history; a prompt leaves `current` when a call fails.
    current = {pid: a["answer"] for pid, a in answers.items() if a["answer"] is not None}
    history = {pid: {"principles": [], "critiques": [], "revisions": []} for pid in current}
    critic = Critic(cfg)
    try:
        for rnd in range(cfg.rounds):
            principle = {pid: constitution[principles_for(f"{cfg.seed}:{pid}:{rnd}", constitution, 1)[0]]
                         for pid in current}
            critiques = critic.write({pid: write_task(CRITIC_SYSTEM, critique_user(prompt_of[pid], text,
                                                                                   principle[pid].critique),
                                                      "critique", rnd, cfg.critique_tokens, principle[pid].id)
                                      for pid, text in current.items()}, f"critiques, round {rnd + 1}")
            if critic.interrupted:
                break
            revisions = critic.write({pid: write_task(CRITIC_SYSTEM, revision_user(prompt_of[pid], current[pid], c,
                                                                                   principle[pid].revision),
                                                      "revision", rnd, cfg.revision_tokens, principle[pid].id)
                                      for pid, c in critiques.items()}, f"revisions, round {rnd + 1}")
            if critic.interrupted:
                break
            for pid, text in revisions.items():
                h = history[pid]
                h["principles"].append(principle[pid].id)
                h["critiques"].append(critiques[pid])
                h["revisions"].append(text)
            current = {pid: revisions[pid] for pid in revisions}
    finally:
        nodes = critic.pool.nodes()
        critic.pool.shutdown()

    meta = {"critic": critic.judge_id, "rounds": cfg.rounds, "config_hash": critic.chash,
            "constitution": cfg.constitution}
    sft, prefs = [], []
    for r in records:
        h, a = history.get(r.id), answers[r.id]
        if critic.interrupted or h is None or len(h["revisions"]) < cfg.rounds:
            continue
        final, original = h["revisions"][-1], a["answer"]
        base = {"prompt_id": r.id, "principles": h["principles"], **meta}
        sft.append({"prompt": r.prompt, "completion": final, "id": _digest(r.prompt, final), **base,
                    "original": original, "critiques": h["critiques"], "revisions": h["revisions"],
                    "instruction": a["instruction"]})
        if final.strip() != original.strip():
            prefs.append({"prompt": r.prompt, "chosen": final, "rejected": original, "p_chosen": 1.0,
                          "id": _digest(r.prompt, final, original), **base})
    rejected = sum(a["answer"] is None for a in answers.values())
    incomplete = len(records) - rejected - len(sft)
    output = Path(cfg.output or run_dir / "sft.jsonl")
    if not critic.interrupted:
        write_rows(output, sft)
        if cfg.preferences:
            write_rows(run_dir / "preferences.jsonl", prefs)
    store = LabelStore(run_dir)
    store.refresh()
    summary = {"prompts": len(records), "rows": len(sft), "preferences": len(prefs) if cfg.preferences else None,
               "incomplete": incomplete, "rejected_too_long": rejected, "interrupted": critic.interrupted,
               **meta, "calls_run": critic.calls,
               "cost_cumulative": cost_of(store.ledger(critic.chash)),
               "output": None if critic.interrupted else str(output), "nodes": nodes,
               "seconds": round(time.perf_counter() - t0, 1)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "nodes"}, indent=2))
    if critic.interrupted:
        log.warning("interrupted: what was written is stored; run the same command again to finish")
        return 130
    if incomplete:
        log.error("%d prompts have no final revision (failed calls: see %s/labels); run again to retry",
                  incomplete, run_dir)
        return 1
    return 0
