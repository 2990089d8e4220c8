"""Issue 13: the SDK's CPU, GETs, notice delay, loop lag and memory beside raw aiohttp loops, one table.

Every row is a fresh worker process (its own CPU time and peak RSS) against a fresh emulator in
another process (`benchmarks._emulator_proc`, identity processor). Inline base64 (`upload="never"`),
100 KiB distinct PNG-header images, concurrency 64 unless said otherwise.

Rows (targets from the issue):
- `face_swap`: `client.face_swap` per task with a fixed 0.2 s poll, beside `raw0.2` (GET every 0.2 s).
- `swap_many`: beside `raw0.25` (GET every 0.25 s) and `raw1s` (first GET at 1 s), 1 s processing.
- `realistic`: lognormal durations (median 6 s, p95 25 s, seeded), `swap_many` beside `raw0.25`.
- `saturation`: processing 0, tasks/s of `swap_many` beside `raw0.25`.
- `lag`: `swap_many` of 2 x 8.5 MB inline images per job, concurrency 4, with a 5 ms ticker.
- `rss`: 2 x 5 MB inline images per job, concurrency 4: peak RSS growth per in-flight job.
- `webhook`: 1,000 `submit(webhook=...)` + `wait(via="webhook")`, the hub on loopback.

`BENCH_QUICK=1` runs every row at a few hundred tasks (about 3 min) as a smoke run; the figures are
then noisier. `BENCH_PERF_ROWS=face_swap,lag` runs only those groups; `BENCH_PERF_JOBS=2000` sets the
`swap_many` sizes (default 2000,10000; 10,000 adds about 10 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import aiohttp

from benchmarks._common import cpu_seconds, emulator_process, percentile, png_image, print_table, rss_mb, run_worker

MODEL, TASK_TYPE = "Qubico/image-toolkit", "face-swap"
TERMINAL = frozenset({"completed", "failed"})
SMALL = 100 * 1024
LOGNORMAL = "lognormal:6:25:13"  # median 6 s, p95 25 s, seed 13


def images(n: int, size: int, gen_cpu: list[float]) -> Iterator[tuple[bytes, bytes]]:
    """(target, swap) per job, distinct, made when asked; their CPU cost is added to `gen_cpu[0]`."""
    for i in range(n):
        t0 = time.thread_time()
        pair = png_image(size, 2 * i), png_image(size, 2 * i + 1)
        gen_cpu[0] += time.thread_time() - t0
        yield pair


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _record(detail: dict[str, Any], noticed: float, delays: array[float], durations: array[float]) -> None:
    delays.append(noticed - detail["due_unix"])
    durations.append(detail["due_unix"] - detail["created_unix"])


async def _bounded(
    conc: int, pairs: Iterable[tuple[bytes, bytes]], one: Callable[[bytes, bytes], Awaitable[None]]
) -> None:
    """Run `one(target, swap)` for every pair, at most `conc` at a time, inputs made lazily."""
    slots = asyncio.Semaphore(conc)
    running: set[asyncio.Task[None]] = set()

    async def guarded(box: list[tuple[bytes, bytes]]) -> None:
        try:
            await one(*box.pop())  # only `one` holds the images, so it can drop them early
        finally:
            slots.release()

    for pair in pairs:
        await slots.acquire()
        task = asyncio.create_task(guarded([pair]))
        del pair
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


async def run_raw(n: int, conc: int, size: int, url: str, key: str, gen: list[float], args: Any) -> dict[str, Any]:
    """The baseline: POST the JSON, then GET every `interval` (the first after `first` s)."""
    delays: array[float] = array("d")
    durations: array[float] = array("d")
    counts = {"ok": 0, "gets": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc), headers={"x-api-key": key}) as session:

        async def one(target: bytes, swap: bytes) -> None:
            inputs = {"target_image": _data_uri(target), "swap_image": _data_uri(swap)}
            body = json.dumps({"model": MODEL, "task_type": TASK_TYPE, "input": inputs}).encode()
            headers = {"content-type": "application/json"}
            async with session.post(f"{url}/api/v1/task", data=body, headers=headers) as resp:
                resp.raise_for_status()
                task_id = (await resp.json())["data"]["task_id"]
            del target, swap, inputs, body
            wait = args.first
            while True:
                await asyncio.sleep(wait)
                wait = args.interval
                async with session.get(f"{url}/api/v1/task/{task_id}") as resp:
                    resp.raise_for_status()
                    data = (await resp.json())["data"]
                counts["gets"] += 1
                if str(data["status"]).lower() in TERMINAL:  # the realistic wire says "Completed" too
                    break
            if str(data["status"]).lower() == "completed":
                counts["ok"] += 1
                _record(data["detail"], time.time(), delays, durations)

        await _bounded(conc, images(n, size, gen), one)
    return {**counts, "delays": delays, "durations": durations}


async def run_many(n: int, conc: int, size: int, url: str, key: str, gen: list[float], args: Any) -> dict[str, Any]:
    from qubico_async import FaceSwap, QubicoClient

    delays: array[float] = array("d")
    durations: array[float] = array("d")
    ok = 0
    lag = _Ticker() if args.ticker else None
    if lag is not None:  # made before the ticker starts: the benchmark's own work is no SDK lag
        made = [FaceSwap(target, swap) for target, swap in images(n, size, gen)]
        jobs: Any = iter(made)
        del made
    else:
        jobs = (FaceSwap(target, swap) for target, swap in images(n, size, gen))
    async with QubicoClient(key, base_url=url, max_connections=max(conc, 8)) as client:
        if lag is not None:
            lag.start()
        async with client.swap_many(jobs, concurrency=conc, upload="never") as batch:
            async for outcome in batch:
                if outcome.ok and outcome.task is not None:
                    ok += 1
                    _record(outcome.task.detail, outcome.finished_at, delays, durations)
        report = batch.report
    out: dict[str, Any] = {"ok": ok, "delays": delays, "durations": durations}
    assert report is not None
    out["gets"] = report.requests["other"]  # `concurrency` given: no account request, only task GETs
    if lag is not None:
        out.update(await lag.stop())
    return out


async def run_face_swap(
    n: int, conc: int, size: int, url: str, key: str, gen: list[float], args: Any
) -> dict[str, Any]:
    from qubico_async import PollPolicy, QubicoClient

    delays: array[float] = array("d")
    durations: array[float] = array("d")
    ok = 0
    poll = PollPolicy(initial=args.interval, factor=1.0, max_interval=args.interval, jitter=0.0)
    async with QubicoClient(key, base_url=url, max_connections=conc, poll=poll) as client:

        async def one(target: bytes, swap: bytes) -> None:
            nonlocal ok
            task = await client.face_swap(target, swap, upload="never")
            if task.status.is_terminal and task.detail:
                ok += 1
                _record(task.detail, time.time(), delays, durations)

        await _bounded(conc, images(n, size, gen), one)
        gets = client.requests_sent["read"]
    return {"ok": ok, "gets": gets, "delays": delays, "durations": durations}


async def run_webhook(n: int, conc: int, size: int, url: str, key: str, gen: list[float], args: Any) -> dict[str, Any]:
    from aiohttp import web

    from qubico_async import FaceSwap, QubicoClient, WebhookConfig
    from qubico_async.integrations.aiohttp import webhook_route
    from qubico_async.webhooks import WebhookHub

    secret = "bench-webhook-secret"
    hub = WebhookHub(secret)
    app = web.Application()
    app.add_routes([webhook_route(hub)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    delays: array[float] = array("d")
    durations: array[float] = array("d")
    ok = 0
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        hook = WebhookConfig(f"http://127.0.0.1:{runner.addresses[0][1]}/qubico/webhook", secret)
        async with QubicoClient(key, base_url=url, max_connections=conc, webhooks=hub) as client:

            async def one(target: bytes, swap: bytes) -> None:
                nonlocal ok
                task = await client.submit(FaceSwap(target, swap), webhook=hook, upload="never")
                task = await client.wait(task, via="webhook")
                if task.status.is_terminal and task.detail:
                    ok += 1
                    _record(task.detail, time.time(), delays, durations)

            await _bounded(conc, images(n, size, gen), one)
            gets = client.requests_sent["read"]
    finally:
        await runner.cleanup()
    return {"ok": ok, "gets": gets, "delays": delays, "durations": durations}


class _Ticker:
    """A 5 ms ticker: how late each tick comes is the event loop's lag."""

    def __init__(self) -> None:
        self.lags: array[float] = array("d")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.lags.append(max(0.0, now - last - 0.005))
            last = now

    async def stop(self) -> dict[str, Any]:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return {"lag_max_ms": 1000 * max(self.lags, default=0.0), "lag_p99_ms": 1000 * percentile(self.lags, 99)}


