"""`RedisCoordination`: the `Coordination` protocol over Redis (redis-py's asyncio client).

Keys live under `<namespace>:<account>:` (the account is a hash of the API key unless given):

- `leases` (sorted set: lease id -> expiry in Redis server milliseconds): the account-wide
  semaphore. Taken and counted in one Lua script that first drops expired leases, so a
  crashed process frees its slots within `lease_ttl`. Held leases are renewed every
  `lease_ttl / 3`. `<prefix>released` (pub/sub) wakes waiting acquirers.
- `task:<id>` (string, `result_ttl`): the first terminal state, `SET NX`, then published on
  `<prefix>terminal`; a waiter that subscribes later finds it with one GET.
- `pause` (string with a TTL) and `<prefix>pause`: the shared 429 pause.
- `upload:<sha256>` (string: `{url, expires}`) and `uploading:<sha256>` (a short claim).

Redis going away never raises into the SDK: each call that fails logs one warning per outage
and falls back (local semaphore, no fan-out, local pause); a background loop pings every
`retry_interval` seconds and picks Redis up again. Asyncio only (like aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from cattrs.preconf.json import make_converter

from .coordination import Lease
from .models import Task

__all__ = ["RedisCoordination"]

logger = logging.getLogger("qubico_async")

try:  # the `redis` extra
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - exercised only without the extra
    aioredis = None  # type: ignore[assignment]
    RedisError = Exception  # type: ignore[assignment,misc]

_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
_tasks_json = make_converter()

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


def _redacted(url: str) -> str:
    """The URL without its password (never logged)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _storable(task: Task) -> Task:
    """The task without its inputs (inline media) and without the webhook secret."""
    webhook = task.config.webhook
    config = attrs.evolve(task.config, webhook=attrs.evolve(webhook, secret="") if webhook else None)
    return attrs.evolve(task, config=config, input={})


def dump_task(task: Task) -> str:
    return json.dumps(_tasks_json.unstructure(_storable(task)))


def load_task(raw: str | bytes) -> Task:
    return _tasks_json.structure(json.loads(raw), Task)


class _RedisLease:
    __slots__ = ("_coord", "_done", "id")

    def __init__(self, coord: RedisCoordination, lease_id: str) -> None:
        self._coord = coord
        self.id = lease_id
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._coord._release(self.id)


class _LocalLease:
    __slots__ = ("_done", "_sem")

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self._sem = sem
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._sem.release()


