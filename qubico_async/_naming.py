"""Outside text made safe where it lands: local file names (from task ids, job keys, upload
names) never leave their folder, and a task id put in a URL path never names another path."""

from __future__ import annotations

import re

from .errors import InvalidInputError

__all__ = ["check_task_id", "safe_filename"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def safe_filename(name: str, fallback: str = "result") -> str:
    """A file name that cannot leave its folder: path separators and odd characters replaced."""
    cleaned = _SAFE_NAME.sub("_", name).strip("._") or fallback
    return cleaned[:150]


def check_task_id(task_id: object) -> str:
    """`task_id` if it is safe to put in a URL path, else `InvalidInputError` (nothing is sent)."""
    if not isinstance(task_id, str) or _TASK_ID.fullmatch(task_id) is None:
        shown = repr(task_id)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise InvalidInputError(
            f"invalid task id {shown}: expected 1-200 characters of letters, digits, '_' and '-' "
            "(the service's ids are UUIDs)"
        )
    return task_id
