"""Cancellation at any point leaves nothing behind.

Every operation (face_swap, submit, wait, download, download_bytes, upload, swap_many with and
without a journal, wait(via="webhook") and face_swap by webhook) runs under
`anyio.move_on_after(d)` for a spread of deadlines, against an emulator with a little latency, so
the cancel lands before the send, mid-request (multi-megabyte bodies), mid-response, while
sleeping between polls and mid-journal-write. After each run and the client's close:

- no task of ours is left (`asyncio.all_tasks()` before/after, the emulator's and the webhook
  receiver's own server tasks excepted);
- the connector holds no acquired connection (checked before closing: a cancelled request must
  release its connection) and is closed after;
- no `.part` file is left in the download folder;
- the journal reopens (not locked, not corrupt), has no `intent` row, records every task the
  emulator created for it, and its writer thread is gone (thread count back to the baseline);
- the webhook hub has no subscription left;
- asyncio logged no error (destroyed pending task, unclosed session, unretrieved exception), and
  no ResourceWarning was raised (warnings are errors in this suite; also run with `-X dev`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from qubico_async import FaceSwap, Job, PollPolicy, QubicoClient, RetryPolicy, Task, TaskStatus, WebhookConfig
from qubico_async.journal import Journal
from qubico_async.testing import Emulator, identity
from qubico_async.webhooks import WebhookHub

from ._helpers import HANG_GUARD, hub_endpoint, journal_rows
from .test_batch import FACE, png

pytestmark = pytest.mark.anyio

SECRET = "cancel-hook-secret-1d2f"
_rng = random.Random(20240824)
FIXED_DELAYS = (0.0, 0.0005, 0.001, 0.002, 0.005)  # seconds: before the send, in the first steps
FRACTIONS = (
    *(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
    *sorted(round(_rng.random(), 3) for _ in range(6)),
)
"""Deadlines as fractions of the operation's measured duration (fixed, then seeded random)."""
BIG = 3 << 20  # bytes: big enough that sending, serving and writing it takes a few ms
POLL = PollPolicy(initial=0.004, factor=1.5, max_interval=0.01, jitter=0.0, timeout=10)
_POOL_THREADS = ("AnyIO worker thread", "asyncio_", "ThreadPoolExecutor")


