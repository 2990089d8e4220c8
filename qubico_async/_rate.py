"""Pacing of API requests: one adaptive rate controller per client, and `Pacing`, its settings.

The controller, shared by creates, polls and uploads, does nothing until the service says 429.
Then it pauses everyone for `Retry-After`, halves the request rate, and recovers additively
(AIMD) while requests succeed. When requests must queue, creates go first: polls never starve
the work that moves a batch forward. Its bounds are its own (`Pacing`), not the retry policy's.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio
from attrs import field, frozen, validators

if TYPE_CHECKING:
    from .coordination import Coordination

__all__ = ["Pacing", "RateController"]

Priority = Literal["create", "poll"]
_DECREASE_EVERY = 1.0  # seconds
_MAX_PAUSE = 300.0
"""The longest `Retry-After` pause taken at face value."""


def _at_least_min_rate(instance: Any, attribute: Any, value: float) -> None:
    if value < instance.min_rate:
        raise ValueError(f"max_rate ({value}) must be at least min_rate ({instance.min_rate})")


@frozen
class Pacing:
    """How the client paces its API requests once the service has answered 429.

    Nothing is paced before a 429. Then every request waits out the `Retry-After` pause and the
    request rate is halved (never below `min_rate` per second); it recovers by
    `increase_per_second` each second while requests succeed, and pacing stops at `max_rate`.
    A request waits at most `max_wait` seconds for its turn, then is sent anyway (the service
    answers 429 again if it must). Independent of `RetryPolicy`: `RetryPolicy.instant()` retries
    without sleeping but still paces. `Pacing.off()` never waits (tests that script 429 storms).
    Downloads of result files are not paced: they come from another host.
    """

    max_wait: float = field(default=30.0, validator=validators.ge(0))
    min_rate: float = field(default=0.5, validator=validators.gt(0))
    max_rate: float = field(default=1000.0, validator=[validators.gt(0), _at_least_min_rate])
    increase_per_second: float = field(default=1.0, validator=validators.ge(0))

    @classmethod
    def off(cls) -> Pacing:
        """Never wait for a turn: 429s are still counted, and retried by the `RetryPolicy`."""
        return cls(max_wait=0.0)


class RateController:
    """AIMD request pacing: multiplicative decrease on 429, additive increase on success."""

    def __init__(
        self,
        *,
        min_rate: float = 0.5,
        max_rate: float = 1000.0,
        increase_per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """The bounds are `Pacing`'s (see `from_pacing`); `clock` is injectable for tests."""
        self.min_rate = min_rate
        self.max_rate = max_rate
        self.increase_per_second = increase_per_second
        self._clock = clock
        self.rate: float | None = None  # requests per second; None = unlimited (no 429 seen)
        self._paused_until = 0.0
        self._next_slot = 0.0
        self._last_adjust = 0.0
        self._last_decrease = -math.inf
        self._recent: deque[float] = deque(maxlen=256)
        self._waiting: dict[Priority, int] = {"create": 0, "poll": 0}
        self.rate_limited = 0
        self.shared: Coordination | None = None
        """coordination hook (issue 14): a 429 pause shared with other processes (monotonic clock)."""

    @classmethod
    def from_pacing(cls, pacing: Pacing, clock: Callable[[], float] = time.monotonic) -> RateController:
        return cls(
            min_rate=pacing.min_rate,
            max_rate=pacing.max_rate,
            increase_per_second=pacing.increase_per_second,
            clock=clock,
        )

    @property
    def limited(self) -> bool:
        return self.rate is not None or self._paused_until > self._clock()

    async def acquire(self, priority: Priority = "poll", max_wait: float = math.inf) -> None:
        """Wait (at most `max_wait` seconds) for permission to send one request."""
        start = self._clock()
        if self.shared is not None:  # coordination hook (issue 14): another process's Retry-After
            self._paused_until = max(self._paused_until, self.shared.shared_pause())
        if self.rate is None and self._paused_until <= start:
            self._recent.append(start)
            return
        deadline = start + max_wait
        self._waiting[priority] += 1
        try:
            while True:
                now = self._clock()
                if now >= deadline:
                    break
                if now < self._paused_until:
                    await anyio.sleep(min(self._paused_until, deadline) - now)
                    continue
                if priority == "poll" and self._waiting["create"]:
                    await anyio.sleep(min(self._interval() or 0.001, deadline - now))  # creates first
                    continue
                self._recover(now)
                slot = max(now, self._next_slot)
                if slot > now:
                    await anyio.sleep(min(slot, deadline) - now)
                    continue
                break
            now = self._clock()
            self._next_slot = max(now, self._next_slot) + self._interval()
            self._recent.append(now)
        finally:
            self._waiting[priority] -= 1

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429 arrived: pause for `retry_after` and halve the rate."""
        now = self._clock()
        self.rate_limited += 1
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + min(retry_after, _MAX_PAUSE))
            if self.shared is not None:  # coordination hook (issue 14): pause the other processes too
                self.shared.pause_for(min(retry_after, _MAX_PAUSE))
        if self.rate is not None and now - self._last_decrease < _DECREASE_EVERY:
            return  # one decrease per congestion event, not one per 429 of a burst
        observed = self._observed_rate(now)
        base = self.rate if self.rate is not None else max(observed, self.min_rate * 2)
        self.rate = max(self.min_rate, base / 2)
        self._last_adjust = self._last_decrease = now

    def _recover(self, now: float) -> None:
        if self.rate is None:
            return
        elapsed = now - self._last_adjust
        if elapsed <= 0:
            return
        self.rate = min(self.max_rate, self.rate + self.increase_per_second * elapsed)
        self._last_adjust = now
        if self.rate >= self.max_rate:
            self.rate = None  # fully recovered: stop pacing

    def _interval(self) -> float:
        return 0.0 if self.rate is None else 1.0 / self.rate

    def _observed_rate(self, now: float) -> float:
        window = [t for t in self._recent if now - t <= 1.0]
        return float(len(window)) if window else 1.0
