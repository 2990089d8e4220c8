"""The emulator's account concurrency limit (issue 14): `over_limit="reject"` answers 429 and stores
nothing, `over_limit="queue"` keeps the task pending until a slot frees, None (the default) only
reports the limit. Driven with a raw aiohttp client over loopback and the emulator's clock."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from qubico_async.testing import Emulator, SwapJob, identity
from qubico_async.testing._cli import build_parser, serve_forever
from tests._helpers import HANG_GUARD, serve, wait_until
from tests.test_emulator import KEY, Api, face_swap_body

pytestmark = pytest.mark.anyio


def limited(limit: int, over_limit: Any, **kw: Any) -> Emulator:
    kw.setdefault("processing_seconds", 2.0)
    return Emulator(
        api_key=KEY, processor=identity, wire="plain", max_concurrent_task_count=limit, over_limit=over_limit, **kw
    )


async def create_n(api: Api, n: int) -> list[tuple[int, Any, Any]]:
    return [await api.create(face_swap_body()) for _ in range(n)]


async def statuses(api: Api, ids: list[str]) -> list[str]:
    return [(await api.task(task_id))["status"] for task_id in ids]


# -- reject ----------------------------------------------------------------------------------------


async def test_reject_answers_429_and_stores_no_task() -> None:
    async with limited(2, "reject") as emu, aiohttp.ClientSession() as http:
        api = Api(http, emu)
        answers = await create_n(api, 3)
        assert [status for status, _, _ in answers] == [200, 200, 429]
        _, body, headers = answers[2]
        assert body["code"] == 429 and body["data"] is None
        assert "concurrent task limit" in body["message"]
        assert headers["Retry-After"] == "1"
        stats = emu.stats
        assert len(emu.tasks) == 2 and stats.creates == 2
        assert stats.rejected_over_limit == 1
        assert stats.requests_by_status[429] == 1
        assert stats.processing == 2 and stats.max_processing == 2

        emu.advance(2.0)  # both end: the slots are free again
        answers = await create_n(api, 2)
        assert [status for status, _, _ in answers] == [200, 200]
        assert emu.stats.rejected_over_limit == 1 and len(emu.tasks) == 4
        assert emu.stats.max_processing == 2


async def test_reject_frees_a_slot_when_a_task_fails() -> None:
    async with limited(1, "reject") as emu, aiohttp.ClientSession() as http:
        api = Api(http, emu)
        emu.fail_next()
        first = await api.new_task()
        assert (await api.create(face_swap_body()))[0] == 429
        emu.advance(2.0)
        assert (await api.task(first))["status"] == "failed"
        assert (await api.create(face_swap_body()))[0] == 200
        assert emu.stats.rejected_over_limit == 1


# -- queue -----------------------------------------------------------------------------------------


async def test_queue_keeps_the_task_pending_until_a_slot_frees() -> None:
    async with limited(2, "queue") as emu, aiohttp.ClientSession() as http:
        api = Api(http, emu)
        answers = await create_n(api, 3)
        assert [status for status, _, _ in answers] == [200, 200, 200]
        ids = [body["data"]["task_id"] for _, body, _ in answers]
        assert [body["data"]["status"] for _, body, _ in answers] == ["pending"] * 3
        assert emu.stats.queued == 1 and emu.stats.processing == 2

        emu.advance(1.0)
        assert await statuses(api, ids) == ["processing", "processing", "pending"]
        emu.advance(0.9)
        assert await statuses(api, ids) == ["processing", "processing", "pending"]
        emu.advance(0.1)  # the first two end at 2.0 s: the third gets a slot then
        assert await statuses(api, ids) == ["completed", "completed", "processing"]
        assert emu.stats.queued == 0 and emu.stats.processing == 1
        emu.advance(1.9)
        assert (await api.task(ids[2]))["status"] == "processing"
        emu.advance(0.1)
        assert (await api.task(ids[2]))["status"] == "completed"
        stats = emu.stats
        assert stats.max_processing == 2 and stats.processing == 0
        assert stats.rejected_over_limit == 0 and 429 not in stats.requests_by_status


async def test_queue_starts_waiting_tasks_in_creation_order_at_the_time_slots_free() -> None:
    """Looked at only once, long after: each waiting task starts when the one before it ended."""
    async with limited(1, "queue") as emu, aiohttp.ClientSession() as http:
        api = Api(http, emu)
        ids = [await api.new_task() for _ in range(4)]
        emu.advance(7.0)  # 0-2, 2-4, 4-6 done; the fourth runs 6-8
        assert await statuses(api, list(reversed(ids))) == ["processing", "completed", "completed", "completed"]
        tasks = emu.tasks
        starts = [tasks[i].started_at - tasks[ids[0]].created_at for i in ids]
        assert [round(s, 3) for s in starts[1:]] == [2.0, 4.0, 6.0]
        assert emu.stats.max_processing == 1


async def test_queue_counts_pending_seconds_from_create() -> None:
    """A task that waited longer than pending_seconds starts as soon as its slot frees."""
    async with limited(1, "queue", pending_seconds=1.0, processing_seconds=1.0) as emu:
        async with aiohttp.ClientSession() as http:
            api = Api(http, emu)
            ids = [await api.new_task() for _ in range(2)]
            emu.advance(2.0)  # the first: pending 0-1, processing 1-2; the second starts at 2
            assert await statuses(api, ids) == ["completed", "processing"]
            emu.advance(1.0)
            assert (await api.task(ids[1]))["status"] == "completed"


class Hook:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.statuses.append((await request.json())["data"]["status"])
        return web.Response(text="ok")


@pytest.fixture
async def hook_url() -> AsyncIterator[tuple[Hook, str]]:
    hook = Hook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    async with serve(app) as base:
        yield hook, f"{base}/hook"


async def test_queued_task_with_a_webhook_is_delivered_without_polling(hook_url: tuple[Hook, str]) -> None:
    """The ticker notices the holder's end (nobody polls) and the waiting task runs and is delivered."""
    hook, url = hook_url
    async with limited(1, "queue") as emu, aiohttp.ClientSession() as http:
        api = Api(http, emu)
        await api.new_task()  # no webhook: the ticker must still see it end
        await api.create(face_swap_body(config={"webhook_config": {"endpoint": url}}))
        await wait_until(lambda: len(emu.deliveries) == 1)
        gets = emu.stats.gets
        emu.advance(4.0)
        with anyio.fail_after(HANG_GUARD):
            await wait_until(lambda: hook.statuses == ["pending", "completed"])
        assert emu.stats.gets == gets


