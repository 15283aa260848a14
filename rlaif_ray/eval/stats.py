"""Statistics of pairwise judgements: win rates with ties split, bootstrap CIs, paired tests,
the win-rate matrix, normalised (Bradley-Terry) scores and the judge's position bias.

Everything is plain numpy on per-prompt outcome vectors so the numbers can be checked by hand.
A comparison's outcome for model x against model y is 1 (x wins), 0.5 (tie) or 0 (y wins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TIE_EPS = 1e-6  # |p - 0.5| below this is a tie (a judge giving exactly 0.5, or both orders disagreeing)


@dataclass
class Comparison:
    """Judge verdicts on one prompt's answers of models x and y.

    `p_x_first` is P(first shown is better) from the order that showed x first, `p_y_first` the same
    from the swapped order; either is None when that order was not judged or the call failed.
    """

    prompt_id: str
    x: str
    y: str
    p_x_first: float | None
    p_y_first: float | None

    @property
    def p_x(self) -> float | None:
        """P(x better), averaged over the judged orders (None: no verdict at all)."""
        ps = [p for p in (self.p_x_first, None if self.p_y_first is None else 1.0 - self.p_y_first)
              if p is not None]
        return sum(ps) / len(ps) if ps else None

    @property
    def outcome(self) -> float | None:
        """1 = x wins, 0.5 = tie, 0 = y wins, None = no verdict."""
        p = self.p_x
        return None if p is None else outcome_of(p)

    @property
    def consistent(self) -> bool | None:
        """Both orders pick the same response (None unless both were judged decisively)."""
        if self.p_x_first is None or self.p_y_first is None:
            return None
        a, b = outcome_of(self.p_x_first), outcome_of(1.0 - self.p_y_first)
        if a == 0.5 or b == 0.5:
            return False
        return a == b


def outcome_of(p: float) -> float:
    return 0.5 if abs(p - 0.5) < TIE_EPS else float(p > 0.5)


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 stat=np.mean) -> tuple[float, float]:
    """Percentile bootstrap CI of `stat` over the rows of `values` (resampled with replacement).

    `stat` must accept `axis=1` on a (n_boot, n, ...) array; resampling is one vectorised draw.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = stat(x[idx], axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha], axis=0)
    return (float(lo), float(hi))


