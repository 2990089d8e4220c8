"""The `batch` command's report.jsonl: one line per job, kept across `--resume`, written atomically.

Also the short form of a failure reason, by which the summary on stderr counts failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from .batch import Outcome

__all__ = ["job_record", "load_report", "summary_reason", "write_report"]


def job_record(outcome: Outcome, target: str) -> dict[str, Any]:
    """The job's report line (its `output` or `download_error` is filled in once the result is saved)."""
    task = outcome.task
    return {
        "index": outcome.index,
        "key": outcome.key,
        "target": target[:500],
        "status": outcome.status,
        "task_id": task.task_id if task else None,
        "result_url": task.result_url if task else None,
        "output": None,
        "reason": outcome.reason,
        "spend_usd": outcome.spend_usd,
        "replayed": outcome.replayed,
    }


def load_report(path: Path, rows: list[tuple[str, str | None, str | None]]) -> dict[int, dict[str, Any]]:
    """The earlier run's lines that still describe this run's jobs (same index, same target)."""
    kept: dict[int, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return kept
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        index = record.get("index") if isinstance(record, dict) else None
        if isinstance(index, int) and 0 <= index < len(rows) and record.get("target") == rows[index][0][:500]:
            kept[index] = record
    return kept


def write_report(path: Path, records: dict[int, dict[str, Any]]) -> None:
    """One line per job, in job order, replacing the file atomically (never a half-written report)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for index in sorted(records):
                f.write(json.dumps(records[index]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")


def summary_reason(text: str) -> str:
    """One line per kind of failure: task ids replaced, so that the same cause counts once."""
    line = _UUID.sub("<id>", " ".join(text.split()))
    return line if len(line) <= 160 else line[:157] + "..."
