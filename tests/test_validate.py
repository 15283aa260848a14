"""`rlaif-ray validate`: every problem of a file named as file:row:field, the report, human agreement."""

import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from rlaif_ray import cli
from rlaif_ray.data import write_rows
from rlaif_ray.data.validate import cohen_kappa, validate_file

RLAIF_RAY = Path(sys.executable).parent / "rlaif-ray"  # the installed console script


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_acceptance_one_row_of_each_bad_class(tmp_path, tiny_model_dir, capsys):
    long_prompt = " ".join(["the cat finds a red apple slowly"] * 20)
    prefs = write_lines(tmp_path / "prefs.jsonl", [
        '{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"}',  # 1 good
        '{"prompt": "Broken", "chosen": "a", "rejected": "b"',                        # 2 invalid JSON
        '{"prompt": "No rejected", "chosen": "a"}',                                   # 3 missing field
        '{"prompt": ["not", "messages"], "chosen": "a", "rejected": "b"}',            # 4 wrong type
        '{"prompt": "Empty chosen", "chosen": "   ", "rejected": "b"}',               # 5 empty text
        '{"prompt": "Same", "chosen": "twin", "rejected": "twin"}',                   # 6 chosen == rejected
        '{"prompt": "Capital of France?", "chosen": "Rome", "rejected": "Paris"}',    # 7 duplicate of 1
        '{"id": "q-9", "prompt": "One", "chosen": "a", "rejected": "b"}',             # 8 good, explicit id
        '{"id": "q-9", "prompt": "Two", "chosen": "a", "rejected": "b"}',             # 9 duplicate id
        json.dumps({"prompt": long_prompt, "chosen": "a", "rejected": "b"}),          # 10 over-length
    ])
    pairs = write_lines(tmp_path / "pairs.jsonl", [
        '{"prompt": "Hi", "response_a": "Hello", "response_b": "Hey"}',
        '{"prompt": "Hi", "response_a": "Same answer", "response_b": "Same answer"}',  # 2 response_a == response_b
    ])
    # In-process through the CLI entry point (the console script's own code); the console script itself
    # runs below, without a tokenizer, to keep this file's budget.
    assert cli.main(["validate", str(prefs), str(pairs), "--tokenizer", str(tiny_model_dir), "--max-tokens", "64"]) == 1
    out = capsys.readouterr().out
    for expected in [
        f"{prefs}:2:<json>: invalid JSON",
        f"{prefs}:3:rejected: missing field",
        f"{prefs}:4:prompt[0]: wrong type",
        f"{prefs}:5:chosen: empty text",
        f"{prefs}:6:rejected: identical to chosen",
        f"{prefs}:7:id: duplicate content (content id ",  # ... of row 1
        f"{prefs}:9:id: duplicate id 'q-9' of row 8",
        f"{prefs}:10:prompt: over-length: ",
        f"{pairs}:2:response_b: identical to response_a",
    ]:
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert "of row 1" in out.split(f"{prefs}:7:id:")[1].splitlines()[0]
    assert f"{prefs}  (preferences: 10 rows, 2 valid, 8 with errors)" in out
    assert "2 file(s), 12 rows, 9 error(s)" in out
    assert "length (tokens)" in out