RUNNERS = {"raw": run_raw, "many": run_many, "face_swap": run_face_swap, "webhook": run_webhook}


def worker(args: Any) -> dict[str, Any]:
    if args.worker != "raw":  # imported before the clock starts: a one-off cost, not per task
        import qubico_async.integrations.aiohttp
        import qubico_async.webhooks  # noqa: F401
    gen = [0.0]
    coro = RUNNERS[args.worker](args.jobs, args.concurrency, args.image_bytes, args.base_url, args.api_key, gen, args)
    rss_base, _ = rss_mb()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    result = asyncio.run(coro)
    cpu, wall = cpu_seconds() - cpu0 - gen[0], time.monotonic() - wall0
    delays, durations = result.pop("delays"), result.pop("durations")
    # The bound: notice delay <= 10% of the task's own duration + 0.2 s; p95 of delay / bound.
    rel = [d / (0.1 * t + 0.2) for d, t in zip(delays, durations, strict=True)]
    return {
        **result,
        "wall_s": wall,
        "cpu_s": cpu,
        "p95_delay_s": percentile(delays, 95),
        "p95_rel_delay": percentile(rel, 95),
        "rss_base_mb": rss_base,
        "rss_peak_mb": rss_mb()[1],
    }


def _row(
    group: str, side: str, worker_side: str, jobs: int, *, processing: str, conc: int = 64, size: int = SMALL, **kw: Any
) -> dict[str, Any]:
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items() if not isinstance(v, bool)]
    extra += [f"--{k}" for k, v in kw.items() if v is True]
    with emulator_process(processing_seconds=0.0, durations=processing) as emu:
        r = run_worker(
            "benchmarks.bench_perf",
            [worker_side, "--jobs", str(jobs), "--concurrency", str(conc), "--image-bytes", str(size),
             "--base-url", emu.base_url, "--api-key", emu.api_key, *extra],
        )  # fmt: skip
        r["emu"] = emu.stats()
    r.update(group=group, side=side, jobs=jobs, conc=conc, size=size)
    done = max(1, r["ok"])
    cpu = 1000 * r["cpu_s"] / done
    print(f"  {group}/{side} {jobs}: {r['wall_s']:.1f} s wall, {r['ok']} ok, {cpu:.3f} ms CPU/task", flush=True)
    return r


