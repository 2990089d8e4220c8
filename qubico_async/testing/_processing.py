"""Status progression and the processing of due tasks.

A task is `pending` for its `pending_seconds`, then `processing` for its `processing_seconds` (both
on the emulator clock), then due. The first time a due task is looked at, its inputs are resolved and
the processor runs once: inline for the default identity processor, otherwise in a worker thread
(bounded by a CapacityLimiter) while the task stays `processing` and requests keep being answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
from attrs import frozen

from .._mediainfo import probe_image
from ..errors import InvalidInputError
from ._state import Clock, FileStore, StoredTask, TaskStore
from ._validation import ValidationError, check_image, check_video, media_fields

__all__ = ["Processor", "SwapJob", "TaskRunner", "identity"]

_IMAGE_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@frozen
class SwapJob:
    """What a processor gets: the task kind and its resolved input bytes."""

    model: str
    task_type: str
    target: bytes
    """The target image, or the target video for a video task."""
    swap: bytes
    swap_faces_index: tuple[int, ...] = ()
    target_faces_index: tuple[int, ...] = ()

    @property
    def is_video(self) -> bool:
        return self.model == "Qubico/video-toolkit"


Processor = Callable[[SwapJob], bytes]
"""Turns a job into the result file's bytes. Runs in a worker thread; any exception fails the task
with `str(exc)` as the error message."""


def identity(job: SwapJob) -> bytes:
    """The default processor: the result is the target unchanged."""
    return job.target


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
    ) -> None:
        self._store = store
        self._files = files
        self._clock = clock
        if processor is identity:
            processor = None  # the fast path: no thread for a processor that only copies
        self._processor = processor
        self._limiter = anyio.CapacityLimiter(max_workers) if processor is not None else None
        self._is_own_url = is_own_url
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._closed = False

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

    def refresh_all(self) -> None:
        for task in self._store:
            self.refresh(task)

    def refresh(self, task: StoredTask) -> None:
        """Bring `task.status` up to date with the clock; start processing if it is due."""
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
        resolved = self._resolve(task)
        if isinstance(resolved, str):
            self._fail(task, resolved, ended_at=task.due_at)
        elif self._processor is None:
            self._complete(task, identity(resolved))
        elif not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # looked at from outside the event loop: start on the next look
                return
            self._jobs[task.task_id] = loop.create_task(self._run(task, resolved, self._processor))

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

    async def _run(self, task: StoredTask, job: SwapJob, processor: Processor) -> None:
        try:
            try:
                data = await anyio.to_thread.run_sync(processor, job, limiter=self._limiter, abandon_on_cancel=True)
            except Exception as exc:
                self._fail(task, str(exc) or type(exc).__name__)
            else:
                self._complete(task, data)
        finally:
            self._jobs.pop(task.task_id, None)

    def _resolve(self, task: StoredTask) -> SwapJob | str:
        """The job's input bytes, or the failure message when an input cannot be had."""
        target_field, swap_field = media_fields(task.model)
        found: dict[str, bytes] = {}
        for name in (target_field, swap_field):
            kind = "video" if name == "target_video" else "image"
            data = task.media.get(name)
            if data is None:
                data = self._fetch(task.input[name])
                if data is None:
                    return f"failed to get valid {kind}"
                try:
                    if kind == "video":
                        task.frames = check_video(data, name)
                    else:
                        check_image(data, name)
                except ValidationError:
                    return f"failed to get valid {kind}"
            found[name] = data
        return SwapJob(
            model=task.model,
            task_type=task.task_type,
            target=found[target_field],
            swap=found[swap_field],
            swap_faces_index=task.swap_faces_index,
            target_faces_index=task.target_faces_index,
        )

    def _fetch(self, url: str) -> bytes | None:
        """Bytes behind a URL, if it points at a file this emulator serves. Never goes to the network."""
        path = self._is_own_url(url)
        if path is None:
            return None
        stored = self._files.get(path)
        return stored.data if stored is not None else None

    def _complete(self, task: StoredTask, data: bytes) -> None:
        if task.is_video:
            ext, content_type = "mp4", "video/mp4"
        else:
            try:
                fmt = probe_image(data).format
                ext, content_type = _IMAGE_EXT[fmt], f"image/{fmt}"
            except InvalidInputError:
                ext, content_type = "bin", "application/octet-stream"
        name = f"{task.task_id}.{ext}"
        self._files.put(f"/results/{name}", data, content_type)
        task.result, task.result_name = data, name
        task.ended_at = max(task.due_at, self._clock.now())
        self._store.transition(task, "completed")

    def _fail(self, task: StoredTask, message: str, *, ended_at: float | None = None) -> None:
        task.error_message = message
        task.ended_at = ended_at if ended_at is not None else max(task.due_at, self._clock.now())
        self._store.transition(task, "failed")


def own_path(url: str, ports: tuple[int, ...], hosts: frozenset[str]) -> str | None:
    """The /results/... or /files/... path (percent-decoded) of `url` if it is served by this
    emulator (on any of its `ports`), else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "http" or (parts.hostname or "").lower() not in (_LOCAL_HOSTS | hosts):
        return None
    if port not in ports:
        return None
    path = unquote(parts.path)
    if not path.startswith(("/results/", "/files/")) or "/../" in path:
        return None
    return path