def big_png(i: int) -> bytes:
    return png(i) + uuid.uuid4().bytes * (BIG // 16)


def our_threads() -> list[str]:
    """Live threads, minus pooled workers that outlive any one call by design."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith(_POOL_THREADS))


def is_server_task(task: asyncio.Task[Any], endpoint: str) -> bool:
    """The emulator's own tasks (its webhook deliveries to `endpoint` included) and the aiohttp
    servers' (the emulator's and the webhook receiver's accept loops and request handlers)."""
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    filename = code.co_filename if code is not None else ""
    qualname = getattr(coro, "__qualname__", "")
    if qualname == "BaseSelectorEventLoop._accept_connection2":
        return True
    if qualname == "ClientRequest.write_bytes":  # aiohttp's body writer: whose request is it?
        frame = getattr(coro, "cr_frame", None)
        request = frame.f_locals.get("self") if frame is not None else None
        return str(getattr(request, "url", "")).startswith(endpoint)
    return "/qubico_async/testing/" in filename or "/aiohttp/web_" in filename


class Ctx:
    """Per-run state an operation may use, and what the checks look at afterwards."""

    def __init__(self, emu: Emulator, tmp: Path, run: int, hub: WebhookHub | None, endpoint: str) -> None:
        self.emu = emu
        self.run = run
        self.folder = tmp / f"run-{run}"
        self.folder.mkdir()
        self.journal: Path | None = None
        self.hub = hub
        self.endpoint = endpoint
        self.task: Task | None = None
        self.known_tasks = set(emu.tasks)

    def target(self, j: int = 0) -> bytes:
        return big_png(self.run * 100 + j)


# --- the operations -----------------------------------------------------------------------------


async def prepare_submitted(client: QubicoClient, ctx: Ctx) -> None:
    ctx.task = await client.submit(FaceSwap(png(ctx.run), FACE))


async def prepare_completed(client: QubicoClient, ctx: Ctx) -> None:
    ctx.emu.processing_seconds = 0.0
    ctx.task = await client.wait(await client.submit(FaceSwap(ctx.target(), FACE)), poll=PollPolicy.instant())


async def prepare_hooked(client: QubicoClient, ctx: Ctx) -> None:
    ctx.task = await client.submit(FaceSwap(png(ctx.run), FACE), webhook=WebhookConfig(ctx.endpoint, SECRET))


async def op_face_swap(client: QubicoClient, ctx: Ctx) -> None:
    await client.face_swap(ctx.target(), FACE, poll=POLL)


async def op_face_swap_webhook(client: QubicoClient, ctx: Ctx) -> None:
    await client.face_swap(png(ctx.run), FACE, webhook=WebhookConfig(ctx.endpoint, SECRET), poll=POLL)


async def op_submit(client: QubicoClient, ctx: Ctx) -> None:
    await client.submit(FaceSwap(ctx.target(), FACE))


async def op_wait(client: QubicoClient, ctx: Ctx) -> None:
    assert ctx.task is not None
    await client.wait(ctx.task, poll=POLL)


async def op_wait_webhook(client: QubicoClient, ctx: Ctx) -> None:
    assert ctx.task is not None
    slow = PollPolicy(initial=0.02, factor=1.0, max_interval=0.02, jitter=0.0, timeout=10)
    await client.wait(ctx.task, via="webhook", poll=slow)


async def op_download(client: QubicoClient, ctx: Ctx) -> None:
    assert ctx.task is not None
    await client.download(ctx.task, ctx.folder)


async def op_download_bytes(client: QubicoClient, ctx: Ctx) -> None:
    assert ctx.task is not None
    await client.download_bytes(ctx.task)


async def op_upload(client: QubicoClient, ctx: Ctx) -> None:
    await client.upload(ctx.target())


def _jobs(ctx: Ctx) -> list[Job]:
    return [Job(FaceSwap(png(ctx.run * 100 + j), FACE), key=f"job-{j}") for j in range(6)]


async def op_swap_many(client: QubicoClient, ctx: Ctx) -> None:
    async with client.swap_many(_jobs(ctx), concurrency=3, poll=POLL) as batch:
        async for _ in batch:
            pass


async def op_swap_many_journal(client: QubicoClient, ctx: Ctx) -> None:
    ctx.journal = ctx.folder / "run.sqlite"
    async with client.swap_many(_jobs(ctx), concurrency=3, journal=ctx.journal, poll=POLL) as batch:
        async for _ in batch:
            pass


Op = Callable[[QubicoClient, Ctx], Awaitable[None]]
OPERATIONS: dict[str, tuple[Op | None, Op]] = {
    "face_swap": (None, op_face_swap),
    "face_swap_webhook": (None, op_face_swap_webhook),
    "submit": (None, op_submit),
    "wait": (prepare_submitted, op_wait),
    "wait_webhook": (prepare_hooked, op_wait_webhook),
    "download": (prepare_completed, op_download),
    "download_bytes": (prepare_completed, op_download_bytes),
    "upload": (None, op_upload),
    "swap_many": (None, op_swap_many),
    "swap_many_journal": (None, op_swap_many_journal),
}


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def emu_x() -> AsyncIterator[Emulator]:
    async with Emulator(api_key="cancel-key", processor=identity, seed=7) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookHub, str]]:
    hub = WebhookHub(SECRET)
    async with hub_endpoint(hub) as url:
        yield hub, url


# --- the test -----------------------------------------------------------------------------------


async def check_journal(ctx: Ctx) -> None:
    assert ctx.journal is not None
    assert "qubico-journal-writer" not in our_threads()
    if not ctx.journal.exists():
        return  # cancelled before the journal was even opened
    async with await Journal.open(ctx.journal):  # not locked, not corrupt
        rows = journal_rows(ctx.journal)
    assert all(row["state"] != "intent" for row in rows.values()), rows
    recorded = {row["task_id"] for row in rows.values() if row["task_id"]}
    created = set(ctx.emu.tasks) - ctx.known_tasks
    assert created <= recorded, f"tasks created but not journaled (would be paid twice): {created - recorded}"


