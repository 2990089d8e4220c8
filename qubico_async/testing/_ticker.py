"""The ticker: moves watched tasks along the emulator clock when nobody is polling them.

Statuses advance lazily, when a request looks at a task. A task with a webhook must end (and so be
delivered) without anyone asking, so the emulator watches such tasks: a background loop refreshes
them as their deadlines pass, sleeping in real time until the next deadline on the emulator clock.
`wake()` (called by `Emulator.advance()` and when a task is watched) makes it look again at once.
A watched task waiting for a slot has no deadline of its own: the ticker also wakes at the next
deadline of a slot holder, and when a task ends while others wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Final

import anyio

from ._processing import TaskRunner
from ._state import Clock, StoredTask

__all__ = ["Ticker"]

logger = logging.getLogger("qubico_async.testing")

_MIN_SLEEP: Final = 0.001
"""Floor of a sleep, so a deadline that cannot be met never spins the loop."""
_MAX_SLEEP: Final = 60.0


class Ticker:
    """Refreshes watched tasks when their deadlines pass; see the module docstring."""

    def __init__(self, *, runner: TaskRunner, clock: Clock) -> None:
        self._runner = runner
        self._clock = clock
        self._watched: dict[str, StoredTask] = {}
        self._wake: anyio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def watched(self) -> int:
        """How many non-terminal tasks are being watched."""
        return sum(1 for t in self._watched.values() if not t.is_terminal)

    def start(self) -> None:
        """Start the loop (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watched.clear()

    def watch(self, task: StoredTask) -> None:
        if not task.is_terminal:
            self._watched[task.task_id] = task
            self.wake()

    def wake(self) -> None:
        """Look at the watched tasks again now (the clock moved, or a task was added)."""
        if self._wake is not None:
            self._wake.set()

    def tick(self) -> float | None:
        """Refresh every watched task; the clock reading of the next deadline, if any."""
        next_due: float | None = None
        for task in list(self._watched.values()):
            if not task.is_terminal and not self._runner.is_running(task.task_id):
                self._runner.refresh(task)
            if task.is_terminal:
                del self._watched[task.task_id]
                continue
            if self._runner.is_running(task.task_id):
                continue  # the processor's job ends it; no deadline to wait for
            due = task.started_at if task.status == "pending" else task.due_at
            next_due = due if next_due is None else min(next_due, due)
        if self._watched:  # a watched task waiting for a slot starts when a holder ends
            holder_due = self._runner.next_deadline()
            if holder_due is not None:
                next_due = holder_due if next_due is None else min(next_due, holder_due)
        return next_due

    async def _loop(self) -> None:
        while True:
            self._wake = anyio.Event()  # before tick(): a wake() during tick() is not lost
            try:
                next_due = self.tick()
            except Exception:  # never let one bad task stop the ticker
                logger.exception("emulator: ticker failed to refresh tasks")
                next_due = None
            delay = math.inf if next_due is None else next_due - self._clock.now()
            delay = min(max(delay, _MIN_SLEEP), _MAX_SLEEP)
            with anyio.move_on_after(delay):
                await self._wake.wait()
