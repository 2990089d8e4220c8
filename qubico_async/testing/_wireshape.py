"""How one task is spelled on the wire: the shapes real responses showed, one drawn per task.

`plain` gives the clean documented shape; `realistic` draws each task's shape from (seed, task_id),
so runs are reproducible (piapi-api.md §18).
"""

from __future__ import annotations

import random
from typing import Literal

from attrs import frozen

__all__ = ["ZERO_TIME", "WireName", "WireShape", "shape_for"]

WireName = Literal["realistic", "plain"]
"""`realistic`: each task answers in one of the shapes real responses showed (piapi-api.md §18), drawn
from (seed, task_id); `plain`: one clean shape, as the docs' examples show it."""

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero time: what the service sends for `started_at` / `ended_at` before they happen."""


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
