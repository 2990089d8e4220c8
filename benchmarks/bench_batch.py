"""Issue 4: `swap_many` against a minimal raw-aiohttp loop doing the same work, in the same run.

Each configuration runs in a fresh worker process (clean CPU and peak-RSS figures) against a fresh
emulator in another process (`processing_seconds=1.0`, identity processor): 100 KB distinct PNG-header
images (target and swap per job, generated lazily), concurrency 64, inline base64 (`upload="never"`).

Per side: client CPU per task (getrusage user+sys of the worker, image generation subtracted), GETs
per task (counted by the client; the emulator's own count is shown beside it), the delay between a
task really completing (emulator create instant + 1.0 s, see `_emulator_proc`) and the client
noticing it, and peak RSS. `BENCH_BATCH_JOBS=200,1000` overrides the job counts (default 2000,10000).

Worker (one configuration): `python -m benchmarks.bench_batch --worker sdk --jobs 2000 --base-url URL
--api-key KEY [--profile out.prof]`; sides: `sdk`, `raw` (GET every 0.25 s from the submit), `raw1s`
(first GET at 1.0 s, then every 0.25 s: as few GETs as a poller that knows the duration).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import json
import os
import time
from array import array
from collections.abc import Iterator
from typing import Any

import aiohttp

from benchmarks._common import (
    cpu_seconds,
    emulator_process,
    percentile,
    png_image,
    print_table,
    rss_mb,
    run_worker,
)

CONCURRENCY = 64
IMAGE_BYTES = 100 * 1024
PROCESSING_SECONDS = 1.0
RAW_INTERVAL = 0.25
MODEL, TASK_TYPE = "Qubico/image-toolkit", "face-swap"
TERMINAL = frozenset({"completed", "failed"})


def images(n: int, gen_cpu: list[float]) -> Iterator[tuple[bytes, bytes]]:
    """(target, swap) per job, distinct, made when asked; their CPU cost is added to `gen_cpu[0]`."""
    for i in range(n):
        t0 = time.thread_time()
        pair = png_image(IMAGE_BYTES, 2 * i), png_image(IMAGE_BYTES, 2 * i + 1)
        gen_cpu[0] += time.thread_time() - t0
        yield pair


async def run_sdk(n: int, base_url: str, api_key: str, gen_cpu: list[float]) -> dict[str, Any]:
    from qubico_async import FaceSwap, QubicoClient

    delays: array[float] = array("d")
    ok = 0
    jobs = (FaceSwap(target, swap) for target, swap in images(n, gen_cpu))
    async with QubicoClient(api_key, base_url=base_url, max_connections=CONCURRENCY) as client:
        async with client.swap_many(jobs, concurrency=CONCURRENCY, upload="never") as batch:
            async for outcome in batch:
                if outcome.ok and outcome.task is not None:
                    ok += 1
                    delays.append(outcome.finished_at - outcome.task.detail["due_unix"])
        report = batch.report
    assert report is not None
    # `concurrency` was given, so no account-info request: every "other" request is a task GET.
    requests = report.requests
    return {"ok": ok, "gets": requests["other"], "creates": requests["create"], "delays": delays}


async def run_raw(n: int, base_url: str, api_key: str, gen_cpu: list[float], first: float) -> dict[str, Any]:
    """The baseline: POST the same JSON, then GET every RAW_INTERVAL (the first after `first` s)."""
    delays: array[float] = array("d")
    counts = {"ok": 0, "gets": 0, "creates": 0}
    slots = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers={"x-api-key": api_key}) as session:

        async def one(target: bytes, swap: bytes) -> None:
            try:
                inputs = {"target_image": _data_uri(target), "swap_image": _data_uri(swap)}
                body = json.dumps({"model": MODEL, "task_type": TASK_TYPE, "input": inputs}).encode()
                headers = {"content-type": "application/json"}
                async with session.post(f"{base_url}/api/v1/task", data=body, headers=headers) as resp:
                    resp.raise_for_status()
                    task_id = (await resp.json())["data"]["task_id"]
                counts["creates"] += 1
                del target, swap, inputs, body  # as the SDK does: hold no media while polling
                wait = first
                while True:
                    await asyncio.sleep(wait)
                    wait = RAW_INTERVAL
                    async with session.get(f"{base_url}/api/v1/task/{task_id}") as resp:
                        resp.raise_for_status()
                        data = (await resp.json())["data"]
                    counts["gets"] += 1
                    if str(data["status"]).lower() in TERMINAL:
                        noticed = time.time()
                        break
                if str(data["status"]).lower() == "completed":
                    counts["ok"] += 1
                    delays.append(noticed - data["detail"]["due_unix"])
            finally:
                slots.release()

        running: set[asyncio.Task[None]] = set()
        for target, swap in images(n, gen_cpu):
            await slots.acquire()
            task = asyncio.create_task(one(target, swap))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
    return {**counts, "delays": delays}


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def worker(side: str, n: int, base_url: str, api_key: str, profile: str | None) -> dict[str, Any]:
    gen_cpu = [0.0]
    if side == "sdk":
        coro = run_sdk(n, base_url, api_key, gen_cpu)
    else:
        coro = run_raw(n, base_url, api_key, gen_cpu, PROCESSING_SECONDS if side == "raw1s" else RAW_INTERVAL)
    rss_base, _ = rss_mb()
    cpu0, main0, wall0 = cpu_seconds(), time.thread_time(), time.monotonic()
    profiler = cProfile.Profile(time.thread_time) if profile else None  # CPU time: immune to other load
    if profiler is not None:
        profiler.enable()
    result = asyncio.run(coro)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile or "")
    cpu, wall = cpu_seconds() - cpu0 - gen_cpu[0], time.monotonic() - wall0
    main_cpu = time.thread_time() - main0 - gen_cpu[0]  # the event loop's thread alone
    delays = result.pop("delays")
    return {
        **result,
        "side": side,
        "jobs": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "main_thread_cpu_s": main_cpu,
        "gen_cpu_s": gen_cpu[0],
        "p50_delay_s": percentile(delays, 50),
        "p95_delay_s": percentile(delays, 95),
        "p99_delay_s": percentile(delays, 99),
        "max_delay_s": max(delays, default=float("nan")),
        "rss_base_mb": rss_base,
        "rss_peak_mb": rss_mb()[1],
    }


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_BATCH_JOBS", "2000,10000").split(",")]
    extra = os.environ.get("BENCH_BATCH_EXTRA", "raw1s").split(",")  # run at the smallest size only
    print(
        f"concurrency {CONCURRENCY}, processing {PROCESSING_SECONDS} s, 2 x {IMAGE_BYTES // 1024} KB images "
        f"per job inline, raw GET interval {RAW_INTERVAL} s; one worker process per row",
        flush=True,
    )
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for n in sizes:
        for side in ["sdk", "raw"] + [x for x in extra if x and n == sizes[0]]:
            with emulator_process(processing_seconds=PROCESSING_SECONDS) as emu:
                r = run_worker(
                    "benchmarks.bench_batch",
                    [side, "--jobs", str(n), "--base-url", emu.base_url, "--api-key", emu.api_key],
                )
                r["emu"] = emu.stats()
            rows[side, n] = r
            print(f"  {side} {n}: {r['wall_s']:.1f} s wall, {r['ok']} ok", flush=True)
    table = []
    for (side, n), r in rows.items():
        done = max(1, r["ok"])
        table.append([
            side, n, r["ok"], r["wall_s"], 1000 * r["cpu_s"] / done, r["gets"] / done,
            r["emu"]["gets"] / done, r["p50_delay_s"], r["p95_delay_s"], r["p99_delay_s"], r["max_delay_s"],
            r["rss_base_mb"], r["rss_peak_mb"],
        ])  # fmt: skip
    headers = ["side", "jobs", "ok", "wall s", "CPU ms/task", "GETs/task", "GETs/task (emu)", "p50 delay s",
               "p95 delay s", "p99 delay s", "max delay s", "RSS start MB", "RSS peak MB"]  # fmt: skip
    print_table(headers, table)
    _verdicts(rows, sizes)


def _verdicts(rows: dict[tuple[str, int], dict[str, Any]], sizes: list[int]) -> None:
    for n in sizes:
        sdk, raw = rows.get(("sdk", n)), rows.get(("raw", n))
        if sdk is None:
            continue
        done = max(1, sdk["ok"])
        if raw is not None:
            ratio = (sdk["cpu_s"] / done) / (raw["cpu_s"] / max(1, raw["ok"]))
            print(f"{n} jobs: SDK/raw CPU per task = {ratio:.2f}x (target <= 1.3x): {_ok(ratio <= 1.3)}")
        gets = sdk["gets"] / done
        print(f"{n} jobs: SDK GETs/task = {gets:.2f} (target <= 3): {_ok(gets <= 3)}")
        p95 = sdk["p95_delay_s"]
        print(f"{n} jobs: SDK p95 notice delay = {p95:.3f} s (target <= 0.25 s): {_ok(p95 <= 0.25)}")
        print(f"{n} jobs: SDK ok = {sdk['ok']}/{n}: {_ok(sdk['ok'] == n)}")
    if len(sizes) >= 2 and ("sdk", sizes[0]) in rows and ("sdk", sizes[-1]) in rows:
        small, big = rows["sdk", sizes[0]]["rss_peak_mb"], rows["sdk", sizes[-1]]["rss_peak_mb"]
        flat = big <= small * 1.10 + 10
        print(f"SDK peak RSS {small:.0f} MB -> {big:.0f} MB (flat: <= +10% +10 MB): {_ok(flat)}", flush=True)


def _ok(met: bool) -> str:
    return "MET" if met else "NOT MET"


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=("sdk", "raw", "raw1s"), required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--profile", default=None, help="write cProfile stats here")
    args = parser.parse_args()
    result = worker(args.worker, args.jobs, args.base_url, args.api_key, args.profile)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _worker_main()
