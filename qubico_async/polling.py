"""PollPolicy: how `wait()` spaces its status checks, and its default deadline."""

from __future__ import annotations

import random
from collections.abc import Iterator

from attrs import field, frozen, validators

from ._config import positive_or_none
from .models import Task
from .requests import VIDEO_MODEL

__all__ = ["PollPolicy"]


@frozen
class PollPolicy:
    """Exponential backoff with jitter between polls, and a deadline by default.

    The n-th wait is `min(max_interval, initial * factor**n)`, multiplied by a random factor in
    `[1 - jitter, 1 + jitter]`. `timeout` bounds `wait()` (None waits forever, which is rarely
    what you want); video tasks use `video_timeout`. On the deadline `wait()` raises
    `WaitTimeoutError` and the remote task keeps running.
    """

    initial: float = field(default=1.0, validator=validators.ge(0))
    factor: float = field(default=1.5, validator=validators.ge(1))
    max_interval: float = field(default=15.0, validator=validators.ge(0))
    jitter: float = field(default=0.1, validator=[validators.ge(0), validators.le(1)])
    timeout: float | None = field(default=300.0, validator=positive_or_none)
    video_timeout: float | None = field(default=1800.0, validator=positive_or_none)

    @classmethod
    def instant(cls, timeout: float | None = 30.0) -> PollPolicy:
        """Poll back to back (for tests against the emulator), still with a deadline."""
        return cls(initial=0.0, factor=1.0, max_interval=0.0, jitter=0.0, timeout=timeout, video_timeout=timeout)

    def spread(self, rng: random.Random) -> float:
        """A random factor in `[1 - jitter, 1 + jitter]`, so waiters do not poll in lockstep."""
        return 1.0 + self.jitter * (2.0 * rng.random() - 1.0)

    def timeout_for(self, task: Task | None, *, model: str | None = None) -> float | None:
        """The default deadline for waiting on `task` (or a task of `model`): `video_timeout` for video."""
        if task is not None:
            model = task.model or model
        return self.video_timeout if model == VIDEO_MODEL else self.timeout

    def intervals(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits between consecutive polls, forever."""
        rnd = rng or random.Random()
        interval = self.initial
        while True:
            yield max(0.0, min(interval, self.max_interval) * self.spread(rnd))
            interval = min(interval * self.factor, self.max_interval)
