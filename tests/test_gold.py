"""Agreement of AI labels with a gold (agreement, Cohen's kappa, by confidence) on fixtures with known
answers, and the three gold sources: a scorer with a tie margin (VADER), a pairwise function, a file."""

import json

import pytest

from rlaif_ray.config import GoldConfig
from rlaif_ray.data import PairRecord
from rlaif_ray.eval.gold import agreement, gold_preferences, vader_sentiment


def test_agreement_kappa_and_confidence_bins_on_known_answers():
    #       AI:  a      a     b    tie   (a)    a     gold: a, b, b, a, none, tie
    res = agreement([0.9, 0.8, 0.3, 0.5, 0.6, 0.95], [1.0, 0.0, 0.0, 1.0, None, 0.5])
    assert (res["n"], res["n_pairs"], res["gold_missing_or_tie"]) == (4, 6, 2)
    assert res["agreement"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    # observed 2/4; chance: a 2/4 * 2/4 + b 1/4 * 2/4 + tie 1/4 * 0 = 0.375
    assert res["kappa"] == pytest.approx((0.5 - 0.375) / (1 - 0.375))
    bins = {tuple(r["confidence"]): (r["n"], r["agreement"]) for r in res["by_confidence"]}
    assert bins == {(0.5, 0.6): (1, 0.5), (0.6, 0.75): (1, 1.0), (0.75, 0.9): (1, 0.0), (0.9, 1.0): (1, 1.0)}

    assert agreement([0.9, 0.1, 0.7, 0.2], [1, 0, 1, 0])["kappa"] == pytest.approx(1.0)
    always_a = agreement([0.9] * 4, [1, 0, 1, 0])  # picks the first answer every time: chance level
    assert always_a["agreement"] == 0.5 and always_a["kappa"] == pytest.approx(0.0)
    assert agreement([None], [1.0])["agreement"] is None


PAIRS = [PairRecord("Hi!", "Thank you, what a lovely day!", "I hate this awful day."),
         PairRecord("Hi!", "It is a table.", "It is a chair."),  # both neutral: a gold tie
         PairRecord("Help?", "No. Go away, idiot.", "Sure, happy to help!")]


def test_vader_gold_with_a_tie_margin():
    assert vader_sentiment("", PAIRS[0].response_a) > 0.5 > -0.5 > vader_sentiment("", PAIRS[0].response_b)
    cfg = GoldConfig(score_function="rlaif_ray.eval.gold:vader_sentiment", margin=0.1)
    assert gold_preferences(cfg, PAIRS) == [1.0, 0.5, 0.0]


def test_pairwise_function_and_file_golds(tmp_path):
    from rlaif_ray.testing.fake_api import p_first

    by_fn = gold_preferences(GoldConfig(function="rlaif_ray.testing.judge_functions:fake_preference"), PAIRS)
    assert by_fn == [pytest.approx(p_first(p.response_a, p.response_b)) for p in PAIRS]

    path = tmp_path / "human.jsonl"  # label-human's rows: the chosen text, in either slot
    rows = [{"prompt": PAIRS[0].prompt, "chosen": PAIRS[0].response_a, "rejected": PAIRS[0].response_b},
            {"prompt": PAIRS[2].prompt, "chosen": PAIRS[2].response_b, "rejected": PAIRS[2].response_a,
             "p_chosen": 0.8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gold_preferences(GoldConfig(file=str(path)), PAIRS) == [1.0, None, pytest.approx(0.2)]


def test_one_gold_source_at_a_time():
    from rlaif_ray.config import ConfigError
    from rlaif_ray.config.jobs import LabelJob
    from rlaif_ray.config.schema import from_dict

    with pytest.raises(ConfigError, match=r"gold\.score_function: set one of"):
        from_dict(LabelJob, {"input": "x.jsonl", "gold": {"file": "g.jsonl", "function": "m:f"}})