class _SharedUploads:
    """`SharedUploads` over Redis: `upload:<digest>` -> `{url, expires}` (unix seconds)."""

    def __init__(self, coord: RedisCoordination) -> None:
        self._coord = coord

    async def get(self, digest: str) -> tuple[str, float] | None:
        raw = await self._coord._call(lambda r: r.get(self._coord._key("upload:" + digest)))
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            url, expires = str(doc["url"]), float(doc["expires"])
        except (ValueError, KeyError, TypeError):
            return None
        remaining = expires - time.time()
        return (url, remaining) if remaining > 0 else None

    async def put(self, digest: str, url: str, ttl: float) -> None:
        value = json.dumps({"url": url, "expires": time.time() + ttl})
        key = self._coord._key("upload:" + digest)
        await self._coord._call(lambda r: r.set(key, value, px=max(1, int(ttl * 1000))))

    async def claim(self, digest: str, ttl: float) -> bool:
        key = self._coord._key("uploading:" + digest)
        got = await self._coord._call(lambda r: r.set(key, "1", nx=True, px=max(1, int(ttl * 1000))), default=True)
        return bool(got)


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
        self._url = url
        self._account = account
        self.limit = limit
        self._namespace = namespace
        self.lease_ttl = lease_ttl
        self.result_ttl = result_ttl
        self.retry_interval = retry_interval
        self.acquire_poll = acquire_poll
        self._op_timeout = op_timeout
        self.upload_cache = _SharedUploads(self)
        self._redis: Any = None
        self._users = 0
        self._up = True
        self._background: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._on_terminal: list[Callable[[Task], None]] = []
        self._known: OrderedDict[str, None] = OrderedDict()  # terminal task ids already shared
        self._held: set[str] = set()
        self._unpublished: OrderedDict[str, Task] = OrderedDict()  # seen terminal while Redis was away
        self._watched: OrderedDict[str, None] = OrderedDict()  # waited on, not yet known terminal
        self._waiters: set[asyncio.Future[None]] = set()
        self._local: asyncio.Semaphore | None = None
        self._local_limit = 0
        self._pause_until = 0.0  # monotonic
        self.stats: dict[str, int] = {"fallback_leases": 0, "redis_errors": 0, "remote_terminals": 0}

    def __repr__(self) -> str:
        state = "up" if self._up else "down"
        return f"<RedisCoordination {_redacted(self._url)} account={self._account!r} {state}>"

    @property
    def available(self) -> bool:
        """False while Redis is unreachable (the SDK then runs on local behaviour)."""
        return self._up

    def bind(self, api_key: str | None) -> None:
        """Name the shared state after the client's key (a hash, never the key), unless `account=` was given."""
        if self._account is None:
            self._account = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]

    def _key(self, name: str) -> str:
        return f"{self._namespace}:{self._account or 'default'}:{name}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._users += 1
        if self._users > 1:
            return
        self._redis = aioredis.Redis.from_url(
            self._url, socket_timeout=self._op_timeout, socket_connect_timeout=self._op_timeout
        )
        self._up = True
        try:
            await asyncio.wait_for(self._redis.ping(), self._op_timeout)
            await self._load_pause()
        except _ERRORS as exc:
            self._fail(exc)
        self._listener = asyncio.create_task(self._listen())
        self._renewer = asyncio.create_task(self._renew_loop())

    async def aclose(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        tasks = [*self._background, *(t for t in (self._listener, self._renewer) if t is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *_ERRORS):
                await task
        self._background.clear()
        self._listener = self._renewer = None
        redis, self._redis = self._redis, None
        if redis is not None:
            with contextlib.suppress(*_ERRORS):
                await redis.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fail(self, exc: BaseException) -> None:
        self.stats["redis_errors"] += 1
        if self._up:
            self._up = False
            logger.warning(
                "Redis at %s is unavailable (%s): falling back to local coordination until it is back",
                _redacted(self._url),
                type(exc).__name__,
            )
        for waiter in self._waiters:  # acquirers switch to the local semaphore
            if not waiter.done():
                waiter.set_result(None)

    def _recovered(self) -> None:
        if not self._up:
            self._up = True
            logger.warning("Redis at %s is back: coordination is shared again", _redacted(self._url))

    async def _call(self, op: Callable[[Any], Any], default: Any = None) -> Any:
        """One Redis command; on failure: `default`, and the outage is noted."""
        if not self._up or self._redis is None:
            return default
        try:
            return await asyncio.wait_for(op(self._redis), self._op_timeout)
        except _ERRORS as exc:
            self._fail(exc)
            return default

    # -- pub/sub listener (also the reconnect loop) ---------------------------------------------

    async def _listen(self) -> None:
        channels: dict[str, Callable[[Any], None]] = {
            self._key("terminal"): self._on_terminal_message,
            self._key("released"): self._on_released,
            self._key("pause"): self._on_pause,
        }
        while True:
            pubsub = None
            try:
                if not self._up:
                    await asyncio.wait_for(self._redis.ping(), self._op_timeout)
                pubsub = self._redis.pubsub()
                await asyncio.wait_for(pubsub.subscribe(*channels), self._op_timeout)
                if not self._up:
                    self._recovered()
                    await self._load_pause()
                    self._catch_up()
                self._wake_all()  # re-check leases freed while we were away
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        channel = message["channel"]
                        name = channel.decode() if isinstance(channel, bytes) else str(channel)
                        handler = channels.get(name)
                        if handler is not None:
                            handler(message["data"])
            except _ERRORS as exc:
                self._fail(exc)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*_ERRORS):
                        await pubsub.aclose()
            await asyncio.sleep(self.retry_interval)

    def _catch_up(self) -> None:
        """After an outage: share what this process saw meanwhile, and look up what it waits on."""
        unpublished, self._unpublished = self._unpublished, OrderedDict()
        for task in unpublished.values():
            self._spawn(self._publish(task))
        for task_id in list(self._watched):
            self._spawn(self._lookup(task_id))

    def _on_terminal_message(self, data: Any, *, force: bool = False) -> None:
        try:
            task = load_task(data)
        except Exception:  # a foreign or corrupt message is not ours to crash on
            logger.warning("ignored an unreadable terminal message on Redis")
            return
        if not task.status.is_terminal or (self._remember(task.task_id) and not force):
            return  # our own message, or a task this process already knows terminal
        self.stats["remote_terminals"] += 1
        for callback in list(self._on_terminal):
            callback(task)

    def _on_released(self, _: Any) -> None:
        self._wake_all()

    def _on_pause(self, data: Any) -> None:
        with contextlib.suppress(ValueError, TypeError):
            self._set_pause(float(data))

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- webhooks fan-out -----------------------------------------------------------------------

    def attach(self, on_terminal: Callable[[Task], None]) -> None:
        if on_terminal not in self._on_terminal:
            self._on_terminal.append(on_terminal)

    def _remember(self, task_id: str) -> bool:
        """True if `task_id` was already known terminal here; records it either way."""
        if task_id in self._known:
            self._known.move_to_end(task_id)
            return True
        self._watched.pop(task_id, None)
        self._known[task_id] = None
        if len(self._known) > 100_000:
            self._known.popitem(last=False)
        return False

    def publish_terminal(self, task: Task) -> None:
        if not task.status.is_terminal or self._remember(task.task_id) or self._redis is None:
            return
        self._spawn(self._publish(task))

    async def _publish(self, task: Task) -> None:
        key = self._key("task:" + task.task_id)
        value = dump_task(task)
        stored = await self._call(lambda r: r.set(key, value, nx=True, px=int(self.result_ttl * 1000)))
        if stored is None and not self._up:  # Redis is away: shared when it is back
            self._unpublished[task.task_id] = task
            if len(self._unpublished) > 100_000:
                self._unpublished.popitem(last=False)
            return
        if stored:
            await self._call(lambda r: r.publish(self._key("terminal"), value))
        elif stored is not None:  # another process stored a terminal state first: that one wins
            raw = await self._call(lambda r: r.get(key))
            if raw is not None and raw != value.encode():
                self._on_terminal_message(raw, force=True)

    def watch(self, task_id: str) -> None:
        if task_id in self._known:
            return
        self._watched[task_id] = None
        self._watched.move_to_end(task_id)
        if len(self._watched) > 100_000:
            self._watched.popitem(last=False)
        if self._redis is not None and self._up:
            self._spawn(self._lookup(task_id))

    async def _lookup(self, task_id: str) -> None:
        raw = await self._call(lambda r: r.get(self._key("task:" + task_id)))
        if raw is not None:
            self._on_terminal_message(raw)

    async def latest(self, task_id: str) -> Task | None:
        """The terminal state stored by any process, or None (unknown, or Redis unavailable)."""
        raw = await self._call(lambda r: r.get(self._key("task:" + task_id)))
        return load_task(raw) if raw is not None else None

    # -- the account-wide semaphore -------------------------------------------------------------

    async def acquire(self, limit: int) -> Lease:
        limit = self.limit or limit
        lease_id = uuid.uuid4().hex
        ttl_ms = str(int(self.lease_ttl * 1000))
        while True:
            if not self._up or self._redis is None:
                return await self._acquire_local(limit)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)  # before the script: a release in between is not missed
            try:
                got = await self._call(lambda r: r.eval(_ACQUIRE, 1, self._key("leases"), str(limit), ttl_ms, lease_id))
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
        self.stats["fallback_leases"] += 1
        return _LocalLease(sem)

    def _release(self, lease_id: str) -> None:
        self._held.discard(lease_id)
        if self._redis is not None and self._up:
            self._spawn(self._release_remote(lease_id))

    async def _release_remote(self, lease_id: str) -> None:
        removed = await self._call(lambda r: r.zrem(self._key("leases"), lease_id))
        if removed:
            await self._call(lambda r: r.publish(self._key("released"), "1"))

    async def in_flight(self) -> int:
        """How many unexpired leases the account holds now, all processes together."""

        async def count(r: Any) -> int:
            now_s, now_us = await r.time()
            return int(await r.zcount(self._key("leases"), now_s * 1000 + now_us // 1000, "+inf"))

        return int(await self._call(count, default=0))

    async def _renew_loop(self) -> None:
        ttl_ms = str(int(self.lease_ttl * 1000))
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            held = list(self._held)
            if held and self._up:
                await self._renew(ttl_ms, held)

    async def _renew(self, ttl_ms: str, held: list[str]) -> None:
        await self._call(lambda r: r.eval(_RENEW, 1, self._key("leases"), ttl_ms, *held))

    # -- the shared 429 pause -------------------------------------------------------------------

    def shared_pause(self) -> float:
        return self._pause_until

    def _set_pause(self, until_unix: float) -> None:
        remaining = min(until_unix - time.time(), 300.0)
        if remaining > 0:
            self._pause_until = max(self._pause_until, time.monotonic() + remaining)

    def pause_for(self, seconds: float) -> None:
        if seconds <= 0:
            return
        until = time.time() + min(seconds, 300.0)
        self._set_pause(until)
        if self._redis is not None and self._up:
            self._spawn(self._publish_pause(until, seconds))

    async def _publish_pause(self, until: float, seconds: float) -> None:
        value = repr(until)
        await self._call(lambda r: r.set(self._key("pause"), value, px=max(1, int(seconds * 1000))))
        await self._call(lambda r: r.publish(self._key("pause"), value))

    async def _load_pause(self) -> None:
        raw = await self._call(lambda r: r.get(self._key("pause")))
        if raw is not None:
            with contextlib.suppress(ValueError, TypeError):
                self._set_pause(float(raw))
