"""The connection to Redis, failing soft: a command either answers or notes an outage.

A failed command returns its default (the callers then fall back to local behaviour) and logs
one warning per outage; `listen` reads the pub/sub channels and is also the reconnect loop: while
Redis is away it pings every `retry_interval` seconds and says when it is back. Keys live under
`<namespace>:<account>:`. The URL's password is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = ["ERRORS", "RedisLink", "aioredis", "redacted"]

logger = logging.getLogger("qubico_async")

try:  # the `redis` extra
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - exercised only without the extra
    aioredis = None  # type: ignore[assignment]
    RedisError = Exception  # type: ignore[assignment,misc]

ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
"""What a Redis command raises when Redis is away (or too slow): an outage, never the SDK's error."""


def redacted(url: str) -> str:
    """The URL without its password (never logged)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class RedisLink:
    """One redis-py client, its background tasks and its outage state (see the module)."""

    def __init__(
        self, url: str, *, account: str | None, namespace: str, op_timeout: float, retry_interval: float
    ) -> None:
        self.url = url
        self.account = account
        self.namespace = namespace
        self.op_timeout = op_timeout
        self.retry_interval = retry_interval
        self.redis: Any = None
        self.up = True
        self.background: set[asyncio.Task[Any]] = set()
        self.on_down: list[Callable[[], None]] = []
        """Called at each failed command (acquirers waiting on Redis switch to local leases)."""
        self.stats: dict[str, int] = {"fallback_leases": 0, "redis_errors": 0, "remote_terminals": 0}

    def key(self, name: str) -> str:
        return f"{self.namespace}:{self.account or 'default'}:{name}"

    @property
    def connected(self) -> bool:
        """Open and not known to be away: worth sending a command."""
        return self.redis is not None and self.up

    async def open(self) -> None:
        self.redis = aioredis.Redis.from_url(
            self.url, socket_timeout=self.op_timeout, socket_connect_timeout=self.op_timeout
        )
        self.up = True
        try:
            await asyncio.wait_for(self.redis.ping(), self.op_timeout)
        except ERRORS as exc:
            self.fail(exc)

    async def close(self) -> None:
        redis, self.redis = self.redis, None
        if redis is not None:
            with contextlib.suppress(*ERRORS):
                await redis.aclose()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background (cancelled by the coordination's `aclose`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def fail(self, exc: BaseException) -> None:
        self.stats["redis_errors"] += 1
        if self.up:
            self.up = False
            logger.warning(
                "Redis at %s is unavailable (%s): falling back to local coordination until it is back",
                redacted(self.url),
                type(exc).__name__,
            )
        for callback in self.on_down:
            callback()

    def recovered(self) -> None:
        if not self.up:
            self.up = True
            logger.warning("Redis at %s is back: coordination is shared again", redacted(self.url))

    async def call(self, op: Callable[[Any], Any], default: Any = None) -> Any:
        """One Redis command; on failure: `default`, and the outage is noted."""
        if not self.up or self.redis is None:
            return default
        try:
            return await asyncio.wait_for(op(self.redis), self.op_timeout)
        except ERRORS as exc:
            self.fail(exc)
            return default

    async def listen(
        self,
        channels: dict[str, Callable[[Any], None]],
        on_back: Callable[[], Awaitable[None]],
        on_subscribed: Callable[[], None],
    ) -> None:
        """Feed each message to its channel's handler, forever; reconnect after an outage.

        `on_back` runs when Redis is back after an outage, `on_subscribed` after every (re)subscription.
        """
        while True:
            pubsub = None
            try:
                if not self.up:
                    await asyncio.wait_for(self.redis.ping(), self.op_timeout)
                pubsub = self.redis.pubsub()
                await asyncio.wait_for(pubsub.subscribe(*channels), self.op_timeout)
                if not self.up:
                    self.recovered()
                    await on_back()
                on_subscribed()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        channel = message["channel"]
                        name = channel.decode() if isinstance(channel, bytes) else str(channel)
                        handler = channels.get(name)
                        if handler is not None:
                            handler(message["data"])
            except ERRORS as exc:
                self.fail(exc)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*ERRORS):
                        await pubsub.aclose()
            await asyncio.sleep(self.retry_interval)
