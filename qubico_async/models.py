"""The wire objects, as frozen attrs classes. Parsing lives in `_convert.py`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from enum import Enum
from typing import Any

from attrs import field, frozen

__all__ = [
    "AccountInfo",
    "Task",
    "TaskConfig",
    "TaskError",
    "TaskMeta",
    "TaskOutput",
    "TaskStatus",
    "TaskUsage",
    "Usage",
    "WebhookConfig",
]

_ALIASES = {"success": "completed", "succeeded": "completed", "canceled": "cancelled"}


class TaskStatus(str, Enum):
    """A task's status. Parses any case; an unknown value is kept (as `UNKNOWN`) and is not terminal."""

    PENDING = "pending"
    STAGED = "staged"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        if not isinstance(value, str):
            return None
        norm = value.strip().lower()
        norm = _ALIASES.get(norm, norm)
        for member in cls:
            if member.value == norm:
                return member
        unknown = str.__new__(cls, value)
        unknown._value_ = value
        unknown._name_ = "UNKNOWN"
        return unknown

    @property
    def is_known(self) -> bool:
        return self._name_ != "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """Completed, failed or cancelled: polling again cannot change it."""
        return self in _TERMINAL

    @property
    def is_success(self) -> bool:
        return self is TaskStatus.COMPLETED

    def __str__(self) -> str:
        return str(self.value)


_TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


@frozen
class WebhookConfig:
    """Where the service POSTs task updates. The secret comes back in `x-webhook-secret`; never shown."""

    endpoint: str
    secret: str = field(default="", repr=lambda s: "'***'" if s else "''")


@frozen
class TaskConfig:
    service_mode: str | None = None
    webhook: WebhookConfig | None = None


@frozen
class Usage:
    """`meta.usage` as the service reports it, in the service's own units (never USD).

    `type` names the unit (`"point"`, `"quota"`, `"llm"`, ... or `""`); `frozen` is the amount
    held while the task runs and `consume` the amount charged. The rate of a unit to USD is not
    published: `Prices(usd_per_unit=...)` is the only place a unit becomes money.
    """

    type: str = ""
    frozen: float | None = None
    consume: float | None = None

    @property
    def charged_nothing(self) -> bool:
        """True when the usage proves nothing was charged: `consume == 0` and `frozen == 0`."""
        return self.consume == 0 and self.frozen == 0


TaskUsage = Usage
"""Deprecated alias of `Usage` (its old name)."""


@frozen
class TaskMeta:
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    usage: Usage | None = None
    is_using_private_pool: bool | None = None


@frozen
class TaskError:
    """The task-level error object. `Task.error` is None when the service reports no error."""

    code: int = 0
    message: str = ""
    raw_message: str = ""
    detail: Any = None

    @property
    def summary(self) -> str:
        """`message: raw_message`: the generic message and the cause a user can act on."""
        parts = [part for part in (self.message.strip(), self.raw_message.strip()) if part]
        if len(parts) == 2 and parts[1].startswith(parts[0]):
            parts = parts[1:]
        return ": ".join(dict.fromkeys(parts)) or (f"error code {self.code}" if self.code else "")


@frozen
class TaskOutput:
    """A task's result. Known keys are typed; every other key the service sends is kept in `extra`."""

    image_url: str | None = None
    video_url: str | None = None
    extra: Mapping[str, Any] = field(factory=dict, repr=False)


@frozen
class Task:
    """A unified-API task as last seen. Immutable: polling returns a new `Task`."""

    task_id: str
    model: str = ""
    task_type: str = ""
    status: TaskStatus = TaskStatus.PENDING
    output: TaskOutput | None = None
    meta: TaskMeta = field(factory=TaskMeta)
    error: TaskError | None = None
    logs: tuple[Any, ...] = ()
    config: TaskConfig = field(factory=TaskConfig, repr=False)
    input: Mapping[str, Any] = field(factory=dict, repr=False)
    detail: Any = field(default=None, repr=False)

    @property
    def image_url(self) -> str | None:
        return self.output.image_url if self.output is not None else None

    @property
    def video_url(self) -> str | None:
        return self.output.video_url if self.output is not None else None

    @property
    def result_url(self) -> str | None:
        """The image or video result URL, whichever the task produced."""
        return self.image_url or self.video_url


@frozen
class AccountInfo:
    """`GET /account/info`. Fields the service does not send are None."""

    equivalent_in_usd: float | None = None
    id: int | str | None = None
    name: str | None = None
    plan: str | None = None
    is_enable: bool | None = None
    max_concurrent_task_count: int | None = None
    max_image_toolkit_concurrency: int | None = None
    """Face-swap (image toolkit) concurrency, when the account reports it: wins for image batches."""
    extra: Mapping[str, Any] = field(factory=dict, repr=False)
