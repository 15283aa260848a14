"""`rlaif-ray label-human`: label pairs by hand at the terminal (the small human set that follows an RLAIF
warm-up). Each pair is shown with its responses in a random order (seeded per pair, so a reviewer cannot
learn a position); keys: 1 = first shown is better, 2 = second is better, s = skip, q = quit.
Every answer is appended and fsync'd at once; a re-run resumes after the last labelled or skipped pair.
Rows are TRL preferences (prompt/chosen/rejected, p_chosen = 1) keyed by the pair id, so `validate` can
measure human-vs-AI agreement on them.
"""

from __future__ import annotations

import json
import os
import random
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

from ..config.jobs import LabelHumanJob

KEYS = {"1", "2", "s", "q"}


def _read_key_tty() -> str:
    """One key press without Enter (raw mode) on a terminal; a line from stdin otherwise."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.strip()[:1].lower() if line else "q"
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        ch = sys.stdin.read(1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
    return "q" if ch in ("\x03", "\x04") else ch.lower()


def _seen_ids(output: Path) -> set[str]:
    seen: set[str] = set()
    for name in (output, output.with_name(output.name + ".skipped")):
        if name.exists():
            for line in name.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    seen.add(json.loads(line)["id"])
    return seen


def _append(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _show(i: int, total: int, pair, first, second, write: Callable[[str], None]) -> None:
    from ..data import text_of

    bar = "=" * 78
    wrap = lambda t: textwrap.indent(text_of(t), "  ")  # noqa: E731
    write(f"\n{bar}\n[{i}/{total}] PROMPT\n{wrap(pair.prompt)}\n\n--- RESPONSE 1 ---\n{wrap(first)}\n\n"
          f"--- RESPONSE 2 ---\n{wrap(second)}\n\n1 = response 1 is better, 2 = response 2, s = skip, q = quit > ")


def label_pairs(pairs: list, output: Path, keys: Iterable[str] | Callable[[], str], write: Callable[[str], None],
                annotator: str = "human", seed: int = 0) -> dict[str, int]:
    """The labeling loop; `keys` is a key source (callable or iterable), `write` prints. Returns counts."""
    output.parent.mkdir(parents=True, exist_ok=True)
    next_key = keys if callable(keys) else iter(keys).__next__
    todo = [p for p in pairs if p.id not in _seen_ids(output)]
    counts = {"labeled": 0, "skipped": 0, "remaining": len(todo)}
    for i, pair in enumerate(todo, 1):
        a_first = random.Random(f"{seed}:{pair.id}").random() < 0.5
        first, second = (pair.response_a, pair.response_b) if a_first else (pair.response_b, pair.response_a)
        _show(i, len(todo), pair, first, second, write)
        key = ""
        while key not in KEYS:
            try:
                key = next_key()
            except StopIteration:
                key = "q"
            if key not in KEYS:
                write("press 1, 2, s or q > ")
        write(key + "\n")
        if key == "q":
            break
        counts["remaining"] -= 1
        if key == "s":
            _append(output.with_name(output.name + ".skipped"), {"id": pair.id})
            counts["skipped"] += 1
            continue
        chosen, rejected = (first, second) if key == "1" else (second, first)
        _append(output, {"id": pair.id, "prompt": pair.prompt, "chosen": chosen, "rejected": rejected,
                         "p_chosen": 1.0, "annotator": annotator, "shown_first": "a" if a_first else "b",
                         "chosen_is": "a" if chosen is pair.response_a else "b", "source": "human"})
        counts["labeled"] += 1
    return counts


def run(cfg: LabelHumanJob, args) -> int:
    from ..data import read_pairs

    pairs = read_pairs(cfg.input, limit=cfg.max_examples)
    output = Path(cfg.output or Path(cfg.run_dir) / "human_preferences.jsonl")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    counts = label_pairs(pairs, output, _read_key_tty, write, cfg.annotator, cfg.seed)
    print(f"\n{counts['labeled']} labeled, {counts['skipped']} skipped this session, {counts['remaining']} left "
          f"-> {output} (re-run the same command to continue)")
    return 0
