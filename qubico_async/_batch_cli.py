"""`python -m qubico_async batch`: swap one face into a folder (or CSV) of targets, resumably.

Progress: on a terminal with the `cli` extra (rich) installed, a live bar; otherwise a plain
line (redrawn on a terminal, a new line every few seconds when not a terminal). Progress, errors
and the summary go to stderr; with `--json` stdout carries one JSON line per job and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import json
import os
import re
import secrets
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread

from ._batch_runner import BatchRun
from ._config import DEFAULT_BASE_URL, env_api_key
from .batch import Job, Progress
from .client import QubicoClient
from .errors import InvalidInputError, QubicoError
from .media import Image
from .models import Task
from .requests import FaceSwap

__all__ = ["JOURNAL_NAME", "add_parser", "make_display", "read_manifest", "run_batch"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
JOURNAL_NAME = ".qubico-journal.sqlite"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


DESCRIPTION = f"""\
Swap one face (--swap) into every image of a folder, or every row of a CSV manifest (--targets),
several tasks at a time, saving the results and report.jsonl (one line per job) in --out.

A journal ({JOURNAL_NAME} in --out) makes the run resumable: after Ctrl-C or a crash, run the
same command with --resume; finished jobs are skipped, submitted ones are polled, nothing is
paid twice. A CSV manifest has a 'target' column and optional 'swap' and 'key' columns; relative
paths are relative to the CSV's folder.

