"""The account-wide semaphore over Redis: one lease per task in flight, in every process together.

`leases` (sorted set: lease id -> expiry in Redis server milliseconds) is taken and counted in
one Lua script that first drops expired leases, so a crashed process frees its slots within
`lease_ttl`. Held leases are renewed every `lease_ttl / 3`; `<prefix>released` (pub/sub) wakes
waiting acquirers. While Redis is away, leases come from a local semaphore.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any

from ._redis_link import RedisLink

if TYPE_CHECKING:  # `coordination` imports this module lazily: no import back at run time
    from .coordination import Lease

__all__ = ["RedisLeases"]

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
"""
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return renewed
"""


class _RedisLease:
    __slots__ = ("_done", "_leases", "id")

    def __init__(self, leases: RedisLeases, lease_id: str) -> None:
        self._leases = leases
        self.id = lease_id
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._leases.release(self.id)


class _LocalLease:
    __slots__ = ("_done", "_sem")

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self._sem = sem
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._sem.release()


class RedisLeases:
    """Leases from the `leases` sorted set; `limit` (if set) overrides the limit asked for."""

    def __init__(self, link: RedisLink, *, limit: int | None, lease_ttl: float, acquire_poll: float) -> None:
        self._link = link
        self.limit = limit
        self.lease_ttl = lease_ttl
        self.acquire_poll = acquire_poll
        self._held: set[str] = set()
        self._waiters: set[asyncio.Future[None]] = set()
        self._local: asyncio.Semaphore | None = None
        self._local_limit = 0
        link.on_down.append(self._wake_waiting)  # acquirers switch to the local semaphore

    async def acquire(self, limit: int) -> Lease:
        limit = self.limit or limit
        lease_id = uuid.uuid4().hex
        ttl_ms = str(int(self.lease_ttl * 1000))
        while True:
            if not self._link.connected:
                return await self._acquire_local(limit)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)  # before the script: a release in between is not missed
            try:
                got = await self._link.call(
                    lambda r: r.eval(_ACQUIRE, 1, self._link.key("leases"), str(limit), ttl_ms, lease_id)
                )
                if got == 1:
                    self._held.add(lease_id)
                    return _RedisLease(self, lease_id)
                if got is None:
                    continue  # Redis failed: local from now on
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), self.acquire_poll)  # expiries send nothing
            finally:
                self._waiters.discard(waiter)

    async def _acquire_local(self, limit: int) -> Lease:
        if self._local is None or self._local_limit != limit:
            self._local = asyncio.Semaphore(limit)
            self._local_limit = limit
        sem = self._local
        await sem.acquire()
        self._link.stats["fallback_leases"] += 1
        return _LocalLease(sem)

    def release(self, lease_id: str) -> None:
        self._held.discard(lease_id)
        if self._link.connected:
            self._link.spawn(self._release_remote(lease_id))

    async def _release_remote(self, lease_id: str) -> None:
        removed = await self._link.call(lambda r: r.zrem(self._link.key("leases"), lease_id))
        if removed:
            await self._link.call(lambda r: r.publish(self._link.key("released"), "1"))

    async def in_flight(self) -> int:
        """How many unexpired leases the account holds now, all processes together."""

        async def count(r: Any) -> int:
            now_s, now_us = await r.time()
            return int(await r.zcount(self._link.key("leases"), now_s * 1000 + now_us // 1000, "+inf"))

        return int(await self._link.call(count, default=0))

    async def renew_loop(self) -> None:
        """Every `lease_ttl / 3`: push back the expiry of the leases this process holds."""
        ttl_ms = str(int(self.lease_ttl * 1000))
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            held = list(self._held)
            if held and self._link.up:
                await self._renew(ttl_ms, held)

    async def _renew(self, ttl_ms: str, held: list[str]) -> None:
        await self._link.call(lambda r: r.eval(_RENEW, 1, self._link.key("leases"), ttl_ms, *held))

    def wake_all(self) -> None:
        """A lease was released (or may have been, while we were not listening): acquirers try again."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_waiting(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
