"""Data layer: every bad-input class names file:row:field; JSONL/Parquet round trips; TRL formats;
stable ids; deterministic splits."""

import json

import pytest

from rlaif_ray.data import (
    DataError,
    PairRecord,
    PreferenceRecord,
    PromptRecord,
    RowWriter,
    check_row,
    content_id,
    detect_kind,
    iter_chunks,
    iter_rows,
    read_pairs,
    read_preferences,
    read_prompts,
    read_records,
    split_by_id,
    to_hf_dataset,
    to_trl_rows,
    write_rows,
)

GOOD_PREF = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("bad_line, kind, field, problem", [
    ('{"prompt": "x", "chosen": "a", "rejected": ', "preferences", "<json>", "invalid JSON"),
    ('["prompt", "chosen"]', "preferences", "<json>", "expected a JSON object, got list"),
    ('{"chosen": "a", "rejected": "b"}', "preferences", "prompt", "missing field"),
    ('{"prompt": "x", "chosen": null, "rejected": "b"}', "preferences", "chosen", "missing field"),
    ('{"prompt": 3, "chosen": "a", "rejected": "b"}', "preferences", "prompt",
     "wrong type: expected a string or a list of messages, got int"),
    ('{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}', "preferences", "prompt[0]", "wrong type"),
    ('{"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}', "preferences",
     "prompt[0].role", "unknown role 'bot'"),
    ('{"prompt": "x", "chosen": "a", "rejected": "b", "p_chosen": "high"}', "preferences", "p_chosen",
     "wrong type: expected a number, got str"),
    ('{"prompt": "x", "chosen": "a", "rejected": "b", "p_chosen": 1.5}', "preferences", "p_chosen",
     "1.5 is outside [0, 1]"),
    ('{"prompt": "x", "chosen": "a", "rejected": "b", "id": [1]}', "preferences", "id", "wrong type"),
    ('{"prompt": "x", "chosen": "  \\n", "rejected": "b"}', "preferences", "chosen", "empty text"),
    ('{"prompt": [], "chosen": "a", "rejected": "b"}', "preferences", "prompt", "empty message list"),
    ('{"prompt": "x", "chosen": "same", "rejected": "same"}', "preferences", "rejected", "identical to chosen"),
    ('{"prompt": "x", "response_a": "s", "response_b": "s"}', "pairs", "response_b", "identical to response_a"),
    ('{"prompt": "x", "response_a": "s", "response_b": "t", "p_a": -0.1}', "pairs", "p_a", "-0.1 is outside [0, 1]"),
    ('{"prompt": "x", "reference": 7}', "prompts", "reference", "wrong type: expected a string, got int"),
    ('{"prompt": ""}', "prompts", "prompt", "empty text"),
])
def test_bad_input_names_file_row_field(tmp_path, bad_line, kind, field, problem):
    good = {"preferences": GOOD_PREF, "pairs": {"prompt": "q", "response_a": "a", "response_b": "b"},
            "prompts": {"prompt": "q"}}[kind]
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(good), "", bad_line])  # blank line 2 is skipped
    with pytest.raises(DataError) as e:
        read_records(path, kind)
    assert str(e.value).startswith(f"{path}:3:{field}: {problem}")
    assert (e.value.file, e.value.row, e.value.field) == (str(path), 3, field)


def test_invalid_utf8_is_one_bad_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD_PREF).encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n')
    errors = []
    rows = list(iter_rows(path, on_error=errors.append))
    assert [n for n, _ in rows] == [1]
    assert [str(e) for e in errors] == [f"{path}:2:<json>: invalid UTF-8 at byte 12"]


def test_check_row_collects_every_problem_of_a_row():
    row = {"prompt": 5, "chosen": "", "p_chosen": 2, "id": True}
    record, errors = check_row("preferences", row, "f.jsonl", 7)
    assert record is None
    assert [str(e) for e in errors] == [
        "f.jsonl:7:prompt: wrong type: expected a string or a list of messages, got int",
        "f.jsonl:7:chosen: empty text",
        "f.jsonl:7:rejected: missing field",
        "f.jsonl:7:p_chosen: 2 is outside [0, 1]",
        "f.jsonl:7:id: wrong type: expected a string, got bool",
    ]


