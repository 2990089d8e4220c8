"""`RedisCoordination`: the `Coordination` protocol over Redis (redis-py's asyncio client).

Keys live under `<namespace>:<account>:` (the account is a hash of the API key unless given).
Each shared thing has its module, and this one wires them to one connection:

- `_redis_leases`: `leases`, the account-wide semaphore (`<prefix>released` wakes acquirers);
- `_redis_fanout`: `task:<id>` and `<prefix>terminal`, terminal states for every process's waiters;
- `_redis_pause`: `pause` and `<prefix>pause`, the shared 429 pause;
- `_redis_uploads`: `upload:<sha256>` and `uploading:<sha256>`, the shared upload cache;
- `_redis_link`: the connection. Redis going away never raises into the SDK: each call that
  fails logs one warning per outage and falls back (local semaphore, no fan-out, local pause);
  the pub/sub listener pings every `retry_interval` seconds and picks Redis up again.

Asyncio only (like aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._redis_fanout import RedisFanout, dump_task, load_task
from ._redis_leases import RedisLeases
from ._redis_link import ERRORS, RedisLink, aioredis, redacted
from ._redis_pause import RedisPause
from ._redis_uploads import RedisSharedUploads
from .models import Task

if TYPE_CHECKING:  # `coordination` imports this module lazily: no import back at run time
    from .coordination import Lease

__all__ = ["RedisCoordination", "dump_task", "load_task"]


class RedisCoordination:
    """Share the account limit, webhook results, 429 pauses and uploads between processes.

    `url` is a redis-py URL (`redis://host:port/db`). `account` names the shared state (default:
    a hash of the client's API key, so clients with the same key share it). `limit` overrides
    the account's `max_concurrent_task_count`. One instance can serve several clients of the
    same account; it runs while at least one of them is open.
    """

    def __init__(
        self,
        url: str,
        *,
        account: str | None = None,
        limit: int | None = None,
        namespace: str = "qubico",
        lease_ttl: float = 30.0,
        result_ttl: float = 3600.0,
        retry_interval: float = 1.0,
        acquire_poll: float = 0.5,
        op_timeout: float = 2.0,
    ) -> None:
        if aioredis is None:  # pragma: no cover
            raise ImportError('RedisCoordination needs redis-py: pip install "qubico_async[redis]"')
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if lease_ttl <= 0 or result_ttl <= 0 or retry_interval <= 0 or acquire_poll <= 0:
            raise ValueError("lease_ttl, result_ttl, retry_interval and acquire_poll must be positive")
        self._link = RedisLink(
            url, account=account, namespace=namespace, op_timeout=op_timeout, retry_interval=retry_interval
        )
        self._leases = RedisLeases(self._link, limit=limit, lease_ttl=lease_ttl, acquire_poll=acquire_poll)
        self._fanout = RedisFanout(self._link, result_ttl=result_ttl)
        self._pause = RedisPause(self._link)
        self.upload_cache = RedisSharedUploads(self._link)
        self.stats: dict[str, int] = self._link.stats
        self._background: set[asyncio.Task[Any]] = self._link.background  # commands still in flight
        self._users = 0
        self._listener: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "up" if self._link.up else "down"
        return f"<RedisCoordination {redacted(self._link.url)} account={self._link.account!r} {state}>"

    @property
    def available(self) -> bool:
        """False while Redis is unreachable (the SDK then runs on local behaviour)."""
        return self._link.up

    # The settings, kept by the part that uses them (still readable and settable here).

    @property
    def limit(self) -> int | None:
        return self._leases.limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        self._leases.limit = value

    @property
    def lease_ttl(self) -> float:
        return self._leases.lease_ttl

    @lease_ttl.setter
    def lease_ttl(self, value: float) -> None:
        self._leases.lease_ttl = value

    @property
    def acquire_poll(self) -> float:
        return self._leases.acquire_poll

    @acquire_poll.setter
    def acquire_poll(self, value: float) -> None:
        self._leases.acquire_poll = value

    @property
    def result_ttl(self) -> float:
        return self._fanout.result_ttl

    @result_ttl.setter
    def result_ttl(self, value: float) -> None:
        self._fanout.result_ttl = value

    @property
    def retry_interval(self) -> float:
        return self._link.retry_interval

    @retry_interval.setter
    def retry_interval(self, value: float) -> None:
        self._link.retry_interval = value

    def bind(self, api_key: str | None) -> None:
        """Name the shared state after the client's key (a hash, never the key), unless `account=` was given."""
        if self._link.account is None:
            self._link.account = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._users += 1
        if self._users > 1:
            return
        await self._link.open()
        await self._pause.load()
        channels: dict[str, Callable[[Any], None]] = {
            self._link.key("terminal"): self._fanout.on_message,
            self._link.key("released"): lambda _: self._leases.wake_all(),
            self._link.key("pause"): self._pause.on_message,
        }
        self._listener = asyncio.create_task(self._link.listen(channels, self._back, self._leases.wake_all))
        self._renewer = asyncio.create_task(self._leases.renew_loop())

    async def _back(self) -> None:
        """Redis is back after an outage: read the pause, share and look up what happened meanwhile."""
        await self._pause.load()
        self._fanout.catch_up()

    async def aclose(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        tasks = [*self._background, *(t for t in (self._listener, self._renewer) if t is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                await task
        self._background.clear()
        self._listener = self._renewer = None
        await self._link.close()

    # -- the Coordination protocol, answered by the parts -----------------------------------------

    async def acquire(self, limit: int) -> Lease:
        return await self._leases.acquire(limit)

    async def in_flight(self) -> int:
        """How many unexpired leases the account holds now, all processes together."""
        return await self._leases.in_flight()

    def shared_pause(self) -> float:
        return self._pause.until

    def pause_for(self, seconds: float) -> None:
        self._pause.pause_for(seconds)

    def attach(self, on_terminal: Callable[[Task], None]) -> None:
        self._fanout.attach(on_terminal)

    def publish_terminal(self, task: Task) -> None:
        self._fanout.publish_terminal(task)

    def watch(self, task_id: str) -> None:
        self._fanout.watch(task_id)

    async def latest(self, task_id: str) -> Task | None:
        """The terminal state stored by any process, or None (unknown, or Redis unavailable)."""
        return await self._fanout.latest(task_id)
