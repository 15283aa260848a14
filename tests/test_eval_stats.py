"""Eval statistics on synthetic judgements whose answer is known."""

import math

import numpy as np
import pytest

from rlaif_ray.eval import (
    Comparison,
    bootstrap_ci,
    format_report,
    normalised_scores,
    paired_bootstrap_pvalue,
    position_bias,
    select_examples,
    sign_test,
    summarise,
    win_rate,
    win_rate_matrix,
)


def judge(n, p_win, seed=0, first_bias=0.0, noise=0.0, x="policy", y="base"):
    """Comparisons from a judge that prefers x with probability p_win; with probability first_bias a
    verdict instead goes to whichever answer was shown first, with probability noise to a coin flip."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x_wins = rng.random() < p_win
        def verdict(x_first, x_wins=x_wins):
            if rng.random() < first_bias:
                return 0.9
            if rng.random() < noise:
                return float(rng.choice([0.9, 0.1]))
            return 0.9 if x_wins == x_first else 0.1
        out.append(Comparison(f"p{i}", x, y, verdict(True), verdict(False)))
    return out


def test_known_win_rate_inside_ci_and_ci_shrinks_with_n():
    small, large = win_rate(judge(200, 0.7, seed=1)), win_rate(judge(3200, 0.7, seed=2))
    for r in (small, large):
        assert r.ci[0] <= 0.70 <= r.ci[1]
        assert r.wins + r.ties + r.losses == r.n
    assert abs(large.win_rate - 0.70) < 0.03
    width = lambda r: r.ci[1] - r.ci[0]  # noqa: E731
    assert width(large) < width(small) / 2.5  # ~1/sqrt(16) = 1/4 in theory
    # the CI of a binomial mean is close to the normal approximation
    se = math.sqrt(0.21 / 3200)
    assert width(large) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_is_seeded_and_percentile():
    x = np.arange(100.0)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    lo, hi = bootstrap_ci(np.full(50, 0.25))
    assert lo == hi == 0.25
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_ties_split_and_soft_rate():
    cs = [Comparison("a", "x", "y", 0.9, 0.1), Comparison("b", "x", "y", 0.1, 0.9),
          Comparison("c", "x", "y", 0.8, 0.8),  # orders disagree: a tie
          Comparison("d", "x", "y", 0.7, None), Comparison("e", "x", "y", None, None)]
    r = win_rate(cs)
    assert (r.n, r.wins, r.ties, r.losses) == (4, 2, 1, 1)
    assert r.win_rate == pytest.approx(2.5 / 4)
    assert r.soft_win_rate == pytest.approx((0.9 + 0.1 + 0.5 + 0.7) / 4)


def test_position_biased_judge_flagged_unbiased_not():
    consistent = position_bias(judge(400, 0.6, seed=4))  # both orders always agree: exactly 0.5
    assert not consistent.biased and consistent.first_position_rate == 0.5 and consistent.consistency == 1.0
    fair = position_bias(judge(400, 0.6, seed=4, noise=0.4))  # noisy but not position-biased
    assert not fair.biased and fair.ci[0] < 0.5 < fair.ci[1] and fair.consistency < 0.9
    biased = position_bias(judge(400, 0.6, seed=5, first_bias=0.3))
    assert biased.biased and biased.ci[0] > 0.5
    assert 0.6 < biased.first_position_rate < 0.7  # 0.5 + 0.3 / 2 expected
    assert biased.consistency < 0.8
    # a judge that always picks the first answer: every comparison is a tie, first rate 1
    always = judge(50, 0.7, seed=6, first_bias=1.0)
    assert position_bias(always).first_position_rate == 1.0 and win_rate(always).ties == 50


def test_one_order_with_random_positions():
    # only one order judged per comparison; positions randomised: bias still measurable
    rng = np.random.default_rng(7)
    cs = []
    for i in range(300):
        x_first = rng.random() < 0.5
        p = 0.9 if rng.random() < 0.8 else 0.1  # prefers first 80%
        cs.append(Comparison(f"p{i}", "x", "y", p if x_first else None, None if x_first else p))
    pb = position_bias(cs)
    assert pb.biased and pb.n_both_orders == 0 and math.isnan(pb.consistency)


def test_sign_test_and_paired_bootstrap_known_cases():
    assert sign_test([1.0] * 10) == pytest.approx(2 / 1024)
    assert sign_test([1.0] * 5 + [0.0] * 5 + [0.5] * 7) == 1.0
    assert sign_test([0.5, 0.5]) == 1.0
    assert sign_test([1.0] * 9 + [0.0]) == pytest.approx(22 / 1024)
    assert paired_bootstrap_pvalue(np.zeros(30)) == 1.0
    rng = np.random.default_rng(0)
    assert paired_bootstrap_pvalue(rng.normal(1.0, 1.0, 100)) < 0.01
    assert paired_bootstrap_pvalue(rng.normal(0.0, 1.0, 100)) > 0.05
    strong = win_rate(judge(200, 0.8, seed=8))
    null = win_rate(judge(200, 0.5, seed=9))
    assert strong.sign_test_p < 1e-6 and strong.bootstrap_p < 0.01
    assert null.sign_test_p > 0.05 and null.bootstrap_p > 0.05


def test_matrix_antisymmetric_and_scores_ordered():
    cs = (judge(300, 0.75, seed=10, x="a", y="b") + judge(300, 0.75, seed=11, x="b", y="c")
          + judge(300, 0.9, seed=12, x="a", y="c", first_bias=0.2))
    models = ["a", "b", "c"]
    rates = [win_rate([c for c in cs if (c.x, c.y) == p]) for p in [("a", "b"), ("b", "c"), ("a", "c")]]
    m = win_rate_matrix(rates, models)
    assert np.allclose(m + m.T, 1.0) and np.allclose(np.diag(m), 0.5)
    assert m[0, 1] == pytest.approx(rates[0].win_rate)
    scores = normalised_scores(cs, models)
    elo = [scores[k]["elo"] for k in models]
    assert elo[0] > elo[1] > elo[2] and abs(sum(elo)) < 1e-6
    # a baseline-only eval leaves unjudged pairs NaN
    m2 = win_rate_matrix(rates[:1], models)
    assert np.isnan(m2[1, 2]) and np.isnan(m2[2, 1])


def test_summarise_report_and_examples():
    models = ["base", "dpo", "ppo"]
    cs = judge(60, 0.7, seed=13, x="dpo", y="base") + judge(60, 0.4, seed=14, x="ppo", y="base")
    sims = {m: np.random.default_rng(i).uniform(0.2, 0.8, 60) for i, m in enumerate(models)}
    res = summarise(models, "base", cs, similarity=sims, n_boot=500)
    assert [(r["x"], r["y"]) for r in res["win_rates"]] == [("dpo", "base"), ("ppo", "base")]
    row = res["vs_baseline"][0]
    assert row["policy"] == "dpo" and row["ci_low"] <= row["win_rate"] == res["win_rates"][0]["win_rate"] <= row["ci_high"]
    assert res["matrix"][1][0] + res["matrix"][0][1] == pytest.approx(1.0) and res["matrix"][1][2] is None
    assert {t["x"] for t in res["similarity_tests"]} == {"dpo", "ppo"}
    text = format_report(res)
    assert "dpo" in text and "no significant bias" in text and "Similarity" in text
    prompts = [f"q{i}" for i in range(60)]
    answers = {m: [f"{m} answer {i}" for i in range(60)] for m in models}
    ex = select_examples(cs, answers, prompts, {f"p{i}": i for i in range(60)}, k=2)
    assert len(ex) == 8 and ex[0]["kind"] == "best" and ex[0]["p_x"] >= ex[2]["p_x"]
    assert ex[0]["answer_x"].startswith(ex[0]["x"])
    with pytest.raises(ValueError, match="baseline"):
        summarise(models, "sft", cs)
