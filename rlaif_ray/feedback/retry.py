"""Our retry policy for API judges (the SDKs run with max_retries=0): capped exponential backoff with
jitter on 408/409/429/5xx/529, timeouts, connection errors and malformed responses; a server's
retry-after is honoured up to a cap and pauses the whole actor's limiter."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import TypeVar

from ..config import RetryConfig
from .ratelimit import RateLimiter

T = TypeVar("T")
RETRY_STATUS = {408, 409, 429, 529}


class GaveUp(Exception):
    """Every attempt failed; `attempts` and the last error are kept for the failed-label record."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


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
            import time

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def describe(exc: BaseException) -> str:
    """Short error text for the store; never includes request headers (they carry the key)."""
    status = _status(exc)
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {text}"


async def with_retry(call: Callable[[], Awaitable[T]], cfg: RetryConfig, limiter: RateLimiter | None = None,
                     rng: random.Random | None = None) -> tuple[T, int]:
    """(result, attempts). Raises GaveUp after the last attempt or at once for a non-retryable error."""
    rng = rng or random.Random()
    for attempt in range(1, cfg.max_attempts + 1):
        try:
            return await asyncio.wait_for(call(), cfg.timeout_s), attempt
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_retryable(exc):
                raise GaveUp(describe(exc), attempt) from exc
            if attempt == cfg.max_attempts:
                raise GaveUp(f"gave up after {attempt} attempts: {describe(exc)}", attempt) from exc
            delay = min(cfg.max_delay_s, cfg.base_delay_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)
            after = retry_after_s(exc)
            if after is not None:
                delay = max(delay, min(after, cfg.retry_after_cap_s))
                if limiter is not None and _status(exc) == 429:
                    limiter.pause(min(after, cfg.retry_after_cap_s))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