def test_console_script_exit_codes(tmp_path):
    bad = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "q", "chosen": "same", "rejected": "same"}'])
    good = write_lines(tmp_path / "good.jsonl", ['{"prompt": "q", "chosen": "yes", "rejected": "no"}'])
    proc = subprocess.run([str(RLAIF_RAY), "validate", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"{bad}:1:rejected: identical to chosen" in proc.stdout, proc.stderr
    proc = subprocess.run([str(RLAIF_RAY), "validate", str(good)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "1 file(s), 1 rows, 0 error(s)" in proc.stdout, proc.stderr


def good_prefs(n=40):
    rows = []
    for i in range(n):
        a, b = f"Answer {i}, the careful one.", f"Answer {i}."
        a_wins = i % 2 == 0
        rows.append({"prompt": f"Question {i}?", "chosen": a if a_wins else b, "rejected": b if a_wins else a,
                     "p_chosen": 1.0 if i % 4 else 0.75, "response_a": a, "response_b": b})
    return rows


def test_good_file_exits_0_and_prints_the_report(tmp_path, capsys):
    path = write_rows(tmp_path / "good.parquet", good_prefs())
    report_json = tmp_path / "report.json"
    assert cli.main(["validate", str(path), "--json", str(report_json)]) == 0
    out = capsys.readouterr().out
    assert f"{path}  (preferences: 40 rows, 40 valid, 0 with errors)" in out
    assert "length (chars):" in out and "prompt" in out
    assert "duplicates: 0 ids, 0 content" in out
    assert "labels: 30 hard / 10 soft (hard share 0.75)" in out
    assert "position: A won 20, B won 20, ties 0; A share 0.5" in out and ": balanced" in out
    assert "1 file(s), 40 rows, 0 error(s)" in out
    report = json.loads(report_json.read_text())
    (f,) = report["files"]
    assert f["length_chars"]["prompt"] == {"n": 40, "min": 11, "mean": 11.8, "p50": 12, "p95": 12, "max": 12}
    assert f["split"]["train"] + f["split"]["val"] == 40
    assert f["labels"]["histogram"] == [0] * 7 + [10, 0, 30]


def test_help_lists_the_jobs(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for job in ["validate", "label", "generate-pairs", "train-sft", "train-rm", "train-dpo", "train-ppo", "eval", "bench", "demo"]:
        assert re.search(rf"^    {job}(\s|$)", out, re.MULTILINE), job


def test_cohen_kappa_hand_computed():
    human = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    ai = [1, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    # observed 8/10; chance 0.6*0.6 + 0.4*0.4 = 0.52; kappa = (0.8 - 0.52) / 0.48 = 0.58333
    assert cohen_kappa(human, ai) == pytest.approx(0.28 / 0.48)
    assert cohen_kappa(human, human) == 1.0
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0
    assert cohen_kappa([1, 1], [1, 1]) is None  # chance agreement 1: undefined


def test_human_agreement_in_the_report(tmp_path, capsys):
    human_a = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # the hand-computed example above: accuracy 0.8, kappa 0.5833
    ai_a = [1, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    human, ai = [], []
    for i, (h, a) in enumerate(zip(human_a, ai_a, strict=True)):
        ra, rb = f"first answer {i}", f"second answer {i}"
        human.append({"prompt": f"q{i}", "chosen": ra if h else rb, "rejected": rb if h else ra,
                      "response_a": ra, "response_b": rb})
        # AI rows in either order, with soft labels: p_chosen < 0.5 means the 'rejected' one is preferred.
        if i % 2:
            ai.append({"prompt": f"q{i}", "chosen": ra, "rejected": rb, "p_chosen": 0.9 if a else 0.2})
        else:
            ai.append({"prompt": f"q{i}", "chosen": rb if a else ra, "rejected": ra if a else rb, "p_chosen": 0.3})
    ai[3]["id"] = "ai-own-id-3"  # matched by content when the ids differ
    ai.append({"prompt": "only the AI saw this", "chosen": "x", "rejected": "y"})
    hp, ap = write_rows(tmp_path / "human.jsonl", human), write_rows(tmp_path / "ai.jsonl", ai)
    report_json = tmp_path / "r.json"
    assert cli.main(["validate", str(ap), "--human", str(hp), "--json", str(report_json)]) == 0
    assert "accuracy 0.8, Cohen's kappa 0.5833" in capsys.readouterr().out
    files = json.loads(report_json.read_text())["files"]
    assert [f["file"] for f in files] == [str(hp), str(ap)]  # the human file is validated too
    assert files[1]["agreement"] == {"human_file": str(hp), "human_labels": 10, "shared_ids": 10, "compared": 10,
                                     "ties": 0, "mismatched_content": 0, "accuracy": 0.8, "kappa": 0.5833}


def test_label_and_position_balance(tmp_path):
    rows = [
        {"prompt": "a", "chosen": "A1", "rejected": "B1", "response_a": "A1", "p_chosen": 0.9},  # A wins
        {"prompt": "b", "chosen": "B2", "rejected": "A2", "response_a": "A2", "p_chosen": 0.7},  # B wins
        {"prompt": "c", "chosen": "A3", "rejected": "B3", "response_a": "A3", "p_chosen": 0.4},  # P(A) 0.4
        {"prompt": "d", "chosen": "B4", "rejected": "A4", "response_a": "A4", "p_chosen": 0.5},  # tie
        {"prompt": "e", "chosen": "C5", "rejected": "D5"},  # no A/B order: only label balance
    ]
    d = validate_file(write_rows(tmp_path / "p.jsonl", rows)).to_dict()
    assert d["position"] == {"n": 4, "a_wins": 1, "b_wins": 2, "ties": 1, "a_share": 0.3333,
                             "mean_p_a": 0.525, "balanced_95": True}
    assert d["labels"] == {"n": 5, "hard": 1, "soft": 4, "hard_share": 0.2, "mean_p_chosen": 0.7,
                           "histogram": [0, 0, 0, 0, 1, 1, 0, 1, 0, 2]}
    # Labeled pairs carry P(A wins) as p_a; a judge that always picks A is flagged.
    pairs = [{"prompt": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}", "p_a": 0.8} for i in range(30)]
    d = validate_file(write_rows(tmp_path / "pairs.parquet", pairs)).to_dict()
    assert (d["kind"], d["position"]["a_wins"], d["position"]["balanced_95"]) == ("pairs", 30, False)


def test_forced_kind_unknown_rows_and_empty_files(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", ['{"text": "hello"}', '{"prompt": "q", "response_a": "a", "response_b": "b"}'])
    rep = validate_file(path)
    assert [str(e) for e in rep.errors][0].startswith(f"{path}:1:<row>: unknown row shape")
    assert (rep.kind, rep.valid) == ("pairs", 1)
    rep = validate_file(path, kind="preferences")
    assert [f"{e.row}:{e.field}" for e in rep.errors] == ["1:prompt", "1:chosen", "1:rejected",
                                                          "2:chosen", "2:rejected"]
    empty = write_lines(tmp_path / "empty.jsonl", [""])
    assert [str(e) for e in validate_file(empty).errors] == [f"{empty}:0:<file>: no rows"]
    content_dup = write_lines(tmp_path / "d.jsonl", ['{"id": "1", "prompt": "q"}', '{"id": "2", "prompt": "q"}'])
    (err,) = validate_file(content_dup).errors
    assert str(err).startswith(f"{content_dup}:2:<content>: duplicate content of row 1")


def test_max_tokens_needs_a_tokenizer(tmp_path, capsys):
    path = write_rows(tmp_path / "p.jsonl", [{"prompt": "q"}])
    assert cli.main(["validate", str(path), "--max-tokens", "5"]) == 2
    assert "--max-tokens needs --tokenizer" in capsys.readouterr().err
    assert cli.main(["validate", str(tmp_path / "nope.jsonl")]) == 2


def test_validation_streams(tmp_path):
    # 20 MB of rows: memory grows by the per-row lengths and id hashes, never by the rows' text.
    text = "word " * 4000
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        for i in range(1000):
            fh.write(json.dumps({"prompt": f"{i} {text}", "response_a": f"a {text}", "response_b": f"b {text}"}) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    rep = validate_file(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (rep.rows, rep.valid, rep.error_count) == (1000, 1000, 0)
    assert peak < size / 10, f"peak {peak} bytes for a {size}-byte file"
