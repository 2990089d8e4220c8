"""Routing task updates to code waiting on a task (the webhook-or-polling race is in `waiting.py`).

`TaskRouter` is the transport-agnostic half of `webhooks.WebhookHub`: it knows tasks, not HTTP.
Every update costs one dict lookup by task id, however many waiters exist. Waiters share one
`anyio.Event` per task. Use it from one event loop; it is not thread-safe.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from .models import Task

if TYPE_CHECKING:
    from .coordination import Coordination

__all__ = ["TaskRouter", "TaskSubscription"]

logger = logging.getLogger("qubico_async")


class _Slot:
    """One task's waiters: how many subscriptions, the terminal `Task` once known, one shared event."""

    __slots__ = ("count", "event", "result")

    def __init__(self, result: Task | None) -> None:
        self.count = 0
        self.result = result
        self.event: anyio.Event | None = None  # created lazily, inside the event loop

    def resolve(self, task: Task) -> None:
        if self.result is None:
            self.result = task
            if self.event is not None:
                self.event.set()


class TaskRouter:
    """Latest known state per task (an LRU of `remember` tasks) and the subscriptions waiting on them."""

    def __init__(self, *, remember: int = 10_000) -> None:
        if remember < 1:
            raise ValueError(f"remember must be >= 1, got {remember}")
        self._remember = remember
        self._latest: OrderedDict[str, Task] = OrderedDict()
        self._slots: dict[str, _Slot] = {}
        self._active = 0
        # coordination hook (issue 14): terminal states shared with other processes, and callbacks
        self._coordination: Coordination | None = None
        self._terminal_callbacks: list[Callable[[Task], None]] = []

    def coordinate(self, coordination: Coordination) -> None:
        """Share terminal states with the other processes of `coordination` (issue 14)."""
        self._coordination = coordination
        coordination.attach(self.resolve)

    def on_terminal(self, callback: Callable[[Task], None]) -> None:
        """Call `callback(task)` once per task, when its first terminal state is recorded."""
        self._terminal_callbacks.append(callback)

    @property
    def waiting(self) -> int:
        """The number of active subscriptions (0 once every `with hub.subscribe(...)` has exited)."""
        return self._active

    def latest(self, task_id: str) -> Task | None:
        """The latest state seen for `task_id`; once terminal, the first terminal state (what waiters got)."""
        return self._latest.get(task_id)

    def resolve(self, task: Task) -> None:
        """Record `task` (from a webhook or from polling); if terminal, wake everyone waiting on it."""
        task_id = task.task_id
        previous = self._latest.get(task_id)
        # Deliveries arrive out of order and retried: the first terminal state is final, so that
        # `latest()` always agrees with what the waiters were woken with.
        if previous is None or not previous.status.is_terminal:
            self._latest[task_id] = task
        self._latest.move_to_end(task_id)
        if len(self._latest) > self._remember:
            self._latest.popitem(last=False)
        if task.status.is_terminal:
            slot = self._slots.get(task_id)
            if slot is not None:
                slot.resolve(task)
            if previous is None or not previous.status.is_terminal:  # coordination hook (issue 14)
                if self._coordination is not None:
                    self._coordination.publish_terminal(task)
                for callback in self._terminal_callbacks:
                    callback(task)

    def subscribe(self, task_id: str) -> TaskSubscription:
        """Register interest in a task: `with hub.subscribe(id) as sub: task = await sub.terminal()`.

        A task already seen terminal resolves at once. Leaving the `with` (also by cancellation)
        unregisters. Any number of subscriptions per task.
        """
        return TaskSubscription(self, task_id)

    def _enter(self, task_id: str) -> _Slot:
        slot = self._slots.get(task_id)
        if slot is None:
            known = self._latest.get(task_id)
            slot = _Slot(known if known is not None and known.status.is_terminal else None)
            self._slots[task_id] = slot
            if slot.result is None and self._coordination is not None:  # coordination hook (issue 14)
                self._coordination.watch(task_id)
        slot.count += 1
        self._active += 1
        return slot

    def _exit(self, task_id: str, slot: _Slot) -> None:
        slot.count -= 1
        self._active -= 1
        if slot.count == 0 and self._slots.get(task_id) is slot:
            del self._slots[task_id]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} waiting={self._active} tasks_known={len(self._latest)}>"


class TaskSubscription:
    """A registered interest in one task. Use as a context manager; `await terminal()` inside it."""

    __slots__ = ("_router", "_slot", "task_id")

    def __init__(self, router: TaskRouter, task_id: str) -> None:
        self._router = router
        self.task_id = task_id
        self._slot: _Slot | None = None

    def __enter__(self) -> TaskSubscription:
        if self._slot is not None:
            raise RuntimeError("this subscription is already active")
        self._slot = self._router._enter(self.task_id)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._slot is not None:
            self._router._exit(self.task_id, self._slot)
            self._slot = None

    @property
    def result(self) -> Task | None:
        """The terminal `Task` if it has arrived, else None (never blocks)."""
        return self._slot.result if self._slot is not None else None

    async def terminal(self) -> Task:
        """Wait for the task's terminal state (from a webhook or from `resolve()`) and return it."""
        slot = self._slot
        if slot is None:
            raise RuntimeError("use `with hub.subscribe(task_id) as sub:` before awaiting sub.terminal()")
        if slot.result is None:
            if slot.event is None:
                slot.event = anyio.Event()
            await slot.event.wait()
        assert slot.result is not None
        return slot.result

    def __repr__(self) -> str:
        state = "inactive" if self._slot is None else "resolved" if self._slot.result is not None else "waiting"
        return f"<TaskSubscription {self.task_id} {state}>"
