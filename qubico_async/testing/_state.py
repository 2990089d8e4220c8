"""The emulator's state: its clock, stored tasks and files, prices, stats, and the wire form of a task.

Nothing here does I/O. Status progression is driven by `Clock`, a monotonic clock that tests move
forward with `advance()` instead of sleeping.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from attrs import define, field, frozen

__all__ = [
    "DEFAULT_FAILURE_MESSAGE",
    "CREDIT_FROZEN_POINTS",
    "CREDIT_RAW_MESSAGE",
    "FAILURE_CODE",
    "IMAGE_MODEL",
    "POINTS_PER_USD",
    "PRICES",
    "PRE_PROCESS_FAILED",
    "ZERO_TIME",
    "VIDEO_MODEL",
    "Clock",
    "FileStore",
    "Price",
    "Stats",
    "StoredFile",
    "StoredTask",
    "TaskStatusName",
    "TaskStore",
    "WireName",
    "WireShape",
    "account_info",
    "shape_for",
    "task_to_wire",
]

IMAGE_MODEL = "Qubico/image-toolkit"
VIDEO_MODEL = "Qubico/video-toolkit"

FAILURE_CODE = 10000
"""`error.code` of a failed task."""
DEFAULT_FAILURE_MESSAGE = "face swap failed: no face detected"

TaskStatusName = Literal["pending", "processing", "completed", "failed"]

WireName = Literal["realistic", "plain"]
"""`realistic`: each task answers in one of the shapes real responses showed (piapi-api.md §18), drawn
from (seed, task_id); `plain`: one clean shape, as the docs' examples show it."""

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero time: what the service sends for `started_at` / `ended_at` before they happen."""

POINTS_PER_USD = 100_000_000
"""GUESS, published nowhere: 1,000,000 points = $0.01. Real usages are integers in points (a Qubico
Flux task froze and consumed 2,000,000); this rate only turns the emulator's USD prices and balance
into points and back. Do not rely on it for real budgets."""

PRE_PROCESS_FAILED = "failed to pre-process task runtime"
CREDIT_RAW_MESSAGE = "failed to freeze account point quota: account point quota not enough; account credit not enough"
CREDIT_FROZEN_POINTS = 500_000
"""`meta.usage.frozen` of a create refused for credit, as seen on the wire (piapi-api.md §18)."""


@frozen
class WireShape:
    """How one task is spelled on the wire. `plain()` is the clean documented shape."""

    title_status: bool = False
    """`Completed` instead of `completed` (and so on)."""
    envelope_code: int = 200
    """200, or 0 (as one schema page and a CLI expect) on a successful answer about this task."""
    logs_null: bool = False
    input_null: bool = False
    output_extras: bool = False
    """`output` carries `image_base64: ""` beside the URL."""
    meta_extras: bool = False
    """`meta` carries `model_version`, `process_mode`, `failover_triggered`."""
    zero_times: bool = False
    """`meta` is complete from the start, `started_at`/`ended_at` being ZERO_TIME until they happen."""
    time_style: Literal["Z", "nanos", "+08:00"] = "Z"

    @classmethod
    def plain(cls) -> WireShape:
        return cls()


def shape_for(seed: int, task_id: str, wire: WireName) -> WireShape:
    """The shape of task `task_id`: fixed by (seed, task_id), so runs are reproducible."""
    if wire == "plain":
        return WireShape.plain()
    rng = random.Random(f"wire:{seed}:{task_id}")
    return WireShape(
        title_status=rng.random() < 0.5,
        envelope_code=rng.choice((200, 0)),
        logs_null=rng.random() < 0.5,
        input_null=rng.random() < 0.5,
        output_extras=rng.random() < 0.5,
        meta_extras=rng.random() < 0.5,
        zero_times=True,
        time_style=rng.choice(("Z", "nanos", "+08:00")),
    )


@frozen
class Price:
    """What one task consumes, in USD: `usd` per task, or per frame when `per_frame`."""

    usd: float
    per_frame: bool = False

    def cost(self, frames: int | None) -> float:
        if not self.per_frame:
            return self.usd
        return round(self.usd * (frames if frames is not None else VIDEO_FALLBACK_FRAMES), 6)

    def points(self, frames: int | None) -> int:
        """The cost in points (integers, as `meta.usage` carries them), at the guessed POINTS_PER_USD."""
        return round(self.cost(frames) * POINTS_PER_USD)


VIDEO_FALLBACK_FRAMES = 100
"""Frames billed for a video whose frame count the header does not give."""

PRICES: Mapping[tuple[str, str], Price] = {
    (IMAGE_MODEL, "face-swap"): Price(0.01),
    (IMAGE_MODEL, "multi-face-swap"): Price(0.015),
    (VIDEO_MODEL, "face-swap"): Price(0.0005, per_frame=True),
}
"""(model, task_type) -> price. The known task kinds are exactly the keys."""


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


def task_to_wire(task: StoredTask, base_url: str, clock: Clock) -> dict[str, Any]:
    """The task object (Get Task `data`) in the task's wire shape, as a fresh dict."""
    shape = task.shape
    output: dict[str, Any] | None = None
    if task.status == "completed" and task.result_name is not None:
        url = f"{base_url}/results/{task.result_name}"
        output = {"video_url": url} if task.is_video else {"image_url": url}
        if shape.output_extras:
            output["image_base64"] = ""

    meta: dict[str, Any] = {}
    if task.status != "pending" or shape.zero_times:
        meta = _meta(task, clock)

    if task.refused:
        error: dict[str, Any] = {
            "code": FAILURE_CODE,
            "message": PRE_PROCESS_FAILED,
            "raw_message": CREDIT_RAW_MESSAGE,
            "detail": None,
        }
    elif task.status == "failed":
        raw = task.error_raw if task.error_raw is not None else task.error_message
        error = {"code": FAILURE_CODE, "raw_message": raw, "message": task.error_message, "detail": None}
    else:
        error = {"code": 0, "raw_message": "", "message": "", "detail": None}

    return {
        "task_id": task.task_id,
        "model": task.model,
        "task_type": task.task_type,
        "status": task.status.capitalize() if shape.title_status else task.status,
        "config": _copy_config(task.config),
        "input": None if shape.input_null else {},
        "output": output,
        "meta": meta,
        "detail": None,
        "logs": None if shape.logs_null else [],
        "error": error,
    }