async def test_ticker_wakes_at_the_holders_deadline_for_a_waiting_webhook_task(hook_url: tuple[Hook, str]) -> None:
    """No advance, no polling: the waiting task has no deadline of its own, so the ticker must wake
    at the (unwatched) holder's deadline, 20 ms of real time, to start it and deliver its end."""
    hook, url = hook_url
    async with limited(1, "queue", processing_seconds=0.02) as emu, aiohttp.ClientSession() as http:
        api = Api(http, emu)
        await api.new_task()
        await api.create(face_swap_body(config={"webhook_config": {"endpoint": url}}))
        gets = emu.stats.gets
        with anyio.fail_after(HANG_GUARD):
            await wait_until(lambda: hook.statuses == ["pending", "completed"])
        assert emu.stats.gets == gets


# -- not enforced (the default) --------------------------------------------------------------------


async def test_default_reports_the_limit_without_enforcing_it() -> None:
    async with Emulator(api_key=KEY, processor=identity, wire="plain", processing_seconds=2.0) as emu:
        assert emu.over_limit is None
        async with aiohttp.ClientSession() as http:
            api = Api(http, emu)
            answers = await create_n(api, 12)
            assert {status for status, _, _ in answers} == {200}
            assert (await api.account())[1]["data"]["max_concurrent_task_count"] == 10
            stats = emu.stats
            assert stats.processing == 12 and stats.max_processing == 12
            emu.advance(2.0)
            await api.new_task()
            stats = emu.stats
            assert stats.processing == 1 and stats.max_processing == 12 and stats.rejected_over_limit == 0


def test_bad_over_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="over_limit"):
        Emulator(over_limit="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        Emulator(over_limit="queue", max_concurrent_task_count=0)


# -- the CLI flag ----------------------------------------------------------------------------------


def test_cli_over_limit_flag_parses() -> None:
    parser = build_parser()
    assert parser.parse_args([]).over_limit is None
    args = parser.parse_args(["--over-limit", "reject", "--max-concurrent-tasks", "3"])
    assert args.over_limit == "reject" and args.max_concurrent_tasks == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--over-limit", "drop"])


async def test_serve_forever_enforces_the_limit() -> None:
    started: list[Emulator] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: serve_forever(
                0,
                KEY,
                engine="identity",
                pending_seconds=0.0,
                processing_seconds=60.0,
                max_concurrent_task_count=1,
                over_limit="reject",
                wire="plain",
                ready=started.append,
            )
        )
        await wait_until(lambda: bool(started))
        emu = started[0]
        assert emu.over_limit == "reject"
        async with aiohttp.ClientSession() as http:
            api = Api(http, emu)
            assert [status for status, _, _ in await create_n(api, 2)] == [200, 429]
        tg.cancel_scope.cancel()


async def test_queue_waits_for_a_threaded_processor_to_finish() -> None:
    """With a processor in worker threads a slot frees when the job ends, not when the task is due."""
    gate = threading.Event()

    def slow(job: SwapJob) -> bytes:
        gate.wait(HANG_GUARD)
        return job.target

    emu = Emulator(
        api_key=KEY,
        processor=slow,
        wire="plain",
        processing_seconds=2.0,
        max_concurrent_task_count=1,
        over_limit="queue",
    )
    try:
        async with emu, aiohttp.ClientSession() as http:
            api = Api(http, emu)
            ids = [await api.new_task() for _ in range(2)]
            emu.advance(5.0)  # the first is due and its job runs; the second still waits
            assert await statuses(api, ids) == ["processing", "pending"]
            assert await statuses(api, ids) == ["processing", "pending"]
            gate.set()
            await wait_until(lambda: emu.tasks[ids[0]].status == "completed")
            assert (await api.task(ids[1]))["status"] == "processing"  # started when the job ended
            emu.advance(2.0)
            await wait_until(lambda: emu.tasks[ids[1]].status == "completed")
            assert emu.stats.max_processing == 1
    finally:
        gate.set()
