"""train-sft: completion-only masks for both TRL formats, packing that keeps examples apart, and the job on
2 real DeepSpeed ranks whose first loss equals a plain transformers forward on the same batch and falls."""

import json
import re
from pathlib import Path

import pytest
import torch

from rlaif_ray.data import SFTRecord, write_rows
from rlaif_ray.learner.sft import SFTObjective, encode_messages, encode_sft, pack, pad_sft
from rlaif_ray.models import load_tokenizer, tiny_model_path


@pytest.fixture(scope="module")
def tiny():
    path = str(tiny_model_path(2_000_000, seed=0))
    return path, load_tokenizer(path, padding_side="right")


def test_masks_cover_completions_and_assistant_turns_only(tiny):
    _, tok = tiny
    conv = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello you"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": "yes sir"}]
    ids, mask = encode_messages(tok, conv)
    learned = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert "hello you" in learned and "yes sir" in learned and "hi there" not in learned and "again" not in learned
    (pc_ids, pc_mask, _), = encode_sft([SFTRecord(prompt="Say hi.", completion="Hi!")], tok, 512)
    assert tok.decode([t for t, m in zip(pc_ids, pc_mask, strict=True) if m]).startswith("Hi!")
    assert "Say hi." not in tok.decode([t for t, m in zip(pc_ids, pc_mask, strict=True) if m])
    (cut, cut_mask, _), = encode_sft([SFTRecord(messages=conv)], tok, 5)
    assert len(cut) == len(cut_mask) == 5


def test_packing_is_best_fit_and_keeps_examples_apart(tiny):
    from transformers import AutoModelForCausalLM

    path, tok = tiny
    recs = [SFTRecord(prompt=f"Question {i}: {'why ' * (i % 5)}?", completion=f"Because {'so ' * (i % 7)}.")
            for i in range(12)]
    rows = encode_sft(recs, tok, 64)
    packed = pack(rows, 64)
    assert len(packed) < len(rows) and all(len(r[0]) <= 64 for r in packed)
    assert sorted(i for r in packed for i in r[2].split("+")) == sorted(r[2] for r in rows)
    assert sum(len(r[0]) for r in packed) == sum(len(r[0]) for r in rows)
    # A packed row's loss is the sum of its examples' losses computed one by one: no attention across them.
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    obj, by_id = SFTObjective(), {r[2]: r for r in rows}
    with torch.no_grad():
        out = obj.forward(model, pad_sft(packed[:2], tok.pad_token_id))
        for k, row in enumerate(packed[:2]):
            alone = [obj.forward(model, pad_sft([by_id[i]], tok.pad_token_id)) for i in row[2].split("+")]
            assert out["nll"][k].item() == pytest.approx(sum(a["nll"].item() for a in alone), rel=1e-4)
            assert out["tokens"][k].item() == sum(a["tokens"].item() for a in alone)


@pytest.mark.slow
def test_train_sft_loss_matches_a_plain_forward_and_falls(ray_session, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from benchmarks.bench_learner import synthetic_preferences
    from rlaif_ray.algos import train_sft
    from rlaif_ray.config import load
    from rlaif_ray.config.jobs import TrainSFTJob
    from rlaif_ray.data import read_sft, split_by_id
    from rlaif_ray.learner.group import epoch_batches

    path, tok = tiny
    data = tmp_path / "sft.jsonl"
    prefs = synthetic_preferences(72, seed=3)
    rows = [{"prompt": p.prompt, "completion": p.chosen} for p in prefs[:60]]
    rows += [{"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.chosen}]}
             for p in prefs[60:]]
    write_rows(data, rows)
    cfg = load(TrainSFTJob, None, [f"data={data}", f"run_dir={tmp_path / 'run'}", "model.path=tiny",
                                   "model.tiny_params=2000000", "learner.num_ranks=2", "learner.micro_batch_size=8",
                                   "learner.lr=0.002", "learner.zero_stage=2", "epochs=3", "val_fraction=0.1"])
    assert train_sft.run(cfg, None) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r["train/loss"] for r in logged if "train/loss" in r]
    val = [r["val/loss"] for r in logged if "val/loss" in r]
    assert len(val) == 3 and val[-1] < val[0] - 0.5, val
    assert sum(train[-3:]) / 3 < sum(train[:3]) / 3 - 0.5, train

    # Step 1 by hand: the same split, encoding and first batch; each rank averages its half's completion
    # tokens and the group averages the ranks (row-weighted), as the loss reported for the step.
    recs, _ = split_by_id(read_sft(str(data)), 0.1, cfg.learner.seed)
    enc = encode_sft(recs, tok, cfg.learner.max_length)
    first = epoch_batches(len(enc), 16, cfg.learner.seed)[0]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    halves = [pad_sft([enc[i] for i in first[:8]], tok.pad_token_id),
              pad_sft([enc[i] for i in first[8:]], tok.pad_token_id)]
    with torch.no_grad():
        want = sum(SFTObjective().loss(model, h)[0].item() for h in halves) / 2
    assert train[0] == pytest.approx(want, rel=1e-4)
    final = Path(tmp_path / "run" / "final")
    assert (final / "model.safetensors").exists()
    AutoModelForCausalLM.from_pretrained(str(final))  # a plain HF checkpoint


def test_bad_sft_rows_name_file_row_and_field(tmp_path):
    from rlaif_ray.data import DataError, read_sft

    path = tmp_path / "sft.jsonl"
    good = {"prompt": "q", "completion": "a"}
    for bad, where in [({"prompt": "q"}, ":2:completion: missing field"),
                       ({"messages": [{"role": "user", "content": "q"}]}, ":2:messages: no assistant turn"),
                       ({"messages": [{"role": "bot", "content": "q"}]}, ":2:messages[0].role: unknown role")]:
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=re.escape(f"sft.jsonl{where}")):
            read_sft(str(path))
    path.write_text(json.dumps(good) + "\n")
    assert read_sft(str(path))[0].completion == "a"
