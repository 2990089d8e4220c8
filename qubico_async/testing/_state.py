"""The emulator's state: its clock, stored tasks and files, the account's points, and the stats.

Nothing here does I/O. Status progression is driven by `Clock`, a monotonic clock that tests move
forward with `advance()` instead of sleeping.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from attrs import define, field, frozen

from ._pricing import POINTS_PER_USD, PRICES, VIDEO_MODEL
from ._wireshape import WireShape

__all__ = [
    "Clock",
    "FileStore",
    "Stats",
    "StoredFile",
    "StoredTask",
    "TaskStatusName",
    "TaskStore",
    "account_info",
    "new_task_id",
    "points_available",
]

TaskStatusName = Literal["pending", "processing", "completed", "failed"]


@define
class Clock:
    """`time.monotonic()` plus a virtual offset; `iso()` maps a reading to wall-clock ISO-8601."""

    _offset: float = 0.0
    _mono0: float = field(factory=time.monotonic)
    _wall0: float = field(factory=time.time)

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got {seconds!r}")
        self._offset += seconds

    def wall(self, reading: float) -> float:
        """UNIX time of a clock reading."""
        return self._wall0 + (reading - self._mono0)

    def iso(self, reading: float, style: str = "Z") -> str:
        """ISO-8601 of a reading: `...Z` (whole seconds), `...123456789Z` (nanoseconds, as Go
        prints them) or `...+08:00` (the same instant in UTC+8)."""
        wall = self.wall(reading)
        stamp = datetime.fromtimestamp(wall, tz=timezone.utc)
        if style == "nanos":
            nanos = min(int((wall % 1) * 1e9), 999_999_999)
            return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"
        if style == "+08:00":
            return stamp.astimezone(timezone(timedelta(hours=8))).strftime("%Y-%m-%dT%H:%M:%S+08:00")
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


@define
class Stats:
    """Counters. `*_requests`/`gets`/`downloads` count requests received (faulted ones included);
    `creates` counts tasks stored and `uploads` files stored by the upload API; `requests_by_status`
    counts responses sent by HTTP status (both sites); `tasks_by_status` is the current status of
    every stored task.

    Webhooks: `webhook_attempts` counts every POST made (retries included); `webhooks_sent` counts
    deliveries acknowledged with a 2xx (each copy of a duplicated one); `webhooks_failed` deliveries
    given up on after the retries; `webhooks_dropped` deliveries never sent (`Faults.webhooks.drop`);
    `webhooks_refused` deliveries skipped because the endpoint is not on loopback.

    Concurrency: `processing` counts the tasks holding one of the account's slots now (from create
    until completed/failed; tasks waiting in the over-limit queue excepted), `max_processing` the
    most ever at once, `queued` the tasks waiting for a slot (`over_limit="queue"`), and
    `rejected_over_limit` the creates answered 429 (`over_limit="reject"`, no task stored)."""

    creates: int = 0
    create_requests: int = 0
    gets: int = 0
    account_requests: int = 0
    upload_requests: int = 0
    uploads: int = 0
    downloads: int = 0
    webhook_attempts: int = 0
    webhooks_sent: int = 0
    webhooks_failed: int = 0
    webhooks_dropped: int = 0
    webhooks_refused: int = 0
    processing: int = 0
    max_processing: int = 0
    queued: int = 0
    rejected_over_limit: int = 0
    requests_by_status: dict[int, int] = field(factory=dict)
    tasks_by_status: dict[str, int] = field(factory=dict)

    def count_response(self, status: int) -> None:
        self.requests_by_status[status] = self.requests_by_status.get(status, 0) + 1


@define(eq=False)
class StoredTask:
    """One task as the emulator keeps it. `input` and `config` are what the client sent."""

    task_id: str
    model: str
    task_type: str
    input: dict[str, Any]
    config: dict[str, Any]
    created_at: float
    pending_seconds: float
    processing_seconds: float
    media: dict[str, bytes] = field(factory=dict, repr=False)
    """Inline (base64) inputs, decoded at create, by field name."""
    swap_faces_index: tuple[int, ...] = ()
    target_faces_index: tuple[int, ...] = ()
    frames: int | None = None
    forced_failure: str | None = None
    """Set at create when the task is doomed (failure_rate or fail_next): the error message."""
    status: TaskStatusName = "pending"
    ended_at: float | None = None
    error_message: str = ""
    error_raw: str | None = None
    """`error.raw_message` when it says more than `error_message` (the cause, as on the wire)."""
    result: bytes | None = field(default=None, repr=False)
    result_name: str | None = None
    shape: WireShape = field(factory=WireShape.plain)
    refused: bool = False
    """Refused at create for credit: failed at once, never started, nothing consumed."""
    held_points: int = 0
    """Points frozen for this task while it runs (its price when created)."""
    waiting: bool = False
    """Waiting for a free slot (`over_limit="queue"`): pending with no start time yet."""
    slot_at: float | None = None
    """Clock reading at which a task that waited got its slot (None: it had one from create)."""

    @property
    def started_at(self) -> float:
        """When it starts processing: `pending_seconds` after create, and not before it has a slot."""
        if self.waiting:
            return math.inf
        start = self.created_at + self.pending_seconds
        return start if self.slot_at is None else max(start, self.slot_at)

    @property
    def due_at(self) -> float:
        return self.started_at + self.processing_seconds

    @property
    def is_video(self) -> bool:
        return self.model == VIDEO_MODEL

    @property
    def is_terminal(self) -> bool:
        return self.status in ("completed", "failed")

    @property
    def cost_usd(self) -> float:
        return PRICES[self.model, self.task_type].cost(self.frames)

    @property
    def cost_points(self) -> int:
        return PRICES[self.model, self.task_type].points(self.frames)


@frozen
class StoredFile:
    data: bytes = field(repr=False)
    content_type: str
    expires_at: float | None = None
    """Emulator-clock reading from which the file is gone (None: kept while the emulator runs)."""


class FileStore:
    """Files served under /results/ (task outputs) and /files/ (hosted inputs and uploads), by
    decoded URL path. A file past its `expires_at` on `clock` is gone (deleted when looked up)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._files: dict[str, StoredFile] = {}
        self._clock = clock if clock is not None else Clock()

    def put(self, path: str, data: bytes, content_type: str, *, ttl: float | None = None) -> None:
        expires_at = None if ttl is None else self._clock.now() + ttl
        self._files[path] = StoredFile(data, content_type, expires_at)

    def get(self, path: str) -> StoredFile | None:
        stored = self._files.get(path)
        if stored is not None and stored.expires_at is not None and self._clock.now() >= stored.expires_at:
            del self._files[path]
            return None
        return stored

    def __len__(self) -> int:
        return sum(1 for path in list(self._files) if self.get(path) is not None)


