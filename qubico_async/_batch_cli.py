"""`python -m qubico_async batch`: the command line, and the run that swaps one face into many targets.

The run is resumable (a journal in --out). Its pieces live beside it: the targets and the
preflight in `_batch_cli_inputs`, the progress display in `_batch_cli_display`, report.jsonl in
`_batch_cli_report`. Progress, errors and the summary go to stderr; with `--json` stdout carries
one JSON line per job and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread

from ._batch_cli_display import make_display
from ._batch_cli_inputs import JOURNAL_NAME, PreflightError, is_remote, preflight, read_manifest
from ._batch_cli_report import job_record, load_report, summary_reason, write_report
from ._batch_runner import BatchRun
from ._config import DEFAULT_BASE_URL
from .batch import Job
from .client import QubicoClient
from .errors import InvalidInputError, QubicoError
from .media import Image
from .models import Task
from .requests import FaceSwap

__all__ = ["JOURNAL_NAME", "add_parser", "make_display", "read_manifest", "resume_hint", "run_batch"]
# JOURNAL_NAME, make_display and read_manifest live in the modules above; still importable from here.


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


def _out_name(target: str, index: int, suffix: str) -> str:
    stem = Path(target.split("?", 1)[0]).stem if not target.startswith("data:") else f"target-{index}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).strip("._") or f"target-{index}"
    return f"{safe}-swapped{suffix}"


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


async def run_batch(args: argparse.Namespace, stream: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the batch described by the parsed arguments; returns the exit status.

    Progress, errors and the summary go to `stream` (default: stderr); with `args.json`, one
    JSON line per job goes to `stdout` (default: sys.stdout) once its result is saved.

    0: every job succeeded; 1: some failed, are uncertain, or a result could not be saved;
    2: the command line or its inputs are unusable (nothing was sent, no journal was made).
    """
    stream = stream if stream is not None else sys.stderr
    try:
        rows = await anyio.to_thread.run_sync(preflight, args)
        try:
            swap = Image.coerce(args.swap)
            if not swap.is_url:
                await swap.load()  # fail now, not per job, if the face is unusable
        except InvalidInputError as exc:
            raise PreflightError(f"--swap: {exc}") from None
    except PreflightError as exc:
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
        records = await anyio.to_thread.run_sync(load_report, report_path, rows)

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
                    reasons[summary_reason(reason)] += 1
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
                        record = job_record(outcome, rows[outcome.index][0])
                        records[outcome.index] = record  # one writer: this loop; one line per job
                        if outcome.status in ("failed", "uncertain"):
                            reasons[summary_reason(f"{outcome.status}: {outcome.reason}")] += 1
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
                    await anyio.to_thread.run_sync(write_report, report_path, records)
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
    swap = args.swap if is_remote(args.swap) else path(args.swap)
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
