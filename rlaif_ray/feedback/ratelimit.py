"""Client-side rate limiter: token buckets for requests, input tokens and output tokens per minute that
learn the server's real limits.

- Each bucket holds 0.9 s of budget, so the pool runs at a steady rate instead of bursting into 429s (the
  Anthropic docs: limits may be enforced over short intervals, 60 RPM as 1 per second), and a server's own
  one-second bucket keeps a tenth of a second in reserve against requests that arrive bunched (at a full
  second both sides ran at zero, and every early arrival was a 429 and a rate cut).
- `observe(headers)` after every response: a server limit below the configured one (`anthropic-ratelimit-
  requests-limit`, OpenAI's `x-ratelimit-limit-requests`) replaces it; a budget the headers say is spent
  (`-remaining: 0`) holds every request until its `-reset`, so none is sent that would be refused.
- `refused(headers)` on a 429: one that carries no rate-limit headers, or headers saying the budget is
  spent, is congestion: the rate is cut (multiplicative decrease, at most once a second) and grows back
  linearly over `RECOVER_S` (AIMD). The exception is a lone spent-budget 429 (none in the `LONE_S` before
  it): a client pacing itself at the limit meets one now and then when requests arrive bunched, and the
  hold until the reset its headers give is enough; a second one soon after is congestion (another client
  spending the same budget) and cuts. A 429 whose headers show budget left is not about the shared budget
  (one request's retry-after): it delays only that request (retry.py).

- Slow start: with a request budget, requests trickle out at `PROBE_SCALE` of the configured rate, one at a
  time, until the first answer (`observe` or `refused`, at most `PROBE_S`), so the server's real limit is
  known before the first burst; a server that allows what was configured is kept busy meanwhile.

One limiter serves a whole pool: `FeedbackPool` runs it as a Ray actor and every FeedbackActor, on any
node, draws from it through `SharedLimiter`; in-process tests use a `RateLimiter` directly.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime

from ..config import RateLimitConfig

DECREASE = 0.7       # rate factor on a congestion 429
MIN_SCALE = 0.05     # the rate never drops below this fraction of the limit
RECOVER_S = 20.0     # seconds to grow back from MIN_SCALE to the full limit
MAX_HOLD_S = 60.0    # cap on a reset time read from headers
PROBE_S = 10.0       # slow start: longest it waits for the first request's answer
PROBE_SCALE = 0.3    # slow start: the fraction of the configured request rate sent until then
BURST_S = 0.9        # seconds of budget a bucket holds (the most sent at once)
LONE_S = 5.0         # a spent-budget 429 this long after the last one is pacing jitter, not congestion
_KINDS = {"requests": "requests", "input": "input-tokens", "output": "output-tokens"}


class _Bucket:
    def __init__(self, per_min: float):
        self.limit = self.rate = per_min / 60.0
        self.level = self.capacity = max(1.0, self.rate * BURST_S)
        self.t = time.monotonic()

    def set_rate(self, rate: float) -> None:
        self.deficit(0.0)  # bank what accrued at the old rate
        self.rate, self.capacity = rate, max(1.0, rate * BURST_S)
        self.level = min(self.level, self.capacity)

    def deficit(self, amount: float) -> float:
        """Seconds until `amount` is available (0: available now). A request bigger than a second's budget
        only needs a full bucket."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now
        return max(0.0, min(amount, self.capacity) - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


def ratelimit_headers(headers) -> dict[str, str]:
    """The rate-limit headers of a response (plain dict, small enough to send to the shared limiter)."""
    if headers is None:
        return {}
    return {k.lower(): v for k, v in headers.items() if "ratelimit" in k.lower()}


def _reset_s(value: str) -> float | None:
    """Seconds until a reset: an RFC 3339 time (Anthropic) or a duration like '1s', '6m0s', '20ms' (OpenAI)."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - time.time()
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not parts:
        return None
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * unit[u] for n, u in parts)


class RateLimiter:
    """`await limiter.acquire(input_tokens, output_tokens)` before each request; `observe(headers)` after a
    response, `refused(headers)` after a 429. `share` splits the budget when each caller has its own."""

    def __init__(self, cfg: RateLimitConfig, share: float = 1.0):
        self.buckets = {name: _Bucket(per_min * share) for name, per_min in
                        (("requests", cfg.requests_per_min), ("input", cfg.input_tokens_per_min),
                         ("output", cfg.output_tokens_per_min)) if per_min > 0}
        self.share = share
        self.scale, self._scale_t, self._last_cut, self._last_429 = 1.0, time.monotonic(), 0.0, float("-inf")
        self.blocked_until = 0.0
        self.stats = {"acquired": 0, "congestion_429": 0, "rate_cuts": 0, "holds": 0, "learned_limit": {}}
        self._lock = asyncio.Lock()
        self._heard: asyncio.Event | None = asyncio.Event() if "requests" in self.buckets else None
        self._probe_end: float | None = None  # slow start: its deadline, and when its next request may go
        self._next_probe = 0.0

    async def acquire(self, input_tokens: int = 0, output_tokens: int = 0) -> None:
        async with self._lock:  # FIFO: callers are served in arrival order
            if self._heard is not None:
                await self._slow_start()
            while True:
                pause = self.blocked_until - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                self._recover()
                wanted = {"requests": 1, "input": input_tokens, "output": output_tokens}
                wait = max((b.deficit(wanted[n]) for n, b in self.buckets.items()), default=0.0)
                if wait <= 0:
                    for n, b in self.buckets.items():
                        b.take(wanted[n])
                    self.stats["acquired"] += 1
                    return
                await asyncio.sleep(wait)

    async def _slow_start(self) -> None:
        """Until the first answer is heard (at most PROBE_S after the first request), one request every
        1 / (PROBE_SCALE x rate) seconds: a limit configured too high costs a few refused requests before the
        headers teach the real one, not a burst; a right one is kept at 30% busy instead of idle meanwhile."""
        now = time.monotonic()
        if self._probe_end is None:
            self._probe_end, self._next_probe = now + PROBE_S, now
        if not self._heard.is_set() and self._next_probe > now:
            try:
                await asyncio.wait_for(self._heard.wait(), min(self._next_probe, self._probe_end) - now)
            except TimeoutError:
                pass
        if self._heard.is_set() or time.monotonic() >= self._probe_end:
            self._heard = None
        else:
            self._next_probe = time.monotonic() + 1.0 / (PROBE_SCALE * self.buckets["requests"].limit)

    def hold(self, seconds: float) -> None:
        """Send nothing for `seconds` (a budget the server says is spent until its reset)."""
        self.blocked_until = max(self.blocked_until, time.monotonic() + min(MAX_HOLD_S, max(0.0, seconds)))
        self.stats["holds"] += 1

    def observe(self, headers) -> bool:
        """Learn from a response's rate-limit headers; True when they say a budget is spent."""
        if self._heard is not None:
            self._heard.set()
        headers = ratelimit_headers(headers)
        spent = False
        for name, kind in _KINDS.items():
            limit = headers.get(f"anthropic-ratelimit-{kind}-limit") or headers.get(f"x-ratelimit-limit-{kind}")
            remaining = (headers.get(f"anthropic-ratelimit-{kind}-remaining")
                         or headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = headers.get(f"anthropic-ratelimit-{kind}-reset") or headers.get(f"x-ratelimit-reset-{kind}")
            bucket = self.buckets.get(name)
            try:
                if limit is not None and bucket is not None and float(limit) * self.share / 60.0 < bucket.limit:
                    bucket.limit = float(limit) * self.share / 60.0  # per minute, like ours
                    self.stats["learned_limit"][name] = float(limit)
                    self._apply_scale()
                if remaining is not None and reset is not None and float(remaining) < 1:
                    wait = _reset_s(reset)
                    if wait is not None:
                        self.hold(wait)
                        spent = True
            except ValueError:
                continue
        return spent

    def refused(self, headers) -> None:
        """A 429. Congestion (no rate-limit headers, or a spent budget): cut the rate. Otherwise (budget
        left, per the headers) it concerns one request and the caller's own backoff handles it."""
        if self._heard is not None:
            self._heard.set()
        rl = ratelimit_headers(headers)
        if rl and not self.observe(rl):
            return
        now = time.monotonic()
        self.stats["congestion_429"] += 1
        lone, self._last_429 = now - self._last_429 > LONE_S, now
        if rl and lone:  # pacing jitter at the limit: the hold until the reset its headers gave is the answer
            return
        if now - self._last_cut >= 1.0:  # one cut per second: the 429s of one burst are one signal
            self._recover()
            self.scale, self._last_cut = max(MIN_SCALE, self.scale * DECREASE), now
            self.stats["rate_cuts"] += 1
            self._apply_scale()

    def _recover(self) -> None:
        now = time.monotonic()
        if self.scale < 1.0:
            self.scale = min(1.0, self.scale + (now - self._scale_t) * (1.0 - MIN_SCALE) / RECOVER_S)
            self._apply_scale()
        self._scale_t = now

    def _apply_scale(self) -> None:
        for b in self.buckets.values():
            b.set_rate(b.limit * self.scale)

    def snapshot(self) -> dict:
        """What the limiter has learned (for the run summary and the benchmark)."""
        return {**self.stats, "scale": round(self.scale, 3),
                "requests_per_min": round(self.buckets["requests"].rate * 60, 1) if "requests" in self.buckets else 0}


class SharedLimiter:
    """The pool's one RateLimiter, living in a Ray actor, seen from a FeedbackActor: `acquire` waits for
    the actor's grant; `observe`/`refused` are sent without waiting.

    `unlimited` (every limit configured 0): the shared limiter has no bucket, so it could only hold requests
    after a response says a budget is spent; until this actor hears that (a rate-limit header with nothing
    remaining, or a 429), acquire asks nobody. A Ray round trip per request cost the limiter actor 60% of a
    core at ~780 calls/s here, CPU the judge calls need."""

    def __init__(self, handle, unlimited: bool = False):
        self.handle, self._told, self._ask = handle, False, not unlimited

    async def acquire(self, input_tokens: int = 0, output_tokens: int = 0) -> None:
        if self._ask:
            await self.handle.acquire.remote(input_tokens, output_tokens)

    def observe(self, headers) -> None:
        rl = ratelimit_headers(headers)
        if rl or not self._told:  # the first answer always (it ends the slow start), then only headers
            self._told = True
            self.handle.observe.remote(rl)
            self._ask = self._ask or _spent(rl)

    def refused(self, headers) -> None:
        self._ask = True
        self.handle.refused.remote(ratelimit_headers(headers))


def _spent(headers: dict[str, str]) -> bool:
    """Rate-limit headers saying some budget has nothing remaining."""
    for k, v in headers.items():
        if "remaining" in k:
            try:
                if float(v) < 1:
                    return True
            except ValueError:
                continue
    return False
