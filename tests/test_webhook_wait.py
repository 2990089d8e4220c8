"""`client.wait(via="webhook")` at scale and at the edges, with the emulator delivering to an aiohttp
app on loopback (`qubico_async.integrations.aiohttp.webhook_route`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest
from aiohttp import web

from qubico_async import (
    FaceSwap,
    InvalidInputError,
    PollPolicy,
    QubicoClient,
    RetryPolicy,
    Task,
    TaskStatus,
    WaitTimeoutError,
    WebhookConfig,
)
from qubico_async.integrations.aiohttp import webhook_route
from qubico_async.testing import Emulator
from qubico_async.webhooks import WebhookHub
from tests._helpers import HANG_GUARD, serve, wait_until
from tests.test_integrations_aiohttp import SECRET, SLOW, png

pytestmark = pytest.mark.anyio

N = 1_000


@dataclass
class Setup:
    emu: Emulator
    hub: WebhookHub
    client: QubicoClient
    hook: WebhookConfig

    async def submit(self, i: int = 0) -> Task:
        return await self.client.submit(FaceSwap(png(i), png(-1)), webhook=self.hook)


@pytest.fixture
async def setup(emu: Emulator) -> AsyncIterator[Setup]:
    hub = WebhookHub(SECRET)
    app = web.Application()
    app.add_routes([webhook_route(hub)])
    async with serve(app) as base:
        hook = WebhookConfig(f"{base}/qubico/webhook", SECRET)
        async with QubicoClient(
            emu.api_key,
            base_url=emu.base_url,
            retry=RetryPolicy.instant(),
            poll=PollPolicy.instant(timeout=10),
            webhooks=hub,
        ) as client:
            yield Setup(emu, hub, client, hook)


# asyncio's debug mode (`python -X dev`, as `make test` runs) records a stack per callback, which
# makes this a benchmark of the debugger; the scale test runs without it.
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"debug": False}), id="asyncio")])
async def test_a_thousand_waiters_are_resolved_by_webhooks(setup: Setup) -> None:
    emu = setup.emu
    emu.processing_seconds = 30  # every task stays unfinished until the clock is advanced
    emu.faults.webhooks.drop = N  # the creation deliveries carry nothing a waiter needs: skip them
    limiter = anyio.CapacityLimiter(64)
    tasks: list[Task] = []

    async def submit(i: int) -> None:
        async with limiter:
            tasks.append(await setup.submit(i))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            for i in range(N):
                tg.start_soon(submit, i)
    assert len({t.task_id for t in tasks}) == N
    assert emu.stats.webhooks_dropped == N and emu.faults.webhooks.drop == 0

    done: list[Task] = []

    async def waiter(task: Task) -> None:
        done.append(await setup.client.wait(task, via="webhook", poll=SLOW))

    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(waiter, task)
        await wait_until(lambda: setup.hub.waiting == N)
        assert done == []
        emu.advance(30)  # the emulator ends all of them and delivers 1,000 terminal webhooks
        await wait_until(lambda: len(done) == N)
    assert {t.task_id for t in done} == {t.task_id for t in tasks}
    assert all(t.status is TaskStatus.COMPLETED for t in done)
    assert setup.hub.waiting == 0
    assert emu.stats.gets == 0  # not one fallback poll: the webhooks did it all
    await emu.drain()
    assert emu.stats.webhooks_sent == N and emu.stats.webhooks_failed == 0


async def test_one_delivery_wakes_every_waiter_on_the_task(setup: Setup) -> None:
    setup.emu.processing_seconds = 30
    task = await setup.submit()
    done: list[Task] = []

    async def waiter() -> None:
        done.append(await setup.client.wait(task.task_id, via="webhook", poll=SLOW))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(waiter)
        await wait_until(lambda: setup.hub.waiting == 50)
        setup.emu.advance(30)
    assert len(done) == 50 and len({id(t) for t in done}) == 1  # the same Task object for everyone
    assert setup.hub.waiting == 0 and setup.emu.stats.gets == 0


async def test_run_waits_via_the_webhook_when_the_request_has_one(setup: Setup) -> None:
    with anyio.fail_after(HANG_GUARD):
        done = await setup.client.run(FaceSwap(png(1), png(2), webhook=setup.hook))
    assert done.status is TaskStatus.COMPLETED
    assert setup.emu.stats.gets == 0  # the default fallback poll (10 s+) never ran


async def test_deadline_reports_the_last_state_the_webhooks_brought(setup: Setup) -> None:
    setup.emu.processing_seconds = 30
    task = await setup.submit()
    await wait_until(lambda: setup.hub.latest(task.task_id) is not None)  # the creation delivery
    with pytest.raises(WaitTimeoutError) as info:
        await setup.client.wait(task, via="webhook", poll=SLOW, timeout=0.1)
    assert info.value.task_id == task.task_id
    assert info.value.last_task is not None and info.value.last_task.status is TaskStatus.PENDING
    assert setup.hub.waiting == 0 and setup.emu.stats.gets == 0


async def test_cancelled_waiters_leave_nothing_behind(setup: Setup) -> None:
    setup.emu.processing_seconds = 30
    tasks = [await setup.submit(i) for i in range(5)]
    before = asyncio.all_tasks()
    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(functools.partial(setup.client.wait, task, via="webhook", poll=SLOW))
        await wait_until(lambda: setup.hub.waiting == 5)
        tg.cancel_scope.cancel()
    assert setup.hub.waiting == 0
    assert asyncio.all_tasks() <= before
    setup.emu.advance(30)  # deliveries after the waiters left are simply recorded
    await wait_until(lambda: all(setup.hub.latest(t.task_id) is not None for t in tasks))
    await wait_until(lambda: all(setup.hub.latest(t.task_id).status.is_terminal for t in tasks))  # type: ignore[union-attr]


async def test_webhook_wait_needs_a_hub(client: QubicoClient, emu: Emulator) -> None:
    task = await client.submit(FaceSwap(png(1), png(2)))
    with pytest.raises(InvalidInputError, match="WebhookHub"):
        await client.wait(task, via="webhook")
