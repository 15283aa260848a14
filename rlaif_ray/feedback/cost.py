"""Dollars from token counts and the judge's price table (USD per million tokens by kind); Message
Batches bill half."""

from __future__ import annotations

from ..config import JudgeConfig
from .types import Usage

BATCH_DISCOUNT = 0.5
CLAUDE_PRICES = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}  # Sonnet, USD/Mtok


def prices_of(cfg: JudgeConfig) -> dict[str, float]:
    """The judge's price table: its own, else Claude's list prices for Anthropic kinds and 0 for the rest."""
    if cfg.price_per_mtok is not None:
        return cfg.price_per_mtok
    if cfg.kind not in ("anthropic", "anthropic-batch"):
        return dict.fromkeys(CLAUDE_PRICES, 0.0)
    if cfg.cache_ttl == "1h":  # a 1-hour cache write bills 2x the input price, a 5-minute one 1.25x
        return {**CLAUDE_PRICES, "cache_write": 2 * CLAUDE_PRICES["input"]}
    return CLAUDE_PRICES


def cost_usd(usage: Usage, price_per_mtok: dict[str, float], batch: bool = False) -> float:
    total = sum(getattr(usage, kind) * price_per_mtok.get(kind, 0.0) for kind in
                ("input", "output", "cache_write", "cache_read")) / 1e6
    return total * (BATCH_DISCOUNT if batch else 1.0)