class TaskStore:
    """Stored tasks by id. Every status change goes through `transition()`, which keeps
    `stats.tasks_by_status` current and calls `on_change` (the seam for webhook delivery)."""

    def __init__(self, stats: Stats) -> None:
        self._tasks: dict[str, StoredTask] = {}
        self._stats = stats
        self.on_change: Callable[[StoredTask], None] | None = None
        self.frozen_points = 0
        """Points held by pending and processing tasks."""
        self.consumed_points = 0
        """Points consumed by completed tasks."""

    def add(self, task: StoredTask) -> None:
        self._tasks[task.task_id] = task
        if not task.is_terminal:
            task.held_points = task.cost_points
            self.frozen_points += task.held_points
        self._stats.creates += 1
        by_status = self._stats.tasks_by_status
        by_status[task.status] = by_status.get(task.status, 0) + 1
        if self.on_change is not None:
            self.on_change(task)

    def transition(self, task: StoredTask, status: TaskStatusName) -> None:
        if status == task.status:
            return
        by_status = self._stats.tasks_by_status
        by_status[task.status] -= 1
        if not by_status[task.status]:
            del by_status[task.status]
        by_status[status] = by_status.get(status, 0) + 1
        was_terminal = task.is_terminal
        task.status = status
        if task.is_terminal and not was_terminal:
            self.frozen_points -= task.held_points
            if status == "completed":
                self.consumed_points += task.cost_points
        if self.on_change is not None:
            self.on_change(task)

    def get(self, task_id: str) -> StoredTask | None:
        return self._tasks.get(task_id)

    def view(self) -> Mapping[str, StoredTask]:
        return self._tasks

    def __iter__(self) -> Iterator[StoredTask]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)


def account_info(
    tasks: TaskStore, balance_usd: float, max_concurrent_task_count: int, max_image_toolkit_concurrency: int | None
) -> dict[str, Any]:
    """`GET /account/info` data: the balance less what completed tasks consumed and running ones froze."""
    spent, frozen = tasks.consumed_points, tasks.frozen_points
    total = round(balance_usd * POINTS_PER_USD)
    remaining = max(0, total - spent - frozen)
    info: dict[str, Any] = {
        "equivalent_in_usd": round(remaining / POINTS_PER_USD, 6),
        "id": 1,
        "name": "emulator",
        "plan": "creator",
        "is_enable": True,
        "max_concurrent_task_count": max_concurrent_task_count,
    }
    if max_image_toolkit_concurrency is not None:
        info["max_image_toolkit_concurrency"] = max_image_toolkit_concurrency
    info["wallet"] = {"point_remain": remaining, "mj_remain": 0}
    info["credit_pack_info"] = {
        "total_credits": balance_usd,
        "used_credits": round(spent / POINTS_PER_USD, 6),
        "available_credits": round(remaining / POINTS_PER_USD, 6),
    }
    return info


def points_available(tasks: TaskStore, balance_usd: float) -> int:
    """Points a new task could freeze now."""
    return round(balance_usd * POINTS_PER_USD) - tasks.consumed_points - tasks.frozen_points


def new_task_id() -> str:
    return str(uuid.uuid4())
