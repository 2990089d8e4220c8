"""Status progression and the processing of due tasks.

A task is `pending` for its `pending_seconds`, then `processing` for its `processing_seconds` (both
on the emulator clock), then due. The first time a due task is looked at, its inputs are resolved and
the processor runs once: inline for the default identity processor, otherwise in a worker thread
(bounded by a CapacityLimiter) while the task stays `processing` and requests keep being answered.

Slots (the account's concurrency limit): a task holds one from create until it is completed or
failed (`in_flight`, `stats.processing`). In queue mode a task created with every slot held waits
(`pending`, no start time) and gets the next freed slot in creation order, starting at the clock
reading that slot freed; `settle()` works this out lazily, in deadline order, when anyone looks.

Inputs are resolved to bytes by `_inputs.InputResolver` (loopback URLs only).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
from collections.abc import Callable

import anyio
import anyio.to_thread

from ._inputs import InputFailure, InputResolver
from ._job import Processor, identity
from ._mediacheck import guess_type
from ._state import Clock, FileStore, Stats, StoredTask, TaskStore

__all__ = ["TaskRunner"]


class TaskRunner:
    """Moves tasks along the clock and runs the processor for due tasks (once per task)."""

    def __init__(
        self,
        *,
        store: TaskStore,
        files: FileStore,
        clock: Clock,
        processor: Processor | None,
        max_workers: int,
        is_own_url: Callable[[str], str | None],
        stats: Stats | None = None,
        queue_slots: int | None = None,
    ) -> None:
        """`queue_slots` set: at most that many tasks hold a slot; the others wait (see `track`)."""
        self._store = store
        self._files = files
        self._clock = clock
        if processor is identity:
            processor = None  # the fast path: no thread for a processor that only copies
        self._processor = processor
        self._limiter = anyio.CapacityLimiter(max_workers) if processor is not None else None
        self._inputs = InputResolver(files=files, is_own_url=is_own_url)
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._stats = stats if stats is not None else Stats()
        self._queue_slots = queue_slots
        self._holders: set[str] = set()
        """Tasks holding a slot: from create (or the end of their wait) until completed/failed."""
        self._deadlines: list[tuple[float, int, StoredTask]] = []
        """Heap of (due_at, seq, task) of the holders, so a create looks only at tasks now due."""
        self._seq = itertools.count()
        self._waiting: collections.deque[StoredTask] = collections.deque()
        """Tasks waiting for a slot, in creation order (queue mode)."""
        self._freed: list[float] = []
        """Heap of the clock readings at which slots freed and were not handed on (queue mode)."""

    @property
    def running(self) -> int:
        return len(self._jobs)

    @property
    def processor(self) -> Processor | None:
        """The plugged-in processor; None for the inline identity fast path."""
        return self._processor

    def is_running(self, task_id: str) -> bool:
        """True while the processor's job for this task is in flight."""
        return task_id in self._jobs

    @property
    def in_flight(self) -> int:
        """Tasks holding a slot now (as of the last `settle`)."""
        return len(self._holders)

    @property
    def queued(self) -> int:
        """Tasks waiting for a slot."""
        return len(self._waiting)

    def has_free_slot(self) -> bool:
        """Queue mode: True when a task created now gets a slot at once (none is waiting before it)."""
        return self._queue_slots is None or (not self._waiting and len(self._holders) < self._queue_slots)

    def track(self, task: StoredTask) -> None:
        """Take a task just stored: it waits (when `task.waiting`) or holds a slot until it ends."""
        if task.is_terminal:
            return
        if task.waiting:
            self._waiting.append(task)
            self._stats.queued = len(self._waiting)
        else:
            if self._queue_slots is not None and len(self._freed) + len(self._holders) >= self._queue_slots:
                heapq.heappop(self._freed)  # this slot's earlier holder has ended: it is taken again
            self._hold(task)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a slot holder while tasks wait (their start depends on it)."""
        if self._waiting and self._deadlines:
            return self._deadlines[0][0]
        return None

    def settle(self) -> None:
        """Bring the slot holders that are due up to date with the clock, in deadline order, and
        hand each freed slot to the next waiting task, at the clock reading the slot freed."""
        now = self._clock.now()
        stalled: list[tuple[float, int, StoredTask]] = []
        while True:
            while self._deadlines and self._deadlines[0][0] <= now:
                entry = heapq.heappop(self._deadlines)
                task = entry[2]
                self._advance(task)
                if not task.is_terminal and not self.is_running(task.task_id):
                    stalled.append(entry)  # its job could not start here: look again next time
            if not (self._waiting and self._freed):
                break
            freed_at = heapq.heappop(self._freed)
            task = self._waiting.popleft()
            self._stats.queued = len(self._waiting)
            task.waiting, task.slot_at = False, max(freed_at, task.created_at)
            self._hold(task)
        for entry in stalled:
            heapq.heappush(self._deadlines, entry)

    def _hold(self, task: StoredTask) -> None:
        self._holders.add(task.task_id)
        self._stats.processing = len(self._holders)
        self._stats.max_processing = max(self._stats.max_processing, len(self._holders))
        heapq.heappush(self._deadlines, (task.due_at, next(self._seq), task))

    def _release(self, task: StoredTask) -> None:
        """A task ended: its slot (if it held one) is free from its `ended_at`."""
        if task.task_id not in self._holders:
            return
        self._holders.discard(task.task_id)
        self._stats.processing = len(self._holders)
        if self._queue_slots is not None:
            ended = task.ended_at if task.ended_at is not None else self._clock.now()
            heapq.heappush(self._freed, ended if math.isfinite(ended) else self._clock.now())

    def refresh_all(self) -> None:
        self.settle()
        for task in self._store:
            self._advance(task)

    def refresh(self, task: StoredTask) -> None:
        """Bring `task.status` up to date with the clock; start processing if it is due."""
        self.settle()
        self._advance(task)

    def _advance(self, task: StoredTask) -> None:
        if task.is_terminal or task.task_id in self._jobs:
            return
        now = self._clock.now()
        if now < task.started_at:
            return
        self._store.transition(task, "processing")
        if now < task.due_at:
            return
        if task.forced_failure is not None:
            self._fail(task, task.forced_failure, ended_at=task.due_at)
            return
        try:
            resolved = self._inputs.resolve(task, fetched={})
        except InputFailure as failure:
            self._fail(task, failure.message, ended_at=task.due_at, raw=failure.raw)
            return
        if resolved is None or self._processor is not None:  # a fetch or a processor thread: a job
            if self._closed:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # looked at from outside the event loop: start on the next look
                return
            self._jobs[task.task_id] = loop.create_task(self._run(task, self._processor))
        else:  # instant: it ended when it was due, not when a GET happened to look
            self._complete(task, identity(resolved), ended_at=task.due_at)

    async def drain(self) -> None:
        """Wait until every running processor job has finished."""
        while self._jobs:
            await asyncio.wait(list(self._jobs.values()))

    async def aclose(self) -> None:
        self._closed = True
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.wait(jobs)
        self._jobs.clear()
        await self._inputs.aclose()

    async def _run(self, task: StoredTask, processor: Processor | None) -> None:
        """Fetch the loopback URL inputs not served here, then run the processor (or identity)."""
        try:
            try:
                fetched = await self._inputs.fetch_foreign(task)
                job = self._inputs.resolve(task, fetched)
                assert job is not None
            except InputFailure as failure:
                self._fail(task, failure.message, raw=failure.raw)
                return
            if processor is None:
                self._complete(task, identity(job))
                return
            try:
                data = await anyio.to_thread.run_sync(processor, job, limiter=self._limiter, abandon_on_cancel=True)
            except Exception as exc:
                self._fail(task, str(exc) or type(exc).__name__)
            else:
                self._complete(task, data)
        finally:
            self._jobs.pop(task.task_id, None)

    def _complete(self, task: StoredTask, data: bytes, *, ended_at: float | None = None) -> None:
        if task.is_video:
            ext, content_type = "mp4", "video/mp4"
        else:
            ext, content_type = guess_type(data)
        name = f"{task.task_id}.{ext}"
        self._files.put(f"/results/{name}", data, content_type)
        task.result, task.result_name = data, name
        task.ended_at = ended_at if ended_at is not None else max(task.due_at, self._clock.now())
        self._store.transition(task, "completed")
        self._release(task)

    def _fail(self, task: StoredTask, message: str, *, ended_at: float | None = None, raw: str | None = None) -> None:
        task.error_message = message
        task.error_raw = raw
        task.ended_at = ended_at if ended_at is not None else max(task.due_at, self._clock.now())
        self._store.transition(task, "failed")
        self._release(task)
