"""`python -m qubico_async batch`: swap one face into a folder (or CSV) of targets, resumably.

Progress is drawn with the standard library (one redrawn line on a terminal, a line every few
seconds otherwise): a batch CLI needs a counter, not a dependency.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread

from .batch import Job, Outcome, Progress
from .client import QubicoClient
from .errors import InvalidInputError
from .media import Image
from .requests import FaceSwap

__all__ = ["add_parser", "read_manifest", "run_batch"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
JOURNAL_NAME = ".qubico-journal.sqlite"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def add_parser(sub: Any) -> None:
    p = sub.add_parser("batch", help="swap one face into many targets (folder or CSV), resumably")
    p.add_argument("--swap", required=True, help="image providing the face (path or URL)")
    p.add_argument("--targets", required=True, type=Path, help="folder of images, or CSV with a 'target' column")
    p.add_argument("--out", required=True, type=Path, help="folder for the results and the report")
    p.add_argument("--concurrency", type=int, default=None, help="tasks in flight (default: the account's limit)")
    p.add_argument("--journal", type=Path, default=None, help=f"journal file (default: OUT/{JOURNAL_NAME})")
    p.add_argument("--budget", type=float, default=None, help="stop submitting before spend exceeds USD")
    p.add_argument("--resume", action="store_true", help="continue a run whose journal exists")
    p.add_argument("--resubmit-uncertain", action="store_true", help="resubmit jobs that may have been created")
    p.add_argument("--upload", choices=("auto", "always", "never"), default="auto")


def read_manifest(path: Path) -> list[tuple[str, str | None, str | None]]:
    """(target, swap or None, key or None) rows from a CSV with a `target` column.

    Relative paths are relative to the CSV's folder. Raises `InvalidInputError` naming the line.
    """
    too_big = InvalidInputError(f"{path}: manifest over {MAX_MANIFEST_BYTES // 1_048_576} MB")
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_MANIFEST_BYTES:
                raise too_big  # refused without reading it
            chunks: list[bytes] = []  # read in pieces up to the cap: a pipe or /dev/zero has no size
            size = 0
            while size <= MAX_MANIFEST_BYTES and (chunk := f.read(min(1 << 20, MAX_MANIFEST_BYTES + 1 - size))):
                chunks.append(chunk)
                size += len(chunk)
            raw = b"".join(chunks)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise too_big
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    rows: list[tuple[str, str | None, str | None]] = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "target" not in fields:
            raise InvalidInputError(f"{path}: the first line must name a 'target' column (got {fields[:5]})")
        reader.fieldnames = fields
        for row in reader:
            target = (row.get("target") or "").strip()
            if not target:
                raise InvalidInputError(f"{path}, line {reader.line_num}: empty target")
            rows.append(
                (
                    _resolve(path.parent, target),
                    _opt(path.parent, row.get("swap")),
                    _opt(None, row.get("key")),
                )
            )
    except csv.Error as exc:
        raise InvalidInputError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise InvalidInputError(f"{path}: no targets")
    return rows


def _resolve(base: Path, value: str) -> str:
    if value.lower().startswith(("http://", "https://", "data:")):
        return value
    candidate = Path(value)
    return str(candidate if candidate.is_absolute() else base / candidate)


def _opt(base: Path | None, value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return _resolve(base, value.strip()) if base is not None else value.strip()


def _targets(path: Path) -> list[tuple[str, str | None, str | None]]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InvalidInputError(f"{path}: no .jpg/.jpeg/.png/.webp files")
        return [(str(f), None, None) for f in files]
    if path.suffix.lower() == ".csv":
        return read_manifest(path)
    raise InvalidInputError(f"{path}: --targets must be a folder or a .csv manifest")


def _out_name(target: str, index: int, suffix: str) -> str:
    stem = Path(target.split("?", 1)[0]).stem if not target.startswith("data:") else f"target-{index}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).strip("._") or f"target-{index}"
    return f"{safe}-swapped{suffix}"


class _ProgressLine:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and p.done != p.total:
            return
        self.last = now
        eta = f"{p.eta:.0f}s" if p.eta is not None else "?"
        total = f"/{p.total}" if p.total is not None else ""
        line = (
            f"{p.done}{total} done ({p.succeeded} ok, {p.failed} failed, {p.uncertain} uncertain, "
            f"{p.skipped} skipped), {p.in_flight} in flight, {p.rate:.1f}/s, ETA {eta}, ${p.spend_usd:.3f}"
        )
        self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
        self.stream.flush()


async def run_batch(args: argparse.Namespace, stream: TextIO = sys.stderr) -> int:
    """Run the batch described by the parsed arguments; returns the exit status."""
    out: Path = args.out
    rows = await anyio.to_thread.run_sync(_targets, args.targets)
    Image.coerce(args.swap)  # fail now, not per job, if the face is unusable
    journal: Path = args.journal or out / JOURNAL_NAME
    if await anyio.Path(journal).exists() and not args.resume:
        raise InvalidInputError(f"{journal} exists: pass --resume to continue that run, or delete it")
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    names = {i: _out_name(t, i, "") for i, (t, _, _) in enumerate(rows)}

    def jobs() -> Iterator[Job]:
        for target, swap, key in rows:
            yield Job(FaceSwap(target, swap or args.swap), key=key)

    progress = _ProgressLine(stream)
    failures = 0
    limiter = anyio.CapacityLimiter(8)
    async with (
        QubicoClient(base_url=args.base_url, upload_url=args.upload_url) as client,
        await anyio.open_file(out / "report.jsonl", "a") as report,
    ):

        async def save(outcome: Outcome) -> None:
            nonlocal failures
            path: str | None = None
            task = outcome.task
            if task is not None and task.result_url and outcome.status in ("succeeded", "skipped"):
                suffix = Path(task.result_url.split("?", 1)[0]).suffix or ".jpg"
                dest = out / (names[outcome.index] + suffix)
                try:
                    async with limiter:
                        if not await anyio.Path(dest).exists():
                            await client.download(task, dest)
                    path = str(dest)
                except Exception as exc:  # the task is paid for: say so, keep going
                    failures += 1
                    stream.write(f"\ncould not download {task.result_url}: {exc}\n")
            record = {
                "index": outcome.index,
                "key": outcome.key,
                "target": rows[outcome.index][0][:500],
                "status": outcome.status,
                "task_id": task.task_id if task else None,
                "result_url": task.result_url if task else None,
                "output": path,
                "reason": outcome.reason,
                "spend_usd": outcome.spend_usd,
                "replayed": outcome.replayed,
            }
            await report.write(json.dumps(record) + "\n")

        async with (
            client.swap_many(
                jobs(),
                concurrency=args.concurrency,
                journal=journal,
                budget_usd=args.budget,
                on_progress=progress,
                upload=args.upload,
                resubmit_uncertain=args.resubmit_uncertain,
            ) as batch,
            anyio.create_task_group() as tg,
        ):
            async for outcome in batch:
                if outcome.status in ("failed", "uncertain"):
                    failures += 1
                tg.start_soon(save, outcome)
    report_ = batch.report
    stream.write("\n")
    if report_ is not None:
        counts = ", ".join(f"{v} {k}" for k, v in report_.counts.items() if v)
        stream.write(
            f"{report_.total} jobs: {counts}; spent ${report_.spend_usd:.3f}; "
            f"{report_.requests.get('create', 0)} creates, {report_.requests.get('other', 0)} other requests; "
            f"{report_.wall_time:.1f}s\n"
        )
        if report_.stopped_reason:
            stream.write(f"stopped submitting: {report_.stopped_reason}\n")
    stream.write(f"results in {out}, report in {out / 'report.jsonl'}\n")
    return 1 if failures else 0


def resume_hint(args: argparse.Namespace) -> str:
    journal = args.journal or args.out / JOURNAL_NAME
    parts = [
        "python -m qubico_async batch",
        f"--swap {args.swap}",
        f"--targets {args.targets}",
        f"--out {args.out}",
    ]
    if args.journal:
        parts.append(f"--journal {journal}")
    if args.concurrency:
        parts.append(f"--concurrency {args.concurrency}")
    if args.budget is not None:
        parts.append(f"--budget {args.budget}")
    return " ".join([*parts, "--resume"])