def _meta(task: StoredTask, clock: Clock) -> dict[str, Any]:
    shape = task.shape
    points = task.cost_points
    if task.refused:
        usage = {"type": "point", "frozen": CREDIT_FROZEN_POINTS, "consume": 0}
    elif task.status == "completed":
        usage = {"type": "point", "frozen": points, "consume": points}
    elif task.status == "failed":
        usage = {"type": "point", "frozen": points, "consume": 0}
    else:
        usage = {"type": "point", "frozen": points, "consume": 0}
    style = shape.time_style
    started = task.status != "pending" and not task.refused
    meta: dict[str, Any] = {"created_at": clock.iso(task.created_at, style)}
    if started:
        meta["started_at"] = clock.iso(task.started_at, style)
    elif shape.zero_times:
        meta["started_at"] = ZERO_TIME
    if task.ended_at is not None and not task.refused:
        meta["ended_at"] = clock.iso(task.ended_at, style)
    elif shape.zero_times:
        meta["ended_at"] = ZERO_TIME
    meta["usage"] = usage
    meta["is_using_private_pool"] = False
    if shape.meta_extras:
        meta.update({"model_version": "", "process_mode": "", "failover_triggered": False})
    return meta


def _copy_config(config: dict[str, Any]) -> dict[str, Any]:
    copied = dict(config)
    if isinstance(copied.get("webhook_config"), dict):
        copied["webhook_config"] = dict(copied["webhook_config"])
    return copied
