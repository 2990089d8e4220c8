"""The emulator's state: its clock, stored tasks and files, prices, stats, and the wire form of a task.

Nothing here does I/O. Status progression is driven by `Clock`, a monotonic clock that tests move
forward with `advance()` instead of sleeping.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from attrs import define, field, frozen

__all__ = [
    "DEFAULT_FAILURE_MESSAGE",
    "FAILURE_CODE",
    "IMAGE_MODEL",
    "PRICES",
    "VIDEO_MODEL",
    "Clock",
    "FileStore",
    "Price",
    "Stats",
    "StoredFile",
    "StoredTask",
    "TaskStatusName",
    "TaskStore",
    "account_info",
    "task_to_wire",
]

IMAGE_MODEL = "Qubico/image-toolkit"
VIDEO_MODEL = "Qubico/video-toolkit"

FAILURE_CODE = 10000
"""`error.code` of a failed task."""
DEFAULT_FAILURE_MESSAGE = "face swap failed: no face detected"

TaskStatusName = Literal["pending", "processing", "completed", "failed"]


@frozen
class Price:
    """What one task consumes, in USD: `usd` per task, or per frame when `per_frame`."""

    usd: float
    per_frame: bool = False

    def cost(self, frames: int | None) -> float:
        if not self.per_frame:
            return self.usd
        return round(self.usd * (frames if frames is not None else VIDEO_FALLBACK_FRAMES), 6)


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

    def iso(self, reading: float) -> str:
        stamp = datetime.fromtimestamp(self.wall(reading), tz=timezone.utc)
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
    `webhooks_refused` deliveries skipped because the endpoint is not on loopback."""

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
    result: bytes | None = field(default=None, repr=False)
    result_name: str | None = None

    @property
    def started_at(self) -> float:
        return self.created_at + self.pending_seconds

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

    def add(self, task: StoredTask) -> None:
        self._tasks[task.task_id] = task
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
        task.status = status
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


def account_info(tasks: TaskStore, balance_usd: float, max_concurrent_task_count: int) -> dict[str, Any]:
    """`GET /account/info` data: the balance less what completed tasks consumed."""
    spent = round(sum(t.cost_usd for t in tasks if t.status == "completed"), 6)
    remaining = round(max(0.0, balance_usd - spent), 6)
    return {
        "equivalent_in_usd": remaining,
        "id": 1,
        "name": "emulator",
        "plan": "creator",
        "is_enable": True,
        "max_concurrent_task_count": max_concurrent_task_count,
        "wallet": {"point_remain": remaining, "mj_remain": 0},
        "credit_pack_info": {
            "total_credits": balance_usd,
            "used_credits": spent,
            "available_credits": remaining,
        },
    }


def new_task_id() -> str:
    return str(uuid.uuid4())


def task_to_wire(task: StoredTask, base_url: str, clock: Clock) -> dict[str, Any]:
    """The documented task object (Get Task `data`), as a fresh dict. Inputs are not echoed."""
    output: dict[str, Any] | None = None
    if task.status == "completed" and task.result_name is not None:
        key = "video_url" if task.is_video else "image_url"
        output = {key: f"{base_url}/results/{task.result_name}"}

    meta: dict[str, Any] = {}
    if task.status != "pending":
        cost = task.cost_usd
        if task.status == "processing":
            usage = {"type": "point", "frozen": cost, "consume": 0}
        elif task.status == "completed":
            usage = {"type": "point", "frozen": 0, "consume": cost}
        else:
            usage = {"type": "point", "frozen": 0, "consume": 0}
        meta["created_at"] = clock.iso(task.created_at)
        meta["started_at"] = clock.iso(task.started_at)
        if task.ended_at is not None:
            meta["ended_at"] = clock.iso(task.ended_at)
        meta["usage"] = usage
        meta["is_using_private_pool"] = False

    if task.status == "failed":
        error: dict[str, Any] = {
            "code": FAILURE_CODE,
            "raw_message": task.error_message,
            "message": task.error_message,
            "detail": None,
        }
    else:
        error = {"code": 0, "raw_message": "", "message": "", "detail": None}

    return {
        "task_id": task.task_id,
        "model": task.model,
        "task_type": task.task_type,
        "status": task.status,
        "config": _copy_config(task.config),
        "input": {},
        "output": output,
        "meta": meta,
        "detail": None,
        "logs": [],
        "error": error,
    }


def _copy_config(config: dict[str, Any]) -> dict[str, Any]:
    copied = dict(config)
    if isinstance(copied.get("webhook_config"), dict):
        copied["webhook_config"] = dict(copied["webhook_config"])
    return copied
