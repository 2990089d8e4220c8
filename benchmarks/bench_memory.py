"""Issue 3: peak RSS of `swap_many` is bounded by the concurrency, not by the number of jobs.

Jobs are face swaps of two 5 MB PNG-header files each (cycled through 20 distinct files in a temp
folder, so every job reads both files and base64-encodes them: `upload="never"`), at concurrency 16,
for N = 100 and N = 1,000, plus N = 100 at concurrency 4 to show the peak follows the concurrency.
Each configuration runs in a fresh worker process (peak RSS = `ru_maxrss`) against a fresh emulator in
another process (`processing_seconds=0`, a processor with 100-byte results, and finished tasks' inputs
released: see `_emulator_proc`, else the emulator would keep ~12 MB per task).

`BENCH_MEMORY_RUNS=100x16,1000x16` overrides the (jobs x concurrency) runs.
Worker: `python -m benchmarks.bench_memory --worker --jobs N --concurrency C --dir D --base-url URL
--api-key K`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import cpu_seconds, emulator_process, png_image, print_table, rss_mb, run_worker

IMAGE_BYTES = 5 * 1024 * 1024
DISTINCT_FILES = 20
DEFAULT_RUNS = "100x16,1000x16,100x4"


async def run(n: int, concurrency: int, files: list[Path], base_url: str, api_key: str) -> dict[str, Any]:
    from qubico_async import FaceSwap, PollPolicy, QubicoClient

    jobs = (FaceSwap(files[i % len(files)], files[(i + 7) % len(files)]) for i in range(n))
    poll = PollPolicy(initial=0.05, factor=2.0, max_interval=1.0)  # short waits: most slots are creating
    counts: dict[str, int] = {}
    async with (
        QubicoClient(api_key, base_url=base_url, max_connections=concurrency) as client,
        client.swap_many(jobs, concurrency=concurrency, upload="never", poll=poll) as batch,
    ):
        async for outcome in batch:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return {"counts": counts}


def worker(n: int, concurrency: int, folder: Path, base_url: str, api_key: str) -> dict[str, Any]:
    rss_start, _ = rss_mb()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    files = sorted(folder.glob("*.png"))
    result = asyncio.run(run(n, concurrency, files, base_url, api_key))
    rss_end, rss_peak = rss_mb()
    return {
        **result,
        "jobs": n,
        "concurrency": concurrency,
        "wall_s": time.monotonic() - wall0,
        "cpu_s": cpu_seconds() - cpu0,
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_peak_mb": rss_peak,
    }


def main() -> None:
    spec = os.environ.get("BENCH_MEMORY_RUNS", DEFAULT_RUNS)
    runs = [tuple(map(int, r.split("x"))) for r in spec.split(",")]
    print(
        f"2 x {IMAGE_BYTES // 2**20} MB images per job (from {DISTINCT_FILES} files), inline base64, "
        "emulator processing 0 s; one worker process per row",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="qubico-bench-") as tmp:
        folder = Path(tmp)
        for i in range(DISTINCT_FILES):
            (folder / f"img{i:02d}.png").write_bytes(png_image(IMAGE_BYTES, i))
        for n, concurrency in runs:
            with emulator_process(processing_seconds=0.0, tiny_result=True, release_media=True) as emu:
                args = ["--jobs", str(n), "--concurrency", str(concurrency), "--dir", tmp, "--base-url"]
                r = run_worker("benchmarks.bench_memory", [*args, emu.base_url, "--api-key", emu.api_key])
                emu_stats = emu.stats()
            ok = r["counts"].get("succeeded", 0)
            print(f"  {n} jobs x {concurrency}: {r['wall_s']:.1f} s wall, {r['counts']}", flush=True)
            rows.append([
                n, concurrency, ok, r["wall_s"], 1000 * r["cpu_s"] / max(1, ok), r["rss_start_mb"],
                r["rss_peak_mb"], r["rss_peak_mb"] - r["rss_start_mb"], r["rss_end_mb"],
                emu_stats["peak_rss_mb"],
            ])  # fmt: skip
    headers = ["jobs", "concurrency", "ok", "wall s", "CPU ms/job", "RSS start MB", "RSS peak MB",
               "peak - start MB", "RSS end MB", "emulator peak RSS MB"]  # fmt: skip
    print_table(headers, rows)
    by_run = {(row[0], row[1]): row for row in rows}
    small, big = by_run.get((100, 16)), by_run.get((1000, 16))
    if small is not None and big is not None:
        growth = float(big[7]) / max(1.0, float(small[7]))
        met = growth <= 1.25 and big[2] == 1000
        print(f"peak above start, 1,000 vs 100 jobs at concurrency 16: {growth:.2f}x (bounded: <= 1.25x): "
              f"{'MET' if met else 'NOT MET'}", flush=True)  # fmt: skip


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    result = worker(args.jobs, args.concurrency, args.dir, args.base_url, args.api_key)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _worker_main()
