"""A written constitution: principles that critique, revise and compare answers (Constitutional AI,
Bai et al. 2022). For RL-CAI preference labels (`judge.constitution=FILE`) each pair is judged under
`judge.principles_per_pair` principles drawn for it (seeded by the pair's id, so a resumed or repeated
run draws the same ones); each principle's `compare` question replaces the rubric of its calls, the
label averages them, and the label records the principle ids.

    constitution = load_constitution(path)            # {id: Principle}; "default", "tone": shipped ones
    ids = principles_for(pair_id, constitution, k)    # k distinct principle ids, fixed per pair

File (YAML): `principles: [{id, critique, revision, compare?, score?}, ...]`; without `compare` a judge is
asked to judge the answers by the critique request. `score` is the question about one answer that
protocol=pointwise asks (each answer scored alone under the pair's principle; small judges that always pick
the first-shown answer still rank answers this way).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED = {"default": _ASSETS / "constitution.yaml", "tone": _ASSETS / "constitution_tone.yaml"}


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str  # asked of one answer: what is wrong with it under this principle
    revision: str  # how to rewrite the answer to meet the principle
    compare: str  # asked of two answers: which meets the principle better
    score: str  # asked of one answer (protocol=pointwise): does it meet the principle

    def rubric(self, pointwise: bool = False) -> str:
        """The judge's rubric for a comparison under this principle, or for one answer scored alone."""
        if pointwise:
            return (f"You judge one answer to a prompt under one principle of a constitution "
                    f"(principle '{self.id}'). {self.score}")
        return (f"You compare two answers to the same prompt under one principle of a constitution "
                f"(principle '{self.id}'). {self.compare}")


@functools.lru_cache(maxsize=8)
def load_constitution(path: str) -> dict[str, Principle]:
    """Principles by id, in file order; a bad file raises ValueError naming the file, entry and field."""
    import yaml

    file = SHIPPED.get(path) or Path(path)
    if not file.exists():
        raise ValueError(f"judge.constitution: {path}: no such file")
    data = yaml.safe_load(file.read_text())
    entries = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{file}: expected `principles:` with a list of {{id, critique, revision}}")
    out: dict[str, Principle] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"{file}: principles[{i}]: expected a mapping with id, critique, revision")
        for name in ("id", "critique", "revision"):
            if not isinstance(e.get(name), str) or not e[name].strip():
                raise ValueError(f"{file}: principles[{i}].{name}: missing or empty")
        if e["id"] in out:
            raise ValueError(f"{file}: principles[{i}].id: {e['id']!r} appears twice")
        compare = e.get("compare") or f"Judge the answers by this request: {e['critique']} Which answer does better?"
        score = e.get("score") or f"Judge the answer by this question: {compare}"
        out[e["id"]] = Principle(e["id"], e["critique"], e["revision"], compare, score)
    return out


def principles_for(pair_id: str, constitution: dict[str, Principle], k: int) -> list[str]:
    """k distinct principle ids for one pair, a function of the pair id only."""
    ids = list(constitution)
    if k > len(ids):
        raise ValueError(f"judge.principles_per_pair={k}, but the constitution has {len(ids)} principles")
    return random.Random(f"constitution:{pair_id}").sample(ids, k)


def task_rubric(rubric: str, cfg, task, pointwise: bool = False) -> str:
    """The rubric of one judge call: its principle's under a constitution, else the judge's own."""
    return load_constitution(cfg.constitution)[task.principle].rubric(pointwise) if task.principle else rubric


def file_text(path: str) -> str:
    """The constitution's text (part of the judge's config hash: an edited constitution is a new judge)."""
    return (SHIPPED.get(path) or Path(path)).read_text()
