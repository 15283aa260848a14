"""`rlaif-ray label-human`: keys 1/2/s/q, randomised display order mapped back to a/b, resume."""

import json
import subprocess
import sys

from rlaif_ray.algos.label_human import label_pairs
from rlaif_ray.data import PairRecord, read_preferences

PAIRS = [PairRecord(prompt=f"Question {i}?", response_a=f"good answer {i}", response_b=f"bad answer {i}")
         for i in range(8)]


def test_keys_order_and_resume(tmp_path):
    out = tmp_path / "human.jsonl"
    shown: list[str] = []
    counts = label_pairs(PAIRS, out, ["x", "1", "2", "s", "q"], shown.append)
    assert counts == {"labeled": 2, "skipped": 1, "remaining": 5}
    assert "press 1, 2, s or q" in "".join(shown)  # an unknown key is asked again
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row, key in zip(rows, ["1", "2"], strict=True):
        first_is_a = row["shown_first"] == "a"
        picked_first = key == "1"
        assert row["chosen_is"] == ("a" if first_is_a == picked_first else "b")
        pair = {p.id: p for p in PAIRS}[row["id"]]
        assert row["chosen"] == (pair.response_a if row["chosen_is"] == "a" else pair.response_b)
    orders = {json.loads(line)["shown_first"] for line in out.read_text().splitlines()}
    counts = label_pairs(PAIRS, out, iter(["1"] * 10), lambda s: None)  # resume: only the 5 unseen pairs
    assert counts == {"labeled": 5, "skipped": 0, "remaining": 0}
    prefs = read_preferences(out)  # valid TRL preferences, ids equal the pair ids (for agreement)
    assert {p.id for p in prefs} == {p.id for p in PAIRS} - {json.loads((tmp_path / "human.jsonl.skipped").read_text())["id"]}
    all_orders = orders | {json.loads(line)["shown_first"] for line in out.read_text().splitlines()}
    assert all_orders == {"a", "b"}  # both display orders occur


def test_cli_reads_keys_from_stdin(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p.prompt, "response_a": p.response_a, "response_b": p.response_b}) + "\n"
                             for p in PAIRS[:3]))
    out = tmp_path / "h.jsonl"
    proc = subprocess.run([sys.executable, "-m", "rlaif_ray.cli", "label-human", f"input={pairs}", f"output={out}",
                           f"run_dir={tmp_path}", "annotator=alice"], input="1\n2\nq\n", text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "RESPONSE 1" in proc.stdout and "2 labeled" in proc.stdout
    assert [json.loads(line)["annotator"] for line in out.read_text().splitlines()] == ["alice", "alice"]
