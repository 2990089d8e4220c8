"""Shared helpers for the benchmarks (not a benchmark: no `bench_` prefix).

The emulator runs in its own process (`benchmarks._emulator_proc`) and every measured configuration
runs in a fresh worker process, so CPU time and peak RSS (`ru_maxrss` only ever grows) are the
client's alone. Everything listens on and talks to 127.0.0.1.
"""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "EmulatorProcess",
    "cpu_seconds",
    "emulator_process",
    "percentile",
    "png_image",
    "print_table",
    "rss_mb",
    "run_worker",
]

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: the working directory of the subprocesses (`python -m benchmarks...`)."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_image(size: int, salt: int, width: int = 64, height: int = 64) -> bytes:
    """About `size` bytes of PNG: signature, a real IHDR, a private ancillary chunk of padding that
    differs with `salt`, then IEND: a whole black image (the SDK and the emulator check the image
    data against the header), padded to `size`."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pad_len = max(0, size - len(_PNG_SIGNATURE) - 3 * 12 - len(ihdr))
    stamp = salt.to_bytes(8, "big")
    padding = (stamp * (pad_len // 8 + 1))[:pad_len]
    pixels = _chunk(b"IDAT", zlib.compress(bytes(height * (1 + 3 * width))))  # whole: the SDK checks it
    return _PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + pixels + _chunk(b"bnPd", padding) + _chunk(b"IEND", b"")


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc (Linux) and `ru_maxrss` (KB)."""
    current = 0.0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class EmulatorProcess:
    """A running `benchmarks._emulator_proc`: its URL and key, and its counters on request."""

    def __init__(self, proc: subprocess.Popen[str], base_url: str, api_key: str) -> None:
        self._proc = proc
        self.base_url = base_url
        self.api_key = api_key

    def stats(self) -> dict[str, Any]:
        """Ask the emulator for its counters (it answers one JSON line, then exits)."""
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write("stats\n")
        self._proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._proc.stdout.readline())
        return answer


@contextmanager
def emulator_process(
    *, processing_seconds: float, tiny_result: bool = False, release_media: bool = True, durations: str | None = None
) -> Iterator[EmulatorProcess]:
    """Start an emulator in its own process; it exits when its stdin closes.

    `durations` overrides `processing_seconds`: a number of seconds, or `lognormal:<median>:<p95>:<seed>`.
    """
    cmd = [sys.executable, "-m", "benchmarks._emulator_proc", "--processing-seconds", str(processing_seconds)]
    if durations is not None:
        cmd += ["--durations", durations]
    if tiny_result:
        cmd.append("--tiny-result")
    if release_media:
        cmd.append("--release-media")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "{}")
        if "base_url" not in ready:
            raise RuntimeError("the emulator process did not start")
        yield EmulatorProcess(proc, ready["base_url"], ready["api_key"])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # only our own child, by its handle
            proc.wait()


def run_worker(module: str, args: Sequence[str], timeout: float = 900) -> dict[str, Any]:
    """Run `python -m <module> --worker <args>` and return the JSON object on its last stdout line."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", module, "--worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result.setdefault("process_seconds", time.monotonic() - started)
    return result


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pastes straight into RESULTS.md)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    print("\n".join(lines), flush=True)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
