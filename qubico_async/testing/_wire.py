"""The task object as Get Task sends it: a stored task spelled in its wire shape.

Status, output URL, `meta` (times in the shape's style, usage in points) and `error` (a failure, or
the service's credit refusal at create) are worked out here from the task and the clock.
"""

from __future__ import annotations

from typing import Any

from ._state import Clock, StoredTask
from ._wireshape import ZERO_TIME

__all__ = [
    "CREDIT_FROZEN_POINTS",
    "CREDIT_RAW_MESSAGE",
    "DEFAULT_FAILURE_MESSAGE",
    "FAILURE_CODE",
    "PRE_PROCESS_FAILED",
    "task_to_wire",
]

FAILURE_CODE = 10000
"""`error.code` of a failed task."""
DEFAULT_FAILURE_MESSAGE = "face swap failed: no face detected"

PRE_PROCESS_FAILED = "failed to pre-process task runtime"
CREDIT_RAW_MESSAGE = "failed to freeze account point quota: account point quota not enough; account credit not enough"
CREDIT_FROZEN_POINTS = 500_000
"""`meta.usage.frozen` of a create refused for credit, as seen on the wire (piapi-api.md §18)."""


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
