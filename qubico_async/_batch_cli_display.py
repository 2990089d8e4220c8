"""Progress displays for the `batch` command: a live rich bar on a terminal, else plain lines.

The rich bar needs the `cli` extra; without it, or off a terminal, `PlainDisplay` writes one
line (redrawn on a terminal, a new line every `PLAIN_INTERVAL` seconds otherwise).
"""

from __future__ import annotations

import importlib
import time
from typing import Any, TextIO

from .batch import Progress

__all__ = ["PLAIN_INTERVAL", "Display", "PlainDisplay", "RichDisplay", "make_display", "progress_text"]


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