@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_cancel_at_any_point_leaves_nothing_behind(
    name: str,
    emu_x: Emulator,
    receiver: tuple[WebhookHub, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    hub, endpoint = receiver
    prepare, operation = OPERATIONS[name]
    threads_before = our_threads()
    runs = 0

    async def run_once(delay: float) -> float | None:
        """Run the operation with a deadline, check that nothing is left; its duration if it finished."""
        nonlocal runs
        runs += 1
        emu_x.faults.latency = 0.002  # before every API answer (uploads too)
        emu_x.processing_seconds = 0.02  # a few polls per task
        ctx = Ctx(emu_x, tmp_path, runs, hub, endpoint)
        tasks_before = asyncio.all_tasks()
        client = QubicoClient(
            emu_x.api_key,
            base_url=emu_x.base_url,
            upload_url=emu_x.upload_url,
            retry=RetryPolicy.instant(),
            poll=POLL,
            webhooks=hub,
        )
        async with client:
            if prepare is not None:
                await prepare(client, ctx)
            session = client._http()
            assert session is not None
            connector = session.connector
            assert connector is not None
            started = anyio.current_time()
            with anyio.move_on_after(delay) as scope:
                await operation(client, ctx)
            elapsed = anyio.current_time() - started
            assert not connector._acquired, f"{name} at {delay}s: connections still acquired after cancel"
        assert connector.closed
        leftover = [t for t in asyncio.all_tasks() - tasks_before if not is_server_task(t, endpoint)]
        assert not leftover, f"{name} cancelled at {delay}s left tasks: {leftover}"
        assert not list(ctx.folder.glob("*.part")) and not list(ctx.folder.glob(".*.part"))
        assert hub.waiting == 0
        if ctx.journal is not None:
            await check_journal(ctx)
        assert our_threads() == threads_before
        gc.collect()  # an unclosed transport or file would warn (= fail) now, inside this test
        return None if scope.cancelled_caught else elapsed

    # A deadline never reached first: the operation completes, nothing is lost, and its duration
    # places the other deadlines across the whole operation, whatever the machine's speed.
    # The heap that exists now is frozen: each run's gc.collect() then scans only what the runs
    # made (where a leak would be), not the whole session's heap (~50 ms a collection, 25 runs).
    gc.collect()
    gc.freeze()
    try:
        durations = [await run_once(HANG_GUARD) for _ in range(2)]  # the first one may pay for warming up
        assert None not in durations, f"{name} did not finish within the hang guard"
        duration = min(d for d in durations if d is not None)
        deadlines = list(FIXED_DELAYS)
        outcomes = [await run_once(delay) for delay in deadlines]
        for fraction in FRACTIONS:
            deadlines.append(duration * fraction)
            outcomes.append(elapsed := await run_once(deadlines[-1]))
            if elapsed is not None:  # it finished first: the box got faster, place the rest by this run
                duration = min(duration, elapsed)
    finally:
        gc.unfreeze()
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    cancelled = sum(o is None for o in outcomes)
    print(f"{name}: {duration * 1000:.0f} ms, {len(deadlines) + 2} runs, {cancelled} cancelled mid-way")
    assert cancelled >= len(deadlines) // 2, "the deadlines should mostly land inside the operation"


async def test_consumer_cancelled_while_another_outcome_is_ready(
    emu_x: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The race the deadline spread above hits only sometimes, made deterministic: the consumer is
    cancelled (and closes its end of the outcome stream) in the same loop iteration in which
    another job's outcome becomes ready to emit. The batch must not fail with BrokenResourceError
    in a supervisor task nobody awaits ("Task exception was never retrieved")."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    second_may_finish = anyio.Event()
    scope = anyio.CancelScope()
    received: list[object] = []
    tasks_before = asyncio.all_tasks()
    async with QubicoClient(
        emu_x.api_key, base_url=emu_x.base_url, retry=RetryPolicy.instant(), poll=PollPolicy.instant()
    ) as client:
        polls = 0

        async def get_task(task_id: str) -> Task:
            nonlocal polls
            polls += 1
            if polls > 1:
                await second_may_finish.wait()  # then done at once: no await between here and _emit
            return Task(task_id=task_id, status=TaskStatus.COMPLETED)

        client.get_task = get_task  # type: ignore[method-assign]

        def on_progress(_: object) -> None:
            scope.cancel()  # the consumer goes away...
            second_may_finish.set()  # ...while the second outcome becomes ready

        with scope:
            jobs = [FaceSwap(png(900 + i), FACE) for i in range(2)]
            async with client.swap_many(jobs, concurrency=2, on_progress=on_progress) as batch:
                async for outcome in batch:
                    received.append(outcome)
        assert scope.cancelled_caught and len(received) == 1
        assert batch._supervisor is not None and batch._supervisor.done()
        if not batch._supervisor.cancelled():
            assert batch._supervisor.exception() is None
    leftover = [t for t in asyncio.all_tasks() - tasks_before if not is_server_task(t, "http://no-webhooks.invalid/")]
    assert not leftover
    gc.collect()
    errors = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not errors