def sign_test(outcomes) -> float:
    """Exact two-sided sign test of P(win) = P(loss) on 1/0.5/0 outcomes; ties are dropped."""
    from scipy.stats import binomtest

    o = np.asarray(outcomes, dtype=float)
    wins, losses = int(np.sum(o == 1.0)), int(np.sum(o == 0.0))
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def paired_bootstrap_pvalue(diffs, n_boot: int = 2000, seed: int = 0) -> float:
    """Two-sided bootstrap p-value of mean(diffs) = 0 for per-prompt paired differences.

    Resamples the differences re-centred on 0 (the null) and counts means as extreme as the observed.
    """
    d = np.asarray(diffs, dtype=float)
    if len(d) == 0:
        return 1.0
    observed = d.mean()
    rng = np.random.default_rng(seed)
    null = (d - observed)[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    # +1 in numerator and denominator: a p-value from a finite resample is never exactly 0
    return float((np.sum(np.abs(null) >= abs(observed) - 1e-12) + 1) / (n_boot + 1))


@dataclass
class WinRate:
    """Win rate of x against y over the prompts both answered, with its CI and tests."""

    x: str
    y: str
    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float  # (wins + ties / 2) / n
    ci: tuple[float, float]
    soft_win_rate: float  # mean P(x better): uses the judge's confidence, not just its vote
    sign_test_p: float
    bootstrap_p: float

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def win_rate(comparisons: list[Comparison], n_boot: int = 2000, seed: int = 0) -> WinRate:
    """Win rate of `comparisons[0].x` against `.y`; comparisons without a verdict are skipped."""
    if not comparisons:
        raise ValueError("win_rate: no comparisons")
    x, y = comparisons[0].x, comparisons[0].y
    if any(c.x != x or c.y != y for c in comparisons):
        raise ValueError("win_rate: comparisons of different model pairs")
    kept = [c for c in comparisons if c.outcome is not None]
    o = np.array([c.outcome for c in kept], dtype=float)
    soft = np.array([c.p_x for c in kept], dtype=float)
    n = len(o)
    return WinRate(
        x=x, y=y, n=n,
        wins=int(np.sum(o == 1.0)), ties=int(np.sum(o == 0.5)), losses=int(np.sum(o == 0.0)),
        win_rate=float(o.mean()) if n else math.nan,
        ci=bootstrap_ci(o, n_boot, seed),
        soft_win_rate=float(soft.mean()) if n else math.nan,
        sign_test_p=sign_test(o),
        bootstrap_p=paired_bootstrap_pvalue(o - 0.5, n_boot, seed),
    )


def win_rate_matrix(rates: list[WinRate], models: list[str]) -> np.ndarray:
    """M[i, j] = win rate of models[i] against models[j]; M[j, i] = 1 - M[i, j]; diagonal 0.5;
    pairs never compared are NaN."""
    index = {m: i for i, m in enumerate(models)}
    m = np.full((len(models), len(models)), np.nan)
    np.fill_diagonal(m, 0.5)
    for r in rates:
        i, j = index[r.x], index[r.y]
        m[i, j], m[j, i] = r.win_rate, 1.0 - r.win_rate
    return m


def bradley_terry(comparisons: list[Comparison], models: list[str], iters: int = 200,
                  prior: float = 0.5) -> np.ndarray:
    """Bradley-Terry log-strengths from soft outcomes (MM updates), centred on mean 0.

    `prior` adds that many virtual ties between every pair so a model that won every comparison
    still gets a finite strength.
    """
    k = len(models)
    index = {m: i for i, m in enumerate(models)}
    wins = np.full((k, k), prior / 2)  # wins[i, j]: (soft) times i beat j
    np.fill_diagonal(wins, 0.0)
    for c in comparisons:
        p = c.p_x
        if p is not None:
            i, j = index[c.x], index[c.y]
            wins[i, j] += p
            wins[j, i] += 1.0 - p
    games = wins + wins.T
    strength = np.ones(k)
    for _ in range(iters):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        strength = wins.sum(axis=1) / np.maximum(denom, 1e-12)
        strength /= np.exp(np.mean(np.log(strength)))
    log_s = np.log(strength)
    return log_s - log_s.mean()


def normalised_scores(comparisons: list[Comparison], models: list[str]) -> dict[str, dict[str, float]]:
    """Per model: Elo-scale Bradley-Terry score (mean 0; +400 = 10:1 odds) and the implied expected
    win rate against an average opponent in [0, 1]."""
    log_s = bradley_terry(comparisons, models)
    return {m: {"elo": float(400.0 / math.log(10) * s), "expected_win_rate": float(1.0 / (1.0 + math.exp(-s)))}
            for m, s in zip(models, log_s, strict=True)}


@dataclass
class PositionBias:
    """How often the judge prefers whichever answer it saw first (0.5 = no bias)."""

    n_verdicts: int
    first_position_rate: float
    ci: tuple[float, float]
    biased: bool  # the CI excludes 0.5
    consistency: float  # share of doubly-judged comparisons where both orders pick the same answer
    n_both_orders: int

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def position_bias(comparisons: list[Comparison], n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> PositionBias:
    """First-position preference rate over every verdict, bootstrapped by comparison (the two orders
    of one comparison are not independent, so they are resampled together)."""
    rows = []  # per comparison: [sum of first-preferences, number of verdicts]
    for c in comparisons:
        ps = [p for p in (c.p_x_first, c.p_y_first) if p is not None]
        if ps:
            rows.append([sum(outcome_of(p) for p in ps), len(ps)])
    both = [c.consistent for c in comparisons if c.p_x_first is not None and c.p_y_first is not None]
    if not rows:
        return PositionBias(0, math.nan, (math.nan, math.nan), False, math.nan, 0)
    r = np.asarray(rows, dtype=float)

    def ratio(a, axis):  # share of first-preferences in a resample of comparisons
        return a[..., 0].sum(axis=axis) / a[..., 1].sum(axis=axis)

    ci = bootstrap_ci(r, n_boot, seed, level, stat=ratio)
    return PositionBias(
        n_verdicts=int(r[:, 1].sum()), first_position_rate=float(ratio(r, 0)), ci=ci,
        biased=bool(ci[0] > 0.5 or ci[1] < 0.5),
        consistency=float(np.mean(both)) if both else math.nan, n_both_orders=len(both),
    )