exit status: 0 every job succeeded; 1 some failed, are uncertain or could not be saved;
2 the command line or its inputs are unusable (nothing was sent); 130 interrupted.
"""


def add_parser(sub: Any, **kwargs: Any) -> None:
    p = sub.add_parser(
        "batch", help="swap one face into many targets (folder or CSV), resumably", description=DESCRIPTION, **kwargs
    )
    p.add_argument("--swap", required=True, metavar="FACE", help="image providing the face (path or http(s) URL)")
    p.add_argument(
        "--targets", required=True, type=Path, metavar="PATH", help="folder of images, or CSV with a 'target' column"
    )
    p.add_argument("--out", required=True, type=Path, metavar="FOLDER", help="folder for the results and the report")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="tasks in flight (default: the account's limit, else 8)",
    )
    p.add_argument(
        "--journal", type=Path, default=None, metavar="FILE", help=f"journal file (default: OUT/{JOURNAL_NAME})"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="USD",
        help="stop submitting before the spend would exceed USD (default: no limit)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run whose journal exists")
    p.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit again (and pay again) jobs whose create may or may not have reached the service",
    )
    p.add_argument(
        "--upload",
        choices=("auto", "always", "never"),
        default="auto",
        help="how local images reach the service: auto (sent inline, uploaded above 2 MB), "
        "always (File Upload API, needs the Creator plan) or never (always inline)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line per job to stdout, for scripts (progress and summary stay on stderr)",
    )


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


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_text(p: Progress, budget: float | None) -> str:
    """One line: done of total, counts by status, in flight, rate, ETA and spend (of the budget)."""
    total = f"/{p.total}" if p.total is not None else ""
    eta = _duration(p.eta) if p.eta is not None else "?"
    spend = f"${p.spend_usd:.3f} of ${budget:.2f} budget" if budget is not None else f"${p.spend_usd:.3f} spent"
    return (
        f"{p.done}{total} done ({p.succeeded} ok, {p.failed} failed, {p.uncertain} uncertain, "
        f"{p.skipped} skipped), {p.in_flight} in flight, {p.rate:.2f}/s, ETA {eta}, {spend}"
    )


PLAIN_INTERVAL = 5.0
"""Seconds between plain progress lines when stderr is not a terminal."""


class PlainDisplay:
    """Progress as text: one line redrawn on a terminal, else a new line every `interval` seconds."""

    def __init__(self, stream: TextIO, budget: float | None, *, interval: float | None = None) -> None:
        self.stream = stream
        self.budget = budget
        self.tty = _isatty(stream)
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.last: float | None = None
        self.drawn = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        finished = p.total is not None and p.done >= p.total
        if not self.tty and self.last is not None and now - self.last < self.interval and not finished:
            return
        self.last = now
        line = progress_text(p, self.budget)
        self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
        self.stream.flush()
        self.drawn = self.tty

    def message(self, text: str) -> None:
        """A line of its own (a download error), not mixed into the progress line."""
        self.stream.write(("\n" if self.drawn else "") + text + "\n")
        self.stream.flush()
        self.drawn = False

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


class RichDisplay:
    """A live rich progress bar on the terminal (the `cli` extra): bar, counts, rate, ETA, spend."""

    interval = 0.5

    def __init__(self, stream: TextIO, budget: float | None, rich_progress: Any, rich_console: Any) -> None:
        self.budget = budget
        self.console = rich_console.Console(file=stream)
        column = importlib.import_module("rich.table").Column
        self.bar = rich_progress.Progress(
            rich_progress.BarColumn(bar_width=20),
            rich_progress.MofNCompleteColumn(table_column=column(no_wrap=True)),
            rich_progress.TextColumn("{task.fields[counts]}", table_column=column(no_wrap=True, overflow="ellipsis")),
            console=self.console,
            redirect_stdout=False,  # stdout may be carrying --json lines
            redirect_stderr=False,
        )
        self.task = self.bar.add_task("batch", total=None, counts="starting")
        self.bar.start()

    def __call__(self, p: Progress) -> None:
        eta = _duration(p.eta) if p.eta is not None else "?"
        budget = f"/${self.budget:.2f}" if self.budget is not None else ""
        skipped = f" {p.skipped} skipped" if p.skipped else ""
        counts = (
            f"ETA {eta} | ${p.spend_usd:.2f}{budget} | [green]{p.succeeded} ok[/] [red]{p.failed} failed[/] "
            f"[yellow]{p.uncertain} uncertain[/]{skipped} | {p.in_flight} running | {p.rate:.1f}/s"
        )
        self.bar.update(self.task, total=p.total, completed=p.done, counts=counts)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.bar.stop()


Display = PlainDisplay | RichDisplay


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def make_display(stream: TextIO, budget: float | None) -> Display:
    """A rich bar on a terminal when the `cli` extra is installed, else plain lines (with a hint)."""
    if not _isatty(stream):
        return PlainDisplay(stream, budget)
    try:
        rich_progress = importlib.import_module("rich.progress")
        rich_console = importlib.import_module("rich.console")
    except ImportError:
        stream.write('(for a live progress bar: pip install "qubico_async[cli]")\n')
        return PlainDisplay(stream, budget)
    return RichDisplay(stream, budget, rich_progress, rich_console)


class _Preflight(Exception):
    """A problem with the command line or its inputs, found before anything is sent (exit 2)."""


def _is_remote(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://", "data:"))


def _preflight(args: argparse.Namespace) -> list[tuple[str, str | None, str | None]]:
    """Everything that would make every job fail, checked before a journal exists (in a thread)."""
    if env_api_key() is None:
        raise _Preflight("no API key: set QUBICO_API_KEY (or PIAPI_API_KEY) in the environment")
    if args.concurrency is not None and args.concurrency < 1:
        raise _Preflight(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.budget is not None and not args.budget >= 0:
        raise _Preflight(f"--budget must be a non-negative amount in USD, got {args.budget}")
    targets: Path = args.targets
    if not targets.exists():
        raise _Preflight(f"--targets {targets}: does not exist (give a folder of images or a .csv manifest)")
    try:
        rows = _targets(targets)
    except InvalidInputError as exc:
        raise _Preflight(f"--targets: {exc}") from None
    if not _is_remote(args.swap) and not os.path.isfile(args.swap):
        raise _Preflight(f"--swap {args.swap}: no such file")
    missing = [
        path
        for target, swap, _ in rows
        for path in (target, swap)
        if path is not None and not _is_remote(path) and not os.path.isfile(path)
    ]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _Preflight(f"--targets {targets}: {missing[0]} is not a file{more}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise _Preflight(f"--out {out}: exists and is not a folder")
    journal: Path = args.journal or out / JOURNAL_NAME
    if journal.is_dir():
        raise _Preflight(f"journal {journal} is a folder: give --journal a file path")
    if journal.exists() and not args.resume:
        raise _Preflight(f"journal {journal} exists: add --resume to continue that run, or delete it to start over")
    return rows


def _unique_names(rows: list[tuple[str, str | None, str | None]]) -> dict[int, str]:
    """Output stems per job; two targets with the same stem (a/x.png, b/x.jpg) get distinct ones."""
    names: dict[int, str] = {}
    used: set[str] = set()
    for i, (target, _, _) in enumerate(rows):
        name = _out_name(target, i, "")
        if name.lower() in used:
            name = f"{name}-{i}"
        used.add(name.lower())
        names[i] = name
    return names


def _load_report(path: Path, rows: list[tuple[str, str | None, str | None]]) -> dict[int, dict[str, Any]]:
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


def _write_report(path: Path, records: dict[int, dict[str, Any]]) -> None:
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


def _summary_reason(text: str) -> str:
    """One line per kind of failure: task ids replaced, so that the same cause counts once."""
    line = _UUID.sub("<id>", " ".join(text.split()))
    return line if len(line) <= 160 else line[:157] + "..."


async def run_batch(args: argparse.Namespace, stream: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the batch described by the parsed arguments; returns the exit status.

    Progress, errors and the summary go to `stream` (default: stderr); with `args.json`, one
    JSON line per job goes to `stdout` (default: sys.stdout) once its result is saved.

    0: every job succeeded; 1: some failed, are uncertain, or a result could not be saved;
    2: the command line or its inputs are unusable (nothing was sent, no journal was made).
    """
    stream = stream if stream is not None else sys.stderr
    try:
        rows = await anyio.to_thread.run_sync(_preflight, args)
        try:
            swap = Image.coerce(args.swap)
            if not swap.is_url:
                await swap.load()  # fail now, not per job, if the face is unusable
        except InvalidInputError as exc:
            raise _Preflight(f"--swap: {exc}") from None
    except _Preflight as exc:
        stream.write(f"error: {exc}\n")
        return 2
    return await _run(args, rows, stream, stdout if stdout is not None else sys.stdout)


