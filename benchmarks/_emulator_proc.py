"""The emulator in its own process, for the benchmarks: `python -m benchmarks._emulator_proc`.

Prints `{"base_url", "api_key"}` as one JSON line once serving. Reads stdin: on a `stats` line it
answers the emulator's counters (plus its own CPU time and peak RSS) as one JSON line and exits;
on end of input it exits. Always `processor=identity` (or, with `--tiny-result`, a processor that
returns a 100-byte PNG): never the OpenCV engine.

Every task the emulator sends gets `detail = {"created_unix", "due_unix"}`: the wall-clock time at
which the create answer was built (microseconds after the emulator stored the task) and that time
plus the pending and processing time, i.e. the instant the task really completes. The emulator's own
`meta.*_at` stamps are whole seconds and, because statuses advance lazily when a request looks,
`ended_at` is when a client first saw the task done, not when it was done: useless as ground truth.

`--release-media` drops a finished task's inputs (`input` data URIs and decoded `media`), which the
emulator otherwise keeps for its lifetime (about 2.3x the image bytes per task). It has no option
for that, so this helper clears them through the live `Emulator.tasks` view when it sends a task's
terminal status; the emulator never reads them again after that.

`--durations lognormal:<median>:<p95>:<seed>` gives every task its own processing time, drawn from a
seeded lognormal distribution: the emulator reads `processing_seconds` once per create (into the
task's `StoredTask.processing_seconds`), so `_DrawnDurations` makes that attribute a draw. `due_unix`
then uses the task's own time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread

from benchmarks._common import png_image
from qubico_async.testing import Emulator, StoredTask, SwapJob, identity

API_KEY = "bench-key"
_TINY = png_image(100, 0)


def tiny_result(job: SwapJob) -> bytes:
    """A processor whose results are 100 bytes, so the emulator keeps no copy of big inputs."""
    return _TINY


class _DrawnDurations(Emulator):
    """An emulator whose `processing_seconds` is a fresh lognormal draw each time it is read."""

    draw: Callable[[], float] = staticmethod(lambda: 0.0)

    @property  # type: ignore[override]
    def processing_seconds(self) -> float:
        return self.draw()

    @processing_seconds.setter
    def processing_seconds(self, value: float) -> None:
        pass


def _lognormal(spec: str) -> Callable[[], float]:
    """`lognormal:<median>:<p95>:<seed>` as a function returning seeded draws."""
    _, median, p95, seed = spec.split(":")
    rng = random.Random(int(seed))
    mu, sigma = math.log(float(median)), math.log(float(p95) / float(median)) / 1.6449
    return lambda: rng.lognormvariate(mu, sigma)


async def serve(processing_seconds: float, tiny: bool, release_media: bool, durations: str | None) -> None:
    created: dict[str, float] = {}
    view: Mapping[str, StoredTask] = {}

    def stamp(data: dict[str, Any]) -> dict[str, Any]:
        task_id = data["task_id"]
        at = created.setdefault(task_id, time.time())  # the first answer about a task is its create
        stored = view.get(task_id)
        took = stored.pending_seconds + stored.processing_seconds if stored is not None else processing_seconds
        data["detail"] = {"created_unix": at, "due_unix": at + took}
        if (
            release_media
            and str(data["status"]).lower() in ("completed", "failed")
            and stored is not None
            and stored.media
        ):
            stored.media.clear()
            stored.input.clear()
        return data

    cls: type[Emulator] = Emulator
    if durations is not None and durations.startswith("lognormal:"):
        cls = type("DrawnDurations", (_DrawnDurations,), {"draw": staticmethod(_lognormal(durations))})
    elif durations is not None:
        processing_seconds = float(durations)
    emu = cls(
        api_key=API_KEY,
        processing_seconds=processing_seconds,
        processor=tiny_result if tiny else identity,
        task_transform=stamp,
        max_concurrent_task_count=64,
    )
    async with emu:
        view = emu.tasks  # a live read-only view of the task store: no per-request scan
        print(json.dumps({"base_url": emu.base_url, "api_key": emu.api_key}), flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            if line.strip() == "stats":
                break
        stats = emu.stats
        usage = resource.getrusage(resource.RUSAGE_SELF)
        answer = {
            "creates": stats.creates,
            "gets": stats.gets,
            "account_requests": stats.account_requests,
            "requests_by_status": stats.requests_by_status,
            "tasks_by_status": stats.tasks_by_status,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024,
        }
        print(json.dumps(answer), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processing-seconds", type=float, default=1.0)
    parser.add_argument("--tiny-result", action="store_true")
    parser.add_argument("--release-media", action="store_true")
    parser.add_argument("--durations", default=None, help="seconds, or lognormal:<median>:<p95>:<seed>")
    args = parser.parse_args()
    anyio.run(serve, args.processing_seconds, args.tiny_result, args.release_media, args.durations)


if __name__ == "__main__":
    main()
