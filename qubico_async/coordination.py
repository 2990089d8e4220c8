"""Coordination between the processes (workers, replicas) that share one Qubico account.

The SDK's pieces call only the `Coordination` protocol below, never Redis:

- `acquire(limit)`: one account-wide slot for a task in flight (the client takes it before the
  paid POST and gives it back when it sees the task terminal);
- `shared_pause()` / `pause_for(seconds)`: a 429's `Retry-After` seen by one process pauses the
  requests of all of them;
- `upload_cache`: content hash -> uploaded URL, for every process;
- `attach(router)`, `publish_terminal(task)`, `watch(task_id)`: a terminal state seen by one
  process (webhook or poll) wakes the waiters in all of them.

`LocalCoordination` (the default) is today's behaviour: nothing is shared, no limit is added.
`RedisCoordination(url)` (`pip install "qubico_async[redis]"`) shares all four through Redis::

    async with QubicoClient(coordination=RedisCoordination("redis://localhost:6379/0")) as client:
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .models import Task

if TYPE_CHECKING:
    from ._redis_coordination import RedisCoordination

__all__ = ["Coordination", "Lease", "LocalCoordination", "RedisCoordination", "SharedUploads"]


class Lease(Protocol):
    """One account-wide slot. `release()` is idempotent and never raises (a lost lease expires)."""

    def release(self) -> None: ...


class SharedUploads(Protocol):
    """Content hash -> uploaded URL shared by processes (the local `UploadCache` stays in front)."""

    async def get(self, digest: str) -> tuple[str, float] | None:
        """The URL and how many seconds it may still be reused, or None."""
        ...

    async def put(self, digest: str, url: str, ttl: float) -> None: ...

    async def claim(self, digest: str, ttl: float) -> bool:
        """True if this process should upload `digest` now (no other one is uploading it)."""
        ...


@runtime_checkable
class Coordination(Protocol):
    """What the SDK asks of a coordination backend. Every method fails soft: a backend that
    cannot reach its store falls back to local behaviour and never raises into the SDK."""

    upload_cache: SharedUploads | None

    def bind(self, api_key: str | None) -> None:
        """The client's API key names the shared state (a backend stores only a hash of it)."""

    async def start(self) -> None:
        """Called by each client entering `async with` (a backend shared by clients counts them)."""

    async def aclose(self) -> None:
        """Called by each client closing; the last one stops the backend's background work."""

    async def acquire(self, limit: int) -> Lease:
        """Wait for one of `limit` account-wide slots (the limit is the account's)."""
        ...

    def shared_pause(self) -> float:
        """`time.monotonic()` until which every process pauses its requests (0 for none)."""
        ...

    def pause_for(self, seconds: float) -> None:
        """This process got a 429 with `Retry-After: seconds`: pause the others too."""

    def attach(self, on_terminal: Callable[[Task], None]) -> None:
        """Feed terminal states seen by other processes to `on_terminal` (a hub's `resolve`)."""

    def publish_terminal(self, task: Task) -> None:
        """This process saw `task` terminal: tell the others (the first terminal state wins)."""

    def watch(self, task_id: str) -> None:
        """A waiter subscribed: if another process already stored the terminal state, deliver it."""


class _NoLease:
    __slots__ = ()

    def release(self) -> None:
        return None


_NO_LEASE = _NoLease()


class LocalCoordination:
    """Nothing shared: today's behaviour (per-process hub, batch semaphore, 429 pause, upload cache)."""

    upload_cache: SharedUploads | None = None

    def bind(self, api_key: str | None) -> None:
        return None

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def acquire(self, limit: int) -> Lease:
        return _NO_LEASE

    def shared_pause(self) -> float:
        return 0.0

    def pause_for(self, seconds: float) -> None:
        return None

    def attach(self, on_terminal: Callable[[Task], None]) -> None:
        return None

    def publish_terminal(self, task: Task) -> None:
        return None

    def watch(self, task_id: str) -> None:
        return None

    def __repr__(self) -> str:
        return "<LocalCoordination>"


def __getattr__(name: str) -> Any:
    if name == "RedisCoordination":  # imported lazily: redis-py is an optional extra
        from ._redis_coordination import RedisCoordination

        return RedisCoordination
    raise AttributeError(name)