def main() -> None:
    quick = os.environ.get("BENCH_QUICK") == "1"
    groups = set(filter(None, os.environ.get("BENCH_PERF_ROWS", "").split(","))) or {
        "face_swap", "swap_many", "realistic", "saturation", "lag", "rss", "webhook"}  # fmt: skip
    sizes = [300] if quick else [int(x) for x in os.environ.get("BENCH_PERF_JOBS", "2000,10000").split(",")]
    load = os.getloadavg()
    print(f"issue 13; quick={quick}; load average at start {load[0]:.2f}; one worker process per row", flush=True)
    rows: list[dict[str, Any]] = []
    if "face_swap" in groups:
        n = 300 if quick else 2000
        rows.append(_row("face_swap", "sdk face_swap", "face_swap", n, processing="1.0", interval=0.2))
        rows.append(_row("face_swap", "raw0.2", "raw", n, processing="1.0", interval=0.2, first=0.2))
    if "swap_many" in groups:
        for n in sizes:
            rows.append(_row("swap_many", "sdk swap_many", "many", n, processing="1.0"))
            rows.append(_row("swap_many", "raw0.25", "raw", n, processing="1.0", interval=0.25, first=0.25))
            rows.append(_row("swap_many", "raw1s", "raw", n, processing="1.0", interval=0.25, first=1.0))
    if "realistic" in groups:
        n = 200 if quick else 400
        rows.append(_row("realistic", "sdk swap_many", "many", n, processing=LOGNORMAL))
        rows.append(_row("realistic", "raw0.25", "raw", n, processing=LOGNORMAL, interval=0.25, first=0.25))
    if "saturation" in groups:
        n = 500 if quick else 3000
        rows.append(_row("saturation", "sdk swap_many", "many", n, processing="0"))
        rows.append(_row("saturation", "raw0.25", "raw", n, processing="0", interval=0.25, first=0.25))
    if "lag" in groups:
        big = int(8.5 * 1024 * 1024)
        rows.append(_row("lag", "sdk swap_many", "many", 8 if quick else 16, processing="0.2", conc=4, size=big,
                         ticker=True))  # fmt: skip
    if "rss" in groups:
        rows.append(_row("rss", "sdk swap_many", "many", 8 if quick else 16, processing="0.5", conc=4,
                         size=5 * 1024 * 1024))  # fmt: skip
    if "webhook" in groups:
        rows.append(_row("webhook", "sdk wait(via=webhook)", "webhook", 300 if quick else 1000, processing="1.0"))
    _table(rows)


