"""Client-side rate limiter: token buckets for requests, input tokens and output tokens per minute, fed by
the server's `anthropic-ratelimit-*` headers and by 429 `retry-after` pauses.

Each bucket holds about one second of budget, so the pool runs at a steady rate instead of bursting into
429s; a pool of K actors gives each actor 1/K of the budget.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from ..config import RateLimitConfig


class _Bucket:
    def __init__(self, per_min: float):
        self.rate = per_min / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.t = time.monotonic()

    def deficit(self, amount: float) -> float:
        """Seconds until `amount` is available (0: available now). A request bigger than a second's budget
        only needs a full bucket."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now
        return max(0.0, min(amount, self.capacity) - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class RateLimiter:
    """`await limiter.acquire(input_tokens, output_tokens)` before each request; `observe(headers)` after."""

    def __init__(self, cfg: RateLimitConfig, share: float = 1.0):
        self.buckets = {name: _Bucket(per_min * share) for name, per_min in
                        (("requests", cfg.requests_per_min), ("input", cfg.input_tokens_per_min),
                         ("output", cfg.output_tokens_per_min)) if per_min > 0}
        self.blocked_until = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self, input_tokens: int = 0, output_tokens: int = 0) -> None:
        async with self._lock:  # FIFO: callers are served in arrival order
            while True:
                pause = self.blocked_until - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                wanted = {"requests": 1, "input": input_tokens, "output": output_tokens}
                wait = max((b.deficit(wanted[n]) for n, b in self.buckets.items()), default=0.0)
                if wait <= 0:
                    for n, b in self.buckets.items():
                        b.take(wanted[n])
                    return
                await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """Stop every caller of this limiter for `seconds` (a server's retry-after)."""
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    def observe(self, headers) -> None:
        """Honour `anthropic-ratelimit-{requests,input-tokens,output-tokens}-remaining/-reset`: when a
        budget is exhausted, wait until its reset time."""
        if headers is None:
            return
        for kind in ("requests", "input-tokens", "output-tokens", "tokens"):
            remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
            reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
            if remaining is None or reset is None:
                continue
            try:
                if int(remaining) > 0:
                    continue
                until = datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            self.pause(min(60.0, max(0.0, until - time.time())))
