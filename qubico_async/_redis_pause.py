"""The shared 429 pause over Redis: a `Retry-After` seen by one process pauses the requests of all.

`pause` (string: the unix time it ends, expiring with it) is set and published on
`<prefix>pause`; a process reads it when it starts and when Redis is back after an outage.
A pause is capped at 300 seconds. While Redis is away the pause is this process's own.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from ._redis_link import RedisLink

__all__ = ["RedisPause"]


class RedisPause:
    """The pause every process keeps to, as a `time.monotonic()` deadline (0 for none)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self.until = 0.0  # monotonic

    def pause_for(self, seconds: float) -> None:
        if seconds <= 0:
            return
        until = time.time() + min(seconds, 300.0)
        self._set(until)
        if self._link.connected:
            self._link.spawn(self._publish(until, seconds))

    def on_message(self, data: Any) -> None:
        """Another process paused (a message on `<prefix>pause`)."""
        with contextlib.suppress(ValueError, TypeError):
            self._set(float(data))

    async def load(self) -> None:
        """The pause already in force, if any (at start, and when Redis is back)."""
        raw = await self._link.call(lambda r: r.get(self._link.key("pause")))
        if raw is not None:
            with contextlib.suppress(ValueError, TypeError):
                self._set(float(raw))

    def _set(self, until_unix: float) -> None:
        remaining = min(until_unix - time.time(), 300.0)
        if remaining > 0:
            self.until = max(self.until, time.monotonic() + remaining)

    async def _publish(self, until: float, seconds: float) -> None:
        value = repr(until)
        await self._link.call(lambda r: r.set(self._link.key("pause"), value, px=max(1, int(seconds * 1000))))
        await self._link.call(lambda r: r.publish(self._link.key("pause"), value))