async def _run(
    args: argparse.Namespace, rows: list[tuple[str, str | None, str | None]], stream: TextIO, stdout: TextIO
) -> int:
    out: Path = args.out
    journal: Path = args.journal or out / JOURNAL_NAME
    report_path = out / "report.jsonl"
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    names = _unique_names(rows)
    records: dict[int, dict[str, Any]] = {}
    if args.resume:
        records = await anyio.to_thread.run_sync(_load_report, report_path, rows)

    jobs = [Job(FaceSwap(target, swap or args.swap), key=key) for target, swap, key in rows]  # a list: a total
    json_lines = bool(getattr(args, "json", False))

    def emit(record: dict[str, Any]) -> None:
        if json_lines:
            stdout.write(json.dumps(record) + "\n")
            stdout.flush()

    reasons: Counter[str] = Counter()
    received = 0
    download_failures = 0
    report_failed = False
    limiter = anyio.CapacityLimiter(8)
    batch = None
    display = make_display(stream, args.budget)
    try:
        async with QubicoClient(base_url=args.base_url, upload_url=args.upload_url) as client:

            async def save(index: int, task: Task, url: str, record: dict[str, Any]) -> None:
                nonlocal download_failures
                suffix = Path(url.split("?", 1)[0]).suffix or ".jpg"
                dest = out / (names[index] + suffix)
                try:
                    async with limiter:
                        if not await anyio.Path(dest).exists():
                            await client.download(task, dest)
                except Exception as exc:  # the task is paid for: say so, keep going
                    download_failures += 1
                    reason = f"download failed: {exc}"
                    record["download_error"] = reason[:500]
                    reasons[_summary_reason(reason)] += 1
                    display.message(f"could not download {url}: {exc}")
                else:
                    record["output"] = str(dest)
                emit(record)

            batch = client.swap_many(
                jobs,
                concurrency=args.concurrency,
                journal=journal,
                budget_usd=args.budget,
                on_progress=display,
                upload=args.upload,
                resubmit_uncertain=args.resubmit_uncertain,
            )
            failure: QubicoError | None = None
            ticker = anyio.CancelScope()

            async def tick(run: BatchRun) -> None:
                """Progress between outcomes too: a slow batch still shows it is alive."""
                with ticker:
                    while True:
                        await anyio.sleep(display.interval)
                        display(run.progress())

            async with batch, anyio.create_task_group() as tg:
                tg.start_soon(tick, batch)
                try:
                    async for outcome in batch:
                        received += 1
                        task = outcome.task
                        record: dict[str, Any] = {
                            "index": outcome.index,
                            "key": outcome.key,
                            "target": rows[outcome.index][0][:500],
                            "status": outcome.status,
                            "task_id": task.task_id if task else None,
                            "result_url": task.result_url if task else None,
                            "output": None,
                            "reason": outcome.reason,
                            "spend_usd": outcome.spend_usd,
                            "replayed": outcome.replayed,
                        }
                        records[outcome.index] = record  # one writer: this loop; one line per job
                        if outcome.status in ("failed", "uncertain"):
                            reasons[_summary_reason(f"{outcome.status}: {outcome.reason}")] += 1
                        if task is not None and task.result_url and outcome.status in ("succeeded", "skipped"):
                            tg.start_soon(save, outcome.index, task, task.result_url, record)
                        else:
                            emit(record)
                except QubicoError as exc:  # caught here: leaving the task group would wrap it
                    failure = exc
                finally:
                    ticker.cancel()
            if failure is not None:
                raise failure
    except QubicoError as exc:
        if received == 0:  # the batch could not start (e.g. an unusable journal): nothing was sent
            stream.write(f"\nerror: {exc}\n")
            return 2
        stream.write(f"\nerror: {exc}\nthe journal keeps what was done; resume with:\n  {resume_hint(args)}\n")
        return 1
    finally:
        display.close()
        if received:
            with anyio.CancelScope(shield=True):  # also when interrupted: the report stays whole
                try:
                    await anyio.to_thread.run_sync(_write_report, report_path, records)
                except OSError as exc:  # the journal still has everything
                    stream.write(f"\ncould not write {report_path}: {exc.strerror or exc}\n")
                    report_failed = True
    report_ = batch.report if batch is not None else None
    stream.write("\n")
    failures = sum(1 for r in records.values() if r["status"] in ("failed", "uncertain")) + download_failures
    failures += report_failed
    if report_ is not None:
        counts = ", ".join(f"{v} {k}" for k, v in report_.counts.items() if v)
        stream.write(
            f"{report_.total} jobs: {counts}; spent ${report_.spend_usd:.3f}; "
            f"{report_.requests.get('create', 0)} creates, {report_.requests.get('other', 0)} other requests; "
            f"{report_.wall_time:.1f}s\n"
        )
        if report_.stopped_reason:
            stream.write(f"stopped submitting: {report_.stopped_reason}\n")
    if reasons:
        stream.write("failures by reason:\n")
        for reason, count in reasons.most_common(5):
            stream.write(f"  {count:>5} x {reason}\n")
        if len(reasons) > 5:
            stream.write(f"  ... and {len(reasons) - 5} more reasons (see the report)\n")
    uncertain = report_.counts.get("uncertain", 0) if report_ is not None else 0
    if report_ is not None and (report_.stopped_reason or uncertain):
        stream.write(f"to continue this run:\n  {resume_hint(args)}\n")
        if uncertain and not args.resubmit_uncertain:
            stream.write(
                f"{uncertain} uncertain job(s) may already have been created (and paid for); "
                "add --resubmit-uncertain to submit them again\n"
            )
    stream.write(f"results in {out}, report in {report_path}\n")
    return 1 if failures else 0


def resume_hint(args: argparse.Namespace) -> str:
    """The command that continues this run: every option given, paths absolute, shell-quoted."""

    def path(value: str | os.PathLike[str]) -> str:
        return os.path.abspath(value)

    cmd = [sys.executable, "-m", "qubico_async"]
    if getattr(args, "verbose", False):
        cmd.append("-v")
    base_url = getattr(args, "base_url", DEFAULT_BASE_URL)
    if base_url != DEFAULT_BASE_URL:
        cmd += ["--base-url", base_url]
    if getattr(args, "upload_url", None):
        cmd += ["--upload-url", args.upload_url]
    swap = args.swap if _is_remote(args.swap) else path(args.swap)
    cmd += ["batch", "--swap", swap, "--targets", path(args.targets), "--out", path(args.out)]
    if args.journal:
        cmd += ["--journal", path(args.journal)]
    if args.concurrency is not None:
        cmd += ["--concurrency", str(args.concurrency)]
    if args.budget is not None:
        cmd += ["--budget", repr(args.budget)]
    if args.upload != "auto":
        cmd += ["--upload", args.upload]
    if args.resubmit_uncertain:
        cmd.append("--resubmit-uncertain")
    return shlex.join([*cmd, "--resume"])
