"""`make cluster-demo`: the example FastAPI app under 4 uvicorn workers, 200 concurrent swaps with
webhooks, against the emulator with an account limit of 16 (over it: 429, no task made) and 2 s
tasks; first with the coordination off, then with Redis (`QUBICO_REDIS_URL`). One line per run:

    cluster-demo: 200 requests, 4 workers, wall <w> s (ideal 26 s), p95 <x> s, max concurrent tasks <m> (limit 16), ...

Exits non-zero if a request of the coordinated run failed or it ever had more than 16 tasks at once.
Everything runs on 127.0.0.1; redis-server must be on PATH (`make redis-server` installs it).

The account limit is the bundled emulator's own (`over_limit="reject"`); its `stats` give the most
tasks in flight at once (`max_processing`) and the creates refused (`rejected_over_limit`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiohttp

from qubico_async.testing import Emulator, identity

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "cluster-demo-key"
LIMIT = 16
TASK_SECONDS = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Redis:
    """A redis-server on a free loopback port; `stop()`/`start()` again for the outage scenario."""

    def __init__(self, folder: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("cluster-demo: redis-server is not installed (make redis-server)")
        self.port = free_port()
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen([*self.args, "--loglevel", "warning"], stdout=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("cluster-demo: redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()


@contextmanager
def redis_server() -> Iterator[Redis]:
    with tempfile.TemporaryDirectory(prefix="qubico-redis-") as folder:
        server = Redis(folder)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def worker_pids(parent: int) -> list[int]:
    """The uvicorn supervisor's children (Linux /proc)."""
    try:
        text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
    except OSError:
        return []
    pids = []
    for pid in text.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:  # not multiprocessing's resource tracker
            pids.append(int(pid))
    return pids


@dataclass
class Result:
    requests: int
    failed: int
    wall: float
    p95: float
    max_in_flight: int
    rejected: int
    fallback_polls: int
    lost: int = 0
    """Requests whose connection broke (they were on a killed worker)."""

    def line(self, workers: int, label: str) -> str:
        ideal = math.ceil(self.requests / LIMIT) * TASK_SECONDS
        return (
            f"cluster-demo: {self.requests} requests, {workers} workers, wall {self.wall:.1f} s (ideal {ideal:g} s), "
            f"p95 {self.p95:.1f} s, max concurrent tasks {self.max_in_flight} (limit {LIMIT}), "
            f"429s {self.rejected}, fallback polls {self.fallback_polls}"
            + (f", failed {self.failed}" if self.failed else "")
            + (f", lost with the killed worker {self.lost}" if self.lost else "")
            + f"  [{label}]"
        )


async def wait_ready(base: str, workers: int, timeout: float = 60) -> None:
    """Until the app answers; then until every worker has started (each logs its own startup)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(base + "/openapi.json") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("cluster-demo: the app did not start")
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0 + 0.25 * workers)  # the other workers finish their lifespan startup


async def one_run(requests: int, workers: int, redis: Redis | None, chaos: str | None = None) -> Result:
    redis_url = redis.url if redis is not None else None
    target = resources.files("qubico_async._demo_data").joinpath("astronaut.jpg").read_bytes()
    face = resources.files("qubico_async._demo_data").joinpath("grace_hopper.jpg").read_bytes()
    async with Emulator(
        api_key=API_KEY,
        max_concurrent_task_count=LIMIT,
        over_limit="reject",
        processing_seconds=TASK_SECONDS,
        processor=identity,
        seed=1,
    ) as emu:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = dict(
            os.environ,
            QUBICO_API_KEY=API_KEY,
            QUBICO_BASE_URL=emu.base_url,
            QUBICO_WEBHOOK_SECRET=secrets.token_urlsafe(24),
            PUBLIC_URL=base,
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        env.pop("QUBICO_REDIS_URL", None)
        if redis_url is not None:
            env["QUBICO_REDIS_URL"] = redis_url
        args = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1"]
        args += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
        proc = subprocess.Popen(args, env=env, cwd=ROOT)  # noqa: S603, ASYNC220 - our own app, started once
        try:
            await wait_ready(base, workers)
            latencies: list[float] = []
            failed = 0
            lost = 0
            connector = aiohttp.TCPConnector(limit=requests + 10)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:

                async def swap(i: int) -> None:
                    nonlocal failed, lost
                    form = aiohttp.FormData()
                    form.add_field("target", target, filename="target.jpg", content_type="image/jpeg")
                    form.add_field("face", face, filename=f"face{i}.jpg", content_type="image/jpeg")
                    start = time.monotonic()
                    try:
                        async with http.post(base + "/swap", data=form) as resp:
                            await resp.read()
                            failed += resp.status != 200
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                        lost += 1  # its worker died under it
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        failed += 1
                    latencies.append(time.monotonic() - start)

                async def disturb() -> None:
                    await asyncio.sleep(8.0)
                    if chaos == "kill-worker":
                        pids = worker_pids(proc.pid)
                        if pids:
                            os.kill(pids[0], signal.SIGKILL)
                            print(f"cluster-demo: killed worker {pids[0]} (kill -9) at 8 s", flush=True)
                    elif chaos == "stop-redis" and redis is not None:
                        redis.stop()
                        print("cluster-demo: stopped Redis at 8 s", flush=True)
                        await asyncio.sleep(6.0)
                        redis.start()
                        print("cluster-demo: restarted Redis at 14 s", flush=True)

                started = time.monotonic()
                chaos_task = asyncio.create_task(disturb())
                await asyncio.gather(*(swap(i) for i in range(requests)))
                wall = time.monotonic() - started
                chaos_task.cancel()
            latencies.sort()
            p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
            stats = emu.stats
            max_in_flight, rejected = stats.max_processing, stats.rejected_over_limit
            return Result(requests, failed, wall, p95, max_in_flight, rejected, stats.gets, lost)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--skip-uncoordinated", action="store_true")
    parser.add_argument(
        "--chaos",
        choices=["kill-worker", "stop-redis"],
        help="8 s into the coordinated run: kill -9 one worker, or stop Redis for 6 s",
    )
    opts = parser.parse_args()
    if not opts.skip_uncoordinated:
        off = await one_run(opts.requests, opts.workers, None)
        print(off.line(opts.workers, "coordination off"), flush=True)
    with redis_server() as redis:
        on = await one_run(opts.requests, opts.workers, redis, opts.chaos)
    print(on.line(opts.workers, "Redis coordination" + (f", chaos {opts.chaos}" if opts.chaos else "")), flush=True)
    if opts.chaos == "stop-redis":  # the limit is per worker while Redis is away: only failures count
        return 1 if on.failed else 0
    return 1 if on.failed or on.max_in_flight > LIMIT else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
