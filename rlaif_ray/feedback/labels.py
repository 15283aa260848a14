"""From pairs to judge tasks, and from stored verdicts to soft-labelled preferences.

Position bias: each pair is judged as (a, b) and as (b, a); P(a > b) averages P(first) of the first order
with 1 - P(first) of the swapped one, over every sample. Position consistency = share of pairs whose two
orders pick the same response; first-position rate = share of verdicts that pick the first-shown one.
A pointwise label (each response scored alone) shows no order: one order, and no position statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import fsum
from typing import Any

from ..config import JudgeConfig
from ..data import PairRecord, PreferenceRecord, no_cyclic_gc, to_trl_rows
from .store import LabelStore
from .types import Task

ORDERS_BOTH = ("ab", "ba")


def orders(cfg: JudgeConfig) -> tuple[str, ...]:
    return ORDERS_BOTH if cfg.both_orders and cfg.protocol == "pairwise" else ("ab",)


def n_samples(cfg: JudgeConfig) -> int:
    """Calls per order of one pair: `samples`, times `principles_per_pair` under a constitution."""
    return cfg.samples * (cfg.principles_per_pair if cfg.constitution else 1)


def principle_of(cfg: JudgeConfig, pair_id: str, sample: int) -> str | None:
    """Under a constitution, sample k of a pair judges by its (k // samples)-th drawn principle."""
    if not cfg.constitution:
        return None
    from .constitution import load_constitution, principles_for

    return principles_for(pair_id, load_constitution(cfg.constitution), cfg.principles_per_pair)[sample // cfg.samples]


def tasks_for(pairs: list[PairRecord], cfg: JudgeConfig) -> list[Task]:
    """Every judge call the pairs need, interleaved by pair so a partial run finishes whole pairs."""
    out, ords, samples = [], orders(cfg), range(n_samples(cfg))
    for p in pairs:
        for order in ords:
            first, second = (p.response_a, p.response_b) if order == "ab" else (p.response_b, p.response_a)
            for k in samples:
                out.append(Task(p.id, p.prompt, first, second, order, k, principle_of(cfg, p.id, k)))
    return out


def mean(xs: list[float]) -> float:
    """statistics.mean's value to the last bit or so, at a twentieth of its cost (it sums in Fractions): a
    million pairs consolidate three means each."""
    return fsum(xs) / len(xs)


def p_a_of(order: str, p_first: float) -> float:
    return p_first if order == "ab" else 1.0 - p_first


def _usage_sum(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Token and dollar sums of records, in one pass (run per label row, and over a ledger)."""
    i = o = cw = cr = 0
    cost = 0.0
    for r in records:
        u = r["usage"]
        i, o, cw, cr, cost = i + u["input"], o + u["output"], cw + u["cache_write"], cr + u["cache_read"], cost + r["cost_usd"]
    return {"input_tokens": i, "output_tokens": o, "cache_write_tokens": cw, "cache_read_tokens": cr,
            "cost_usd": round(cost, 8)}


@dataclass
class LabelStats:
    """Consolidation counts, summed over the chunks of a streamed input."""

    pairs: int = 0
    unlabeled: int = 0
    failed_calls: list[dict[str, Any]] = field(default_factory=list)  # the first 50
    failed_call_count: int = 0
    consistent: int = 0  # pairs whose two orders pick the same response
    both_orders: int = 0
    first_picks: float = 0.0  # verdicts picking the first-shown response (a tie counts half)
    verdicts: int = 0

    def summary(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "labeled": self.pairs - self.unlabeled, "unlabeled": self.unlabeled,
                "failed_calls": self.failed_calls, "failed_call_count": self.failed_call_count,
                "position_consistency": self.consistent / self.both_orders if self.both_orders else None,
                "first_position_rate": self.first_picks / self.verdicts if self.verdicts else None}


def consolidate(pairs: list[PairRecord], store: LabelStore, cfg: JudgeConfig, config_hash: str,
                judge: str, stats: LabelStats | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(preference rows in TRL format + per-pair fields, stats). A pair missing any ok verdict is left
    out and counted as unlabeled; it is never written as a preference. `stats`: counts to add to (chunk by
    chunk); the returned stats are its summary."""
    st = stats if stats is not None else LabelStats()
    prefs, extras = [], []
    st.pairs += len(pairs)
    with no_cyclic_gc():
        for p in pairs:
            if (labeled := _label_row(p, store, cfg, config_hash, judge, st)) is not None:
                prefs.append(labeled[0])
                extras.append(labeled[1])
    rows = to_trl_rows(prefs)
    for row, extra in zip(rows, extras, strict=True):
        row.update(extra)
    return rows, st.summary()


def _label_row(p: PairRecord, store: LabelStore, cfg: JudgeConfig, config_hash: str, judge: str,
               st: LabelStats) -> tuple[PreferenceRecord, dict[str, Any]] | None:
    """One pair's preference and its per-pair fields from its stored verdicts (counted into `st`), or None
    for a pair missing an ok verdict (counted as unlabeled)."""
    recs = {o: [store.get(p.id, config_hash, o, k) for k in range(n_samples(cfg))] for o in orders(cfg)}
    flat = [r for rs in recs.values() for r in rs]
    if any(r is None or r["status"] != "ok" for r in flat):
        st.unlabeled += 1
        failed = [{"pair_id": p.id, "order": r["order"], "sample": r["sample"], "error": r["error"]}
                  for r in flat if r is not None and r["status"] != "ok"]
        st.failed_call_count += len(failed)
        st.failed_calls += failed[:max(0, 50 - len(st.failed_calls))]
        return None
    p_as = {o: [p_a_of(o, r["p_first"]) for r in rs] for o, rs in recs.items()}
    p_a = mean([x for xs in p_as.values() for x in xs])
    if cfg.protocol == "pairwise":
        st.first_picks += sum([1.0 if r["p_first"] > 0.5 else 0.0 if r["p_first"] < 0.5 else 0.5 for r in flat])
        st.verdicts += len(flat)
    by_order = {o: mean(xs) for o, xs in p_as.items()}
    is_consistent = None
    if len(by_order) == 2:
        is_consistent = (by_order["ab"] > 0.5) == (by_order["ba"] > 0.5) and 0.5 not in by_order.values()
        st.consistent += is_consistent
        st.both_orders += 1
    a_wins = p_a >= 0.5
    pref = PreferenceRecord(p.prompt, p.response_a if a_wins else p.response_b,
                            p.response_b if a_wins else p.response_a, id=p.id, p_chosen=p_a if a_wins else 1.0 - p_a)
    extra: dict[str, Any] = {"p_a": p_a, "chosen_is": "a" if a_wins else "b", "judge": judge,
                             "judge_config_hash": config_hash, "position_consistent": is_consistent,
                             "protocol": cfg.protocol}
    if cfg.protocol == "pointwise":  # the ab order's scores: first = a
        extra.update(scale=cfg.scale, score_a=mean([r["scores"][0] for r in flat]),
                     score_b=mean([r["scores"][1] for r in flat]))
    formats = sorted({r["answer_format"] for r in flat if r.get("answer_format")})
    if formats:  # API judges: structured (json_schema, choice) or the text verdict (none), "+" if mixed
        extra["answer_format"] = "+".join(formats)
    if cfg.constitution:  # RL-CAI: the principles this label averages, in draw order
        extra["principles"] = list(dict.fromkeys(principle_of(cfg, p.id, k) for k in range(n_samples(cfg))))
    for o, rs in recs.items():
        extra[f"p_a_{o}"] = by_order[o]
        extra[f"verdict_{o}"] = [r["raw"] for r in rs]
        if cfg.cot:
            extra[f"rationale_{o}"] = [r["rationale"] for r in rs]
    extra.update(_usage_sum(flat))
    return pref, extra


def cost_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Token and dollar totals of stored records: a run's, or `LabelStore.ledger(hash)` for every record
    ever written, failed and replaced ones included (what the provider billed, estimates marked)."""
    return {**_usage_sum(records), "estimated_usd": round(sum(r.get("estimated_usd", 0.0) for r in records), 8),
            "calls": sum(r.get("calls", 1) for r in records), "attempts": sum(r.get("attempts", 1) for r in records),
            "reasks": sum(r.get("reasks", 0) for r in records)}
