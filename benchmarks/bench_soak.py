"""Soak: 20,000 tasks through swap_many with faults on; RSS and open file descriptors stay flat.

The emulator runs in its own process (so only the client is measured) with random 5xx answers,
a little latency and short processing. The client runs ten rounds of 2,000 jobs on one client
and prints its resident memory and open descriptors after each round.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import anyio

from qubico_async import FaceSwap, PollPolicy, QubicoClient, RetryPolicy

ROUNDS = int(os.environ.get("SOAK_ROUNDS", "10"))
PER_ROUND = int(os.environ.get("SOAK_PER_ROUND", "2000"))
CONCURRENCY = 64

EMULATOR = r"""
import anyio, sys
from qubico_async.testing import Emulator, Faults, identity

async def main():
    faults = Faults(error_rate=0.03, latency=0.001)
    async with Emulator(api_key="soak", processor=identity, processing_seconds=0.05, faults=faults) as emu:
        print(emu.base_url, flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


def _png(i: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc + f"soak-{i}".encode()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _soak(base_url: str) -> list[tuple[int, float, int, Counter[str]]]:
    face = _png(-1)
    rows: list[tuple[int, float, int, Counter[str]]] = []
    retry = RetryPolicy(max_attempts=6, base=0.01, cap=0.1)
    poll = PollPolicy(initial=0.05, factor=1.5, max_interval=0.5, timeout=60)
    async with QubicoClient(api_key="soak", base_url=base_url, retry=retry, poll=poll, max_connections=64) as client:
        for r in range(ROUNDS):

            def jobs(r: int = r) -> Iterator[FaceSwap]:
                for i in range(r * PER_ROUND, (r + 1) * PER_ROUND):
                    yield FaceSwap(_png(i), face)

            counts: Counter[str] = Counter()
            async for outcome in client.swap_many(jobs(), concurrency=CONCURRENCY, upload="never"):
                counts[outcome.status] += 1
            rows.append(((r + 1) * PER_ROUND, _rss_mb(), _fds(), counts))
            print(
                f"  {rows[-1][0]:>6} tasks  RSS {rows[-1][1]:7.1f} MB  fds {rows[-1][2]:4d}  {dict(counts)}", flush=True
            )
    return rows


def main() -> None:
    proc = subprocess.Popen([sys.executable, "-c", EMULATOR], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        started = time.monotonic()
        print(f"soak: {ROUNDS} x {PER_ROUND} tasks, concurrency {CONCURRENCY}, 3% random 5xx, emulator {base_url}")
        rows = anyio.run(_soak, base_url)
        elapsed = time.monotonic() - started
        first, last = rows[0], rows[-1]
        total = sum((row[3] for row in rows), Counter())
        accounted = sum(total.values()) == ROUNDS * PER_ROUND
        rss_flat = last[1] <= first[1] * 1.15 + 10
        fds_flat = abs(last[2] - first[2]) <= 4
        print(f"done in {elapsed:.0f}s; outcomes {dict(total)}; every job accounted for: {accounted}")
        print(f"RSS after round 1: {first[1]:.1f} MB, after round {ROUNDS}: {last[1]:.1f} MB -> flat: {rss_flat}")
        print(f"open fds after round 1: {first[2]}, after round {ROUNDS}: {last[2]} -> flat: {fds_flat}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