def test_detect_kind():
    assert detect_kind(GOOD_PREF) == "preferences"
    assert detect_kind({"prompt": "q", "response_a": "a", "response_b": "b"}) == "pairs"
    assert detect_kind({"prompt": "q"}) == "prompts"
    assert detect_kind({"chosen": [], "rejected": []}) == "preferences"  # implicit prompt
    assert detect_kind({"text": "q"}) is None


def test_reading_streams(tmp_path):
    # Rows after the limit are never parsed: a broken tail does not stop reading the head.
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "one"}', '{"prompt": "two"}', "not json"])
    assert [r.prompt for r in read_prompts(path, limit=2)] == ["one", "two"]
    with pytest.raises(DataError, match=":3:<json>"):
        read_prompts(path)


RECORDS = [
    PreferenceRecord(prompt="Name a colour.", chosen="Blue.", rejected="Seven.", p_chosen=0.8,
                     meta={"judge": "rule", "response_a": "Seven."}),
    PreferenceRecord(prompt=MSGS, chosen=[{"role": "assistant", "content": "Hello!"}],
                     rejected=[{"role": "assistant", "content": "Go away."}]),
    PreferenceRecord(prompt="Unicode ✓ é 中文", chosen="ja", rejected="nein", id="custom-7"),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("which", [[0, 2], [1]], ids=["standard", "conversational"])
def test_round_trip(tmp_path, suffix, which):
    records = [RECORDS[i] for i in which]
    path = write_rows(tmp_path / f"prefs{suffix}", [r.to_row() for r in records])
    assert not list(tmp_path.glob("*.tmp"))  # written atomically via a temp file
    back = read_preferences(path)
    if suffix == ".parquet":  # a Parquet column holds every key of every row: unset meta reads back as None
        for r in back:
            r.meta = {k: v for k, v in r.meta.items() if v is not None}
    assert back == records


def test_jsonl_holds_mixed_formats_parquet_says_why_not(tmp_path):
    rows = [r.to_row() for r in RECORDS]
    assert read_preferences(write_rows(tmp_path / "mixed.jsonl", rows)) == RECORDS
    with pytest.raises(ValueError, match=r"mixed\.parquet: these rows cannot share one Parquet schema"):
        write_rows(tmp_path / "mixed.parquet", rows)
    assert not (tmp_path / "mixed.parquet").exists()


def test_parquet_streams_in_batches_and_numbers_rows(tmp_path):
    rows = [{"prompt": f"question {i}"} for i in range(5000)]
    rows[4500]["prompt"] = " "  # beyond the first 4096-row batch
    path = write_rows(tmp_path / "p.parquet", rows)
    with pytest.raises(DataError, match=r"p\.parquet:4501:prompt: empty text"):
        read_prompts(path)
    assert len(read_prompts(path, limit=4500)) == 4500


def test_unreadable_parquet_names_the_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet:0:<file>: not a readable Parquet file"):
        read_pairs(path)


def test_trl_conversational_and_implicit_prompt_match_trl(tmp_path):
    from trl.data_utils import extract_prompt, is_conversational

    implicit = {"chosen": [*MSGS, {"role": "assistant", "content": "Hello!"}],
                "rejected": [*MSGS, {"role": "assistant", "content": "Go away."}]}
    path = write_rows(tmp_path / "implicit.jsonl", [implicit])
    (rec,) = read_preferences(path)
    trl_view = extract_prompt(implicit)  # TRL's own reading of the implicit-prompt format
    assert (rec.prompt, rec.chosen, rec.rejected) == (trl_view["prompt"], trl_view["chosen"], trl_view["rejected"])
    assert rec == RECORDS[1]  # same content as the explicit-prompt row: same id

    # Mixed plain/conversational records become one conversational dataset TRL recognises.
    ds = to_hf_dataset(RECORDS)
    assert ds.column_names == ["id", "prompt", "chosen", "rejected", "p_chosen"]
    assert all(is_conversational(ex) for ex in ds)
    assert ds[0]["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert ds[2]["id"] == "custom-7" and ds[0]["p_chosen"] == 0.8

    # Plain records stay in TRL's standard format.
    std = to_trl_rows([RECORDS[0], RECORDS[2]])
    assert std[0] == {"id": RECORDS[0].id, "prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven.",
                      "p_chosen": 0.8}
    assert not is_conversational(std[0])
    pairs = to_trl_rows([PairRecord("q", "a", "b")])
    assert pairs == [{"id": PairRecord("q", "a", "b").id, "prompt": "q", "response_a": "a", "response_b": "b"}]


def test_stable_content_ids():
    # Ids are the dedup and resume key: they must never change between versions or runs.
    assert content_id("hello") == "c7a0f7154e64cd96"
    assert PromptRecord("hello").id == content_id("hello")
    assert content_id({"a": 1, "b": 2}) == content_id({"b": 2, "a": 1})
    pair, swapped = PairRecord("q", "x", "y"), PairRecord("q", "y", "x")
    assert pair.id == swapped.id  # (a, b) and (b, a) are one comparison
    assert PreferenceRecord("q", "y", "x", p_chosen=0.3).id == pair.id  # a label joins its pair by id
    assert PairRecord("q2", "x", "y").id != pair.id
    assert PreferenceRecord("q", "x", "y", id="mine").id == "mine"


def test_content_ids_hash_the_json_they_always_hashed():
    # Ids once hashed json.dumps(sort_keys, ensure_ascii=False, compact); stores written then must resume.
    import hashlib
    import json
    import random

    rng = random.Random(0)
    alphabet = [chr(i) for i in range(0x250)] + ["\u2028", "\u2029", "\U0001F600", "\ue000", "\ufffe", "ä", "中"]

    def text():
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    for _ in range(3000):
        parts = (rng.choice([text(), [{"role": "user", "content": text()}, {"content": text(), "role": "assistant"}]]),
                 sorted([text(), text()]), rng.randint(-5, 10**12), "ab")
        old = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        assert content_id(*parts) == hashlib.sha256(old.encode()).hexdigest()[:16], parts


def test_deterministic_split():
    records = [PromptRecord(f"prompt {i}") for i in range(2000)]
    train, val = split_by_id(records, 0.1, seed=0)
    assert len(train) + len(val) == 2000 and 150 < len(val) < 250
    train2, val2 = split_by_id(list(reversed(records)), 0.1, seed=0)
    assert {r.id for r in val2} == {r.id for r in val}  # independent of file order
    _, val_half = split_by_id(records[:1000], 0.1, seed=0)
    assert {r.id for r in val_half} == {r.id for r in val if r in records[:1000]}  # ... and of other records
    _, val_seed1 = split_by_id(records, 0.1, seed=1)
    assert {r.id for r in val_seed1} != {r.id for r in val}
    assert split_by_id(records, 0.0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_id(records, 1.0)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_chunks_in_and_rows_out_stream(tmp_path, suffix):
    """`label` reads its pairs chunk by chunk and appends each chunk's rows: the same rows, in order, as one
    read and one write; the output appears only when closed."""
    rows = [{"prompt": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}"} for i in range(23)]
    src = write_rows(tmp_path / f"pairs{suffix}", rows)
    chunks = list(iter_chunks(src, "pairs", 5, limit=22))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 2] and chunks[-1][-1].prompt == "q21"
    out = RowWriter(tmp_path / f"out{suffix}")
    for c in chunks:
        out.write([{"id": p.id, "prompt": p.prompt} for p in c])
    assert not out.path.exists()
    out.close()
    assert [r["prompt"] for _, r in iter_rows(out.path)] == [f"q{i}" for i in range(22)]
