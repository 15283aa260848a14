"""The shipped demo prompt set: valid records, disjoint splits, a reference for every held-out prompt."""

from rlaif_ray.data import read_prompts
from rlaif_ray.eval import DEMO_PROMPTS


def test_demo_prompt_set():
    train = read_prompts(DEMO_PROMPTS / "train.jsonl")
    held = read_prompts(DEMO_PROMPTS / "heldout.jsonl")
    assert len(train) >= 200 and len(held) >= 50
    assert not {r.id for r in train} & {r.id for r in held}
    assert len({r.id for r in train}) == len(train) and len({r.id for r in held}) == len(held)
    assert all(r.reference and len(r.reference.split()) >= 10 for r in held)
    assert all(r.prompt.strip().endswith("?") and 3 <= len(r.prompt.split()) <= 20 for r in train + held)
