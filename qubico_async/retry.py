"""RetryPolicy and the classification of failures into "retry" or "give up".

The rules, in one place:
- reads (GET) retry transport errors, 408, 429 and 5xx;
- the paid create (POST /api/v1/task) retries only when no task can have been created:
  a connection that failed before the request was sent, 429, or 503 (without a task in the body:
  an answer that carries a task is that task, whatever its status);
- a create that was sent is *uncertain* (it may have made a paid task, so it is never resent
  unasked) unless its answer proves nothing was made: 429/503 as above, or one of the statuses
  the service sends only for a request it refused outright: 400 (invalid input), 401 (no or bad
  key), 402 (payment required) and 403 (not allowed for this account/plan). Anything else (a
  404 or 409 from a proxy, 307, 408, 5xx, a cut connection, an unreadable 2xx) is uncertain;
- reads retry nothing else: 400, 401, 403 and 404 are final;
- a download of a result file is a read, with the same rules (a file over the size cap is not
  fetched again: it would be as big the next time).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from collections.abc import Mapping

from attrs import field, frozen, validators

from .errors import APIError, RateLimitError, TransportError

__all__ = ["RetryPolicy", "parse_retry_after"]

_RNG = random.Random()
_RETRYABLE_READ_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_RETRYABLE_CREATE_STATUSES = frozenset({429, 503})
_REFUSED_CREATE_STATUSES = frozenset({400, 401, 402, 403})
"""Statuses the service sends only when it refused the create: no task was made."""


@frozen
class RetryPolicy:
    """How often and how patiently to retry a failed request.

    Delay before retry n (1-based) is `min(cap, base * 2**(n-1))`, scaled by a random factor in
    `[1 - jitter, 1]`; a server `Retry-After` (capped at `max_retry_after`) wins when
    `respect_retry_after` is set. `max_attempts` counts the first try: 1 disables retries.
    """

    max_attempts: int = field(default=4, validator=validators.ge(1))
    base: float = field(default=0.5, validator=validators.ge(0))
    cap: float = field(default=30.0, validator=validators.ge(0))
    jitter: float = field(default=0.5, validator=[validators.ge(0), validators.le(1)])
    respect_retry_after: bool = True
    max_retry_after: float = field(default=120.0, validator=validators.ge(0))

    @classmethod
    def none(cls) -> RetryPolicy:
        """Never retry."""
        return cls(max_attempts=1)

    @classmethod
    def instant(cls, max_attempts: int = 4) -> RetryPolicy:
        """Retry without waiting (for tests against the emulator)."""
        return cls(max_attempts=max_attempts, base=0.0, cap=0.0, jitter=0.0, max_retry_after=0.0)

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to sleep after failed attempt number `attempt` (1-based)."""
        if self.respect_retry_after and retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        backoff = min(self.cap, self.base * (2.0 ** max(0, attempt - 1)))
        factor = 1.0 - self.jitter * (rng or _RNG).random()
        return backoff * factor


def is_retryable_read(exc: BaseException) -> bool:
    """May a GET that failed with `exc` be tried again?"""
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, APIError) and exc.status in _RETRYABLE_READ_STATUSES


def is_retryable_create(exc: BaseException) -> bool:
    """Does `exc` prove that the create request created no task?"""
    if isinstance(exc, TransportError):
        return not exc.sent
    return isinstance(exc, APIError) and exc.status in _RETRYABLE_CREATE_STATUSES


def is_uncertain_create(exc: BaseException) -> bool:
    """Could the create that failed with `exc` have created a task anyway?"""
    if isinstance(exc, TransportError):
        return exc.sent
    if isinstance(exc, APIError):
        return exc.status not in _RETRYABLE_CREATE_STATUSES and exc.status not in _REFUSED_CREATE_STATUSES
    return False


def retry_after_of(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, RateLimitError) else None


def parse_retry_after(headers: Mapping[str, str], now: dt.datetime | None = None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or HTTP-date), or None when absent or unreadable."""
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        try:
            seconds = (when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
        except OverflowError:
            return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)
