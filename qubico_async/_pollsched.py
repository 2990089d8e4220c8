"""When to poll a batch's tasks, learned from the batch's own completed tasks.

Until a few tasks have finished, the first poll follows the `PollPolicy` and later ones come at a
fifth of the time waited so far. After that the first
poll of a task comes near the observed median duration and later ones at a fifth of it, so a
steady service costs about one or two GETs per task and a finished task is noticed within
about 20% of the processing time.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from collections.abc import Iterator

from .models import Task
from .polling import PollPolicy

__all__ = ["PollScheduler"]

_MIN_SAMPLES = 3
_FOLLOW_UP = 0.2  # later polls at this fraction of the median duration
_MARGIN = 0.01  # first poll this fraction after the median, to land just after completion
_SERVER_SLACK = 0.5  # seconds the server's duration may exceed what the client saw (clock noise)
_EXPLORE = 0.8  # done at the first poll: guess shorter, so the estimate cannot only creep up


class PollScheduler:
    """Learns task durations; yields the waits between one task's polls."""

    def __init__(self, policy: PollPolicy, rng: random.Random | None = None, window: int = 200) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._durations: deque[float] = deque(maxlen=window)

    def observe(self, task: Task, submitted_at: float, noticed_at: float, pending_at: float | None) -> None:
        """Record how long a finished task took.

        The client saw it unfinished at `pending_at` (if ever) and finished at `noticed_at`. The
        server's own timestamps are used when they agree with that window; otherwise the window's
        middle, or, if the first poll already found it done, a guess below the upper bound so the
        estimate can move down as well as up.
        """
        upper = max(0.0, noticed_at - submitted_at)
        meta = task.meta
        if meta.created_at is not None and meta.ended_at is not None:
            server = (meta.ended_at - meta.created_at).total_seconds()
            if 0 <= server <= upper + _SERVER_SLACK:
                self._durations.append(server)
                return
        if pending_at is not None:
            lower = max(0.0, pending_at - submitted_at)
            self._durations.append((lower + upper) / 2)
        else:
            self._durations.append(upper * _EXPLORE)

    def estimate(self) -> float | None:
        """Median duration of recent tasks, once enough have finished."""
        if len(self._durations) < _MIN_SAMPLES:
            return None
        return statistics.median(self._durations)

    def waits(self) -> Iterator[float]:
        """Waits before each poll of one task, starting from its submission."""
        backoff = self.policy.intervals(self._rng)
        elapsed = 0.0
        first = True
        while True:
            estimate = self.estimate()
            if estimate is None and not first:
                # Nothing learned yet: each poll a fifth of the time waited so far, so even the
                # batch's first tasks are noticed within about 20% of their duration.
                spread = self.policy.spread(self._rng)
                wait = min(self.policy.max_interval, max(self.policy.initial, elapsed) * _FOLLOW_UP * spread)
            elif estimate is None or elapsed > 4 * estimate + self.policy.max_interval:
                wait = next(backoff)  # the first poll, or an outlier: plain backoff
            elif first or elapsed < estimate:
                wait = max(0.0, estimate * (1 + _MARGIN) - elapsed)
            else:
                wait = min(self.policy.max_interval, estimate * _FOLLOW_UP * self.policy.spread(self._rng))
            first = False
            elapsed += wait
            yield wait
