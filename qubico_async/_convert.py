"""The one cattrs converter: wire JSON -> models, tolerant of every documented variant.

Variants accepted (see piapi-api.md): status in any case (unknown kept), `logs` null or list,
`meta` `{}` or full, `output` null, `error` absent/empty/partial, unknown fields ignored,
ISO-8601 timestamps with or without `Z`/fractions/offsets (unparseable ones, and Go's zero time
`0001-01-01T00:00:00Z` that means "not yet", become None), `meta.usage` in the service's units.
Anything else that does not fit raises `MalformedResponseError`, never a bare cattrs error.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from .errors import MalformedResponseError
from .models import (
    AccountInfo,
    Task,
    TaskConfig,
    TaskError,
    TaskMeta,
    TaskOutput,
    TaskStatus,
    Usage,
    WebhookConfig,
)

__all__ = ["converter", "structure_account", "structure_task", "unstructure_task_record"]

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False)

_FRACTION = re.compile(r"\.(\d+)")


def _parse_datetime(value: Any, _: Any = None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:  # the epoch itself means "not set", like Go's zero time
            return None
        try:
            return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or len(value) > 64:
        return None
    return _parse_iso(value)


@functools.lru_cache(maxsize=4096)
def _parse_iso(value: str) -> dt.datetime | None:
    """An ISO-8601 text as an aware datetime, or None. Cached: every poll of a task repeats its stamps."""
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # Python 3.10's fromisoformat wants exactly 3 or 6 fraction digits.
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.year <= 1:  # Go's zero time: not started / not ended yet
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _structure_status(value: Any, _: Any) -> TaskStatus:
    if not isinstance(value, str):
        raise ValueError(f"status must be a string, got {type(value).__name__}")
    return TaskStatus(value)


def _as_mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _structure_webhook(value: Any, _: Any) -> WebhookConfig | None:
    data = _as_mapping(value, "webhook_config")
    endpoint = data.get("endpoint") or ""
    if not endpoint:
        return None
    return WebhookConfig(endpoint=str(endpoint), secret=str(data.get("secret") or ""))


def _structure_config(value: Any, _: Any) -> TaskConfig:
    data = _as_mapping(value, "config")
    mode = data.get("service_mode")
    return TaskConfig(
        service_mode=str(mode) if mode else None,
        webhook=_structure_webhook(data.get("webhook_config"), None),
    )


def _structure_output(value: Any, _: Any) -> TaskOutput | None:
    if value is None:
        return None
    data = _as_mapping(value, "output")

    def url(key: str) -> str | None:
        v = data.get(key)
        return v if isinstance(v, str) and v else None

    extra = {k: v for k, v in data.items() if k not in ("image_url", "video_url")}
    return TaskOutput(image_url=url("image_url"), video_url=url("video_url"), extra=extra)


_structure_error_fields = make_dict_structure_fn(TaskError, converter)


def _structure_error(value: Any, _: Any) -> TaskError | None:
    if value is None:
        return None
    if isinstance(value, str):
        return TaskError(code=0, message=value) if value else None
    data = dict(_as_mapping(value, "error"))
    for key in ("message", "raw_message"):
        if data.get(key) is None:
            data.pop(key, None)
    if data.get("code") is None:
        data.pop("code", None)
    try:
        err = _structure_error_fields(data, TaskError)
    except (cattrs.BaseValidationError, ValueError, TypeError, OverflowError):
        err = TaskError(code=-1, message=str(data.get("message") or data)[:1000])
    if not err.code and not err.message and not err.raw_message:
        return None
    return err


def _structure_logs(value: Any, _: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


_structure_meta_fields = make_dict_structure_fn(TaskMeta, converter)


def _structure_meta(value: Any, _: Any) -> TaskMeta:
    # Bookkeeping only: a malformed meta must never cost the caller a (paid) result.
    if not isinstance(value, Mapping):
        return TaskMeta()
    data = dict(value)
    if not isinstance(data.get("usage"), Mapping):
        data["usage"] = None
    try:
        return _structure_meta_fields(data, TaskMeta)
    except (cattrs.BaseValidationError, ValueError, TypeError, OverflowError):
        return TaskMeta(
            created_at=_parse_datetime(data.get("created_at")),
            started_at=_parse_datetime(data.get("started_at")),
            ended_at=_parse_datetime(data.get("ended_at")),
        )


def _amount(value: Any) -> float | None:
    """A usage amount: an int stays an int (points come in the millions); missing or junk is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return value


