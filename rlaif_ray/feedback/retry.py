"""Our retry policy for API judges (the SDKs run with max_retries=0): capped exponential backoff with
jitter on 408/409/429/5xx/529, timeouts, connection errors and malformed responses.

- The per-attempt timeout starts when the request is sent: the wait for a rate-limit slot (`acquire`) is
  not part of any attempt.
- A server's retry-after delays that request (capped at `retry_after_cap_s`); only what the limiter reads
  from a 429 (a spent or congested budget) slows the others.
- 429 and 529 say "not now", not "this request is bad": they are retried for as long as `max_wait_s`
  allows; other errors also stop after `max_attempts`. A 429 about a spend limit or quota is final.
- `lost` counts attempts the server probably billed but whose answer never arrived (sent and timed out,
  a 2xx with a broken body), so the caller can put their estimated cost in the ledger.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import TypeVar

from ..config import RetryConfig

T = TypeVar("T")
RETRY_STATUS = {408, 409, 429, 529}


class GaveUp(Exception):
    """Every attempt failed; `attempts`, `lost` (billed, undelivered) and the last error are kept for the
    failed-label record."""

    def __init__(self, message: str, attempts: int, lost: int = 0):
        super().__init__(message)
        self.attempts, self.lost = attempts, lost


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Transient by class: HTTP 408/409/429/5xx/529, timeouts, connection errors, unparsable bodies."""
    status = _status(exc)
    if status is not None:
        return status in RETRY_STATUS or status >= 500
    names = {c.__name__ for c in type(exc).__mro__}
    transient = {"APITimeoutError", "APIConnectionError", "APIResponseValidationError", "TimeoutError",
                 "ConnectionError", "JSONDecodeError", "RemoteProtocolError", "ReadError"}
    return bool(names & transient) or isinstance(exc, (json.JSONDecodeError, asyncio.TimeoutError))


def spend_limited(exc: BaseException) -> bool:
    """A 429 that is about money, not pace (OpenAI's `insufficient_quota`, a spend or credit limit): waiting
    will not help, so it is not retried."""
    if _status(exc) != 429:
        return False
    text = f"{getattr(exc, 'body', '')} {exc}".lower()
    return any(w in text for w in ("insufficient_quota", "spend limit", "credit balance", "billing"))


def billed_if_lost(exc: BaseException) -> bool:
    """The request reached the server and it probably billed an answer we never read: our attempt timeout
    fired after sending, or a success status came with a body that does not parse. Refusals (4xx/5xx) and
    connection errors (nothing or not all was sent, or the server dropped it) are not billed. The SDKs'
    own APITimeoutError is not counted: their timeout is set past ours, so it only comes from a transport
    failure (the openai SDK reports a dropped connection under the aiohttp transport that way)."""
    if _status(exc) is not None and not 200 <= _status(exc) < 300:
        return False
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"APIResponseValidationError", "JSONDecodeError"}) \
        or isinstance(exc, (asyncio.TimeoutError, json.JSONDecodeError))


def retry_after_s(exc: BaseException) -> float | None:
    """The server's retry-after (seconds or HTTP date, or retry-after-ms), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def describe(exc: BaseException) -> str:
    """Short error text for the store; never includes request headers (they carry the key)."""
    status = _status(exc)
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {text}"


async def with_retry(send: Callable[[], Awaitable[T]], cfg: RetryConfig, acquire: Callable[[], Awaitable] | None = None,
                     limiter=None, rng: random.Random | None = None, tally=None) -> tuple[T, int, int]:
    """(result, attempts, lost). `acquire` (a rate-limit slot) is awaited before each attempt, outside its
    timeout; `limiter.refused(headers)` hears every 429; `tally` (store.InflightTally) marks each attempt
    sent and, once its outcome is known here, ended (an attempt cancelled with its process stays open).
    Raises GaveUp when retries are spent, or at once for a non-retryable error."""
    rng = rng or random.Random()
    start, attempt, lost = time.monotonic(), 0, 0
    while True:
        attempt += 1
        if acquire is not None:
            await acquire()
        if tally is not None:
            tally.sent()
        try:
            result = await asyncio.wait_for(send(), cfg.timeout_s)
            if tally is not None:
                tally.done()
            return result, attempt, lost
        except Exception as exc:  # noqa: BLE001 - classified below
            if tally is not None:
                tally.done()
            lost += billed_if_lost(exc)
            if not is_retryable(exc) or spend_limited(exc):
                raise GaveUp(describe(exc), attempt, lost) from exc
            status = _status(exc)
            if status == 429 and limiter is not None:
                limiter.refused(getattr(getattr(exc, "response", None), "headers", None))
            capacity = status in (429, 529)  # "not now": bounded by time, not by count
            delay = min(cfg.max_delay_s, cfg.base_delay_s * 2 ** min(attempt - 1, 30)) * rng.uniform(0.5, 1.0)
            after = retry_after_s(exc)
            if after is not None:
                delay = max(delay, min(after, cfg.retry_after_cap_s))
            out_of_time = time.monotonic() - start + delay > cfg.max_wait_s
            if out_of_time or (not capacity and attempt >= cfg.max_attempts):
                raise GaveUp(f"gave up after {attempt} attempts: {describe(exc)}", attempt, lost) from exc
            await asyncio.sleep(delay)
