"""Dollars from token counts and the price table in JudgeConfig (USD per million tokens by kind);
Message Batches bill half."""

from __future__ import annotations

from .types import Usage

BATCH_DISCOUNT = 0.5


def cost_usd(usage: Usage, price_per_mtok: dict[str, float], batch: bool = False) -> float:
    total = sum(getattr(usage, kind) * price_per_mtok.get(kind, 0.0) for kind in
                ("input", "output", "cache_write", "cache_read")) / 1e6
    return total * (BATCH_DISCOUNT if batch else 1.0)