def _table(rows: list[dict[str, Any]]) -> None:
    def find(group: str, side: str, jobs: int | None = None) -> dict[str, Any] | None:
        for r in rows:
            if r["group"] == group and r["side"] == side and (jobs is None or r["jobs"] == jobs):
                return r
        return None

    def per_task(r: dict[str, Any], key: str) -> float:
        return r[key] / max(1, r["ok"])

    table: list[list[object]] = []
    for r in rows:
        b64 = 2 * math.ceil(r["size"] / 3) * 4
        rss_job = (r["rss_peak_mb"] - r["rss_base_mb"]) / r["conc"]
        table.append([
            r["group"], r["side"], r["jobs"], f"{r['ok']}/{r['jobs']}", r["wall_s"], 1000 * per_task(r, "cpu_s"),
            per_task(r, "gets"), r["emu"]["gets"] / max(1, r["ok"]), r["ok"] / r["wall_s"], r["p95_delay_s"],
            r["p95_rel_delay"], r.get("lag_max_ms", ""), r.get("lag_p99_ms", ""),
            f"{rss_job:.1f} ({rss_job * 1048576 / b64:.2f}x b64)" if r["group"] in ("rss", "lag") else r["rss_peak_mb"],
        ])  # fmt: skip
    print_table(
        ["group", "side", "jobs", "ok", "wall s", "CPU ms/task", "GETs/task", "GETs/task (emu)", "tasks/s",
         "p95 delay s", "p95 delay/(0.1d+0.2)", "lag max ms", "lag p99 ms", "RSS peak MB (per job)"],
        table,
    )  # fmt: skip
    print()
    verdicts: list[list[object]] = []

    def verdict(target: str, value: float, bound: float, text: str, higher_is_better: bool = False) -> None:
        met = value >= bound if higher_is_better else value <= bound
        verdicts.append([target, text.format(value), "MET" if met else f"NOT MET ({value / bound:.2f}x the bound)"])

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "cpu_s") -> float | None:
        if a is None or b is None:
            return None
        return per_task(a, key) / per_task(b, key)

    if (x := ratio(find("face_swap", "sdk face_swap"), find("face_swap", "raw0.2"))) is not None:
        verdict("face_swap CPU/task <= 1.15x raw0.2", x, 1.15, "{:.2f}x")
    for n in sorted({r["jobs"] for r in rows if r["group"] == "swap_many"}):
        sdk = find("swap_many", "sdk swap_many", n)
        if (x := ratio(sdk, find("swap_many", "raw0.25", n))) is not None:
            verdict(f"swap_many {n}: CPU/task <= 1.0x raw0.25", x, 1.0, "{:.2f}x")
        if (x := ratio(sdk, find("swap_many", "raw1s", n))) is not None:
            verdict(f"swap_many {n}: CPU/task <= 1.1x raw1s", x, 1.1, "{:.2f}x")
    if (r := find("realistic", "sdk swap_many")) is not None:
        verdict("realistic: GETs/task <= 3", per_task(r, "gets"), 3.0, "{:.2f}")
        verdict("realistic: p95 delay <= 0.1 x duration + 0.2 s", r["p95_rel_delay"], 1.0, "{:.2f} of the bound")
    sat, raw = find("saturation", "sdk swap_many"), find("saturation", "raw0.25")
    if sat is not None and raw is not None:
        x = (sat["ok"] / sat["wall_s"]) / (raw["ok"] / raw["wall_s"])
        verdict("saturation: tasks/s >= 0.9x raw0.25", x, 0.9, "{:.2f}x", higher_is_better=True)
    if (r := find("lag", "sdk swap_many")) is not None:
        verdict("lag (2 x 8.5 MB inline, conc 4): max <= 20 ms", r["lag_max_ms"], 20.0, "{:.1f} ms")
    if (r := find("rss", "sdk swap_many")) is not None:
        b64 = 2 * math.ceil(r["size"] / 3) * 4
        x = (r["rss_peak_mb"] - r["rss_base_mb"]) / r["conc"] * 1048576 / b64
        verdict("rss: peak per in-flight inline job <= 2.5x its base64", x, 2.5, "{:.2f}x")
    if (r := find("webhook", "sdk wait(via=webhook)")) is not None:
        verdict("webhook: GETs/task == 0 (fallback poll aside)", per_task(r, "gets"), 0.0, "{:.3f}")
    print_table(["target", "measured", "verdict"], verdicts)


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--image-bytes", type=int, default=SMALL)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--first", type=float, default=0.25)
    parser.add_argument("--ticker", action="store_true")
    print(json.dumps(worker(parser.parse_args())), flush=True)


if __name__ == "__main__":
    _worker_main()