def _structure_usage(value: Any, _: Any) -> Usage:
    data = _as_mapping(value, "usage")
    unit = data.get("type")
    return Usage(
        type=unit if isinstance(unit, str) else "",
        frozen=_amount(data.get("frozen")),
        consume=_amount(data.get("consume")),
    )


def _structure_task_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError("task_id is missing or not a string")
    return str(value)


def _structure_task(value: Any, _: Any) -> Task:
    data = _as_mapping(value, "task")
    raw_input = data.get("input")
    return Task(
        task_id=_structure_task_id(data.get("task_id")),
        model=str(data.get("model") or ""),
        task_type=str(data.get("task_type") or ""),
        status=_structure_status(data.get("status", "pending"), None),
        output=_structure_output(data.get("output"), None),
        meta=_structure_meta(data.get("meta"), None),
        error=_structure_error(data.get("error"), None),
        logs=_structure_logs(data.get("logs"), None),
        config=_structure_config(data.get("config"), None),
        input=dict(raw_input) if isinstance(raw_input, Mapping) else {},
        detail=data.get("detail"),
    )


def _structure_account(value: Any, _: Any) -> AccountInfo:
    data = _as_mapping(value, "account info")
    known = {
        "equivalent_in_usd",
        "id",
        "name",
        "plan",
        "is_enable",
        "max_concurrent_task_count",
        "max_image_toolkit_concurrency",
    }

    def num(key: str) -> float | None:
        v = data.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def count_of(key: str) -> int | None:
        v = data.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    ident = data.get("id", data.get("account_id"))
    name = data.get("name", data.get("account_name"))
    enabled = data.get("is_enable")
    return AccountInfo(
        equivalent_in_usd=num("equivalent_in_usd"),
        id=ident if isinstance(ident, (int, str)) and not isinstance(ident, bool) else None,
        name=name if isinstance(name, str) else None,
        plan=data["plan"] if isinstance(data.get("plan"), str) else None,
        is_enable=enabled if isinstance(enabled, bool) else None,
        max_concurrent_task_count=count_of("max_concurrent_task_count"),
        max_image_toolkit_concurrency=count_of("max_image_toolkit_concurrency"),
        extra={k: v for k, v in data.items() if k not in known},
    )


converter.register_structure_hook(TaskStatus, _structure_status)
converter.register_structure_hook(dt.datetime, _parse_datetime)
converter.register_structure_hook(Usage, _structure_usage)
converter.register_structure_hook(TaskMeta, _structure_meta)
converter.register_structure_hook(TaskConfig, _structure_config)
converter.register_structure_hook(Task, _structure_task)
converter.register_structure_hook(AccountInfo, _structure_account)


def _structure(data: Any, cls: type[T], what: str) -> T:
    try:
        return converter.structure(data, cls)
    except (
        cattrs.BaseValidationError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        OverflowError,
    ) as exc:
        detail = "; ".join(cattrs.transform_error(exc)) if isinstance(exc, cattrs.BaseValidationError) else str(exc)
        raise MalformedResponseError(f"unexpected {what} shape: {detail[:300]}") from None
    except RecursionError:
        raise MalformedResponseError(f"unexpected {what} shape: nested too deeply") from None


def structure_task(data: Any) -> Task:
    """A `Task` from the envelope's `data`, or `MalformedResponseError`."""
    return _structure(data, Task, "task")


def structure_account(data: Any) -> AccountInfo:
    return _structure(data, AccountInfo, "account info")


def unstructure_task_record(task: Task) -> dict[str, Any]:
    """What the journal keeps of a finished task, the inverse of `structure_task` for those fields.

    Enough to replay the outcome (id, status, result URLs, error, usage); never `config` (it may
    hold the webhook secret), `input` or `output.extra` (media, possibly megabytes) or `logs`.
    """
    output = task.output
    return {
        "task_id": task.task_id,
        "model": task.model,
        "task_type": task.task_type,
        "status": task.status.value,
        "output": None if output is None else {"image_url": output.image_url, "video_url": output.video_url},
        "error": None if task.error is None else converter.unstructure(attrs.evolve(task.error, detail=None)),
        "meta": {"usage": None if task.meta.usage is None else converter.unstructure(task.meta.usage)},
    }
