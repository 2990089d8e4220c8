"""Webhook delivery by the emulator, received by a tiny aiohttp app on loopback in the test."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from qubico_async.testing import Emulator, Faults, SwapJob, WebhookDelivery, WebhookFaults, identity
from tests._helpers import ASTRONAUT, HANG_GUARD, HOPPER, serve, wait_until

KEY = "emu-key"

pytestmark = pytest.mark.anyio


class Receiver:
    """Records every POST; answers with the statuses queued in `answers` (then 200)."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.answers: list[int] = []
        self.hold: anyio.Event | None = None  # when set, requests wait for it before answering
        self.url = ""
        self.clock: Callable[[], float] | None = None  # when set, read at every call into `clock_at_call`
        self.clock_at_call: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append((dict(request.headers), body))
        if self.clock is not None:
            self.clock_at_call.append(self.clock())
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.answers.pop(0) if self.answers else 200, text="ok")

    @property
    def statuses(self) -> list[str]:
        return [body["data"]["status"] for _, body in self.calls]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    async with serve(app) as base:
        rec.url = f"{base}/hook"
        try:
            yield rec
        finally:
            if rec.hold is not None:
                rec.hold.set()


def body_with_hook(endpoint: str, secret: str | None = "s3cr3t") -> dict[str, Any]:
    hook = {"endpoint": endpoint} if secret is None else {"endpoint": endpoint, "secret": secret}
    return {
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "input": {
            "target_image": base64.b64encode(ASTRONAUT).decode(),
            "swap_image": base64.b64encode(HOPPER).decode(),
        },
        "config": {"webhook_config": hook},
    }


async def create(http: aiohttp.ClientSession, emu: Emulator, body: dict[str, Any]) -> str:
    async with http.post(f"{emu.base_url}/api/v1/task", json=body, headers={"x-api-key": KEY}) as resp:
        payload = await resp.json()
        assert resp.status == 200, payload
        task_id: str = payload["data"]["task_id"]
        return task_id


async def get(http: aiohttp.ClientSession, emu: Emulator, task_id: str) -> dict[str, Any]:
    async with http.get(f"{emu.base_url}/api/v1/task/{task_id}", headers={"x-api-key": KEY}) as resp:
        data: dict[str, Any] = (await resp.json())["data"]
        return data


def fast(**kw: Any) -> Emulator:
    return Emulator(api_key=KEY, wire="plain", processor=identity, **kw)


async def test_create_and_terminal_deliveries_match_the_docs(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    async with fast() as emu:
        before = time.time()
        task_id = await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: len(receiver.calls) == 2)  # the ticker ends the task: no GET needed
        assert emu.stats.gets == 0
        assert receiver.statuses == ["pending", "completed"]
        for headers, body in receiver.calls:
            assert headers["x-webhook-secret"] == "s3cr3t"
            assert headers["Content-Type"] == "application/json"
            assert set(body) == {"timestamp", "data"}
            assert isinstance(body["timestamp"], int) and before - 2 <= body["timestamp"] <= time.time() + 2
            assert body["data"]["task_id"] == task_id
        created, done = (body["data"] for _, body in receiver.calls)
        assert created["output"] is None and created["meta"] == {}
        assert created["config"]["webhook_config"] == {"endpoint": receiver.url, "secret": "s3cr3t"}
        assert done == await get(http, emu, task_id)  # the same object GET returns
        assert done["output"]["image_url"].startswith(emu.base_url)
        await emu.drain()
        assert emu.deliveries == [(receiver.url, 200, "pending"), (receiver.url, 200, "completed")]
        assert isinstance(emu.deliveries[0], WebhookDelivery)
        assert (emu.stats.webhooks_sent, emu.stats.webhook_attempts, emu.stats.webhooks_failed) == (2, 2, 0)


async def test_no_secret_no_header_and_failed_tasks_are_delivered(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    async with fast() as emu:
        emu.fail_next(1, "no face detected in target_image")
        await create(http, emu, body_with_hook(receiver.url, secret=None))
        await wait_until(lambda: len(receiver.calls) == 2)
        assert all("x-webhook-secret" not in h for h, _ in receiver.calls)
        failed = receiver.calls[1][1]["data"]
        assert failed["status"] == "failed"
        assert failed["error"]["message"] == "no face detected in target_image"


async def test_ticker_follows_advance_without_any_get(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    # An hour of processing: a ticker that only slept until the real deadline (or its 60 s cap)
    # would miss the hang guard; only the wake-up by advance() delivers in time.
    async with fast(pending_seconds=5, processing_seconds=3600) as emu:
        task_id = await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: len(receiver.calls) == 1)
        await anyio.sleep(0.05)
        assert receiver.statuses == ["pending"]  # not due yet: nothing more
        emu.advance(5)
        await anyio.sleep(0.05)
        assert receiver.statuses == ["pending"]  # processing is not delivered
        assert emu.tasks[task_id].status == "processing"
        emu.advance(3600)
        await wait_until(lambda: len(receiver.calls) == 2)  # woken by advance(), not by a timer
        assert receiver.statuses == ["pending", "completed"]
        assert emu.stats.gets == 0


async def test_ticker_sleeps_until_the_real_deadline(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    async with fast(processing_seconds=0.15) as emu:
        receiver.clock = emu.now
        task_id = await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: len(receiver.calls) == 2)  # nobody advanced the clock or sent a GET
        assert receiver.statuses == ["pending", "completed"]
        # Not early: the terminal delivery came once the emulator's clock had passed the deadline.
        assert receiver.clock_at_call[1] >= emu.tasks[task_id].due_at
        assert emu.stats.gets == 0


async def test_terminal_delivery_after_a_threaded_processor(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    def flip(job: SwapJob) -> bytes:
        time.sleep(0.05)
        return job.swap

    async with Emulator(api_key=KEY, wire="plain", processor=flip) as emu:
        task_id = await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: len(receiver.calls) == 2)
        assert receiver.statuses == ["pending", "completed"]
        assert emu.tasks[task_id].result == HOPPER


async def test_retries_on_5xx(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    receiver.answers = [500, 503]
    async with fast() as emu:
        await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: emu.stats.webhooks_sent == 2)
        assert [d.status_code for d in emu.deliveries] == [500, 503, 200, 200]
        assert [d.status for d in emu.deliveries] == ["pending"] * 3 + ["completed"]
        assert receiver.statuses == ["pending"] * 3 + ["completed"]  # in order: terminal waits for creation
        bodies = [json.dumps(b, sort_keys=True) for _, b in receiver.calls[:3]]
        assert len(set(bodies)) == 1  # a retry re-sends the same body, timestamp included
        assert (emu.stats.webhook_attempts, emu.stats.webhooks_failed) == (4, 0)


async def test_gives_up_after_the_retries(
    http: aiohttp.ClientSession, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers = [500] * 10
    async with fast(faults=Faults(webhooks=WebhookFaults(retries=1, retry_delay=0.01))) as emu:
        await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: emu.stats.webhooks_failed == 2)
        assert [d.status_code for d in emu.deliveries] == [500] * 4
        assert emu.stats.webhooks_sent == 0
    assert "failed after 2 attempt(s): last answer HTTP 500" in caplog.text
    assert "s3cr3t" not in caplog.text


async def test_connection_errors_are_retried_and_recorded_as_none(http: aiohttp.ClientSession) -> None:
    async with fast(faults=Faults(webhooks=WebhookFaults(retries=2))) as emu:
        closed_port = "http://127.0.0.1:9/hook"  # discard port: nothing listens there
        await create(http, emu, body_with_hook(closed_port))
        await wait_until(lambda: emu.stats.webhooks_failed == 2)
        assert (
            emu.deliveries
            == [WebhookDelivery(closed_port, None, "pending")] * 3
            + [WebhookDelivery(closed_port, None, "completed")] * 3
        )


async def test_duplicate(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    async with fast(faults=Faults(webhooks=WebhookFaults(duplicate=1))) as emu:
        await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: len(receiver.calls) == 3)
        assert receiver.statuses == ["pending", "pending", "completed"]
        assert receiver.calls[0][1] == receiver.calls[1][1]
        assert emu.faults.webhooks.duplicate == 0
        emu.faults.webhooks.duplicate_rate = 1.0
        await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: len(receiver.calls) == 7)
        assert receiver.statuses[3:] == ["pending", "pending", "completed", "completed"]
        await wait_until(lambda: emu.stats.webhooks_sent == 7)  # counted once the 2xx is read back


async def test_out_of_order(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    async with fast(processing_seconds=10, faults=Faults(webhooks=WebhookFaults(out_of_order=True))) as emu:
        task_id = await create(http, emu, body_with_hook(receiver.url))
        await anyio.sleep(0.05)
        assert receiver.calls == []  # the creation delivery is held back
        emu.advance(10)
        await wait_until(lambda: len(receiver.calls) == 2)
        assert receiver.statuses == ["completed", "pending"]
        assert receiver.calls[1][1]["timestamp"] <= receiver.calls[0][1]["timestamp"]
        assert {b["data"]["task_id"] for _, b in receiver.calls} == {task_id}


async def test_drop_proves_the_polling_fallback(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    async with fast(faults=Faults(webhooks=WebhookFaults(drop=1))) as emu:
        await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: len(receiver.calls) == 1)
        assert receiver.statuses == ["completed"]  # the creation delivery was never sent

        emu.faults.webhooks.drop_rate = 1.0
        task_id = await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: emu.tasks[task_id].status == "completed")
        await emu.drain()
        assert len(receiver.calls) == 1
        assert (await get(http, emu, task_id))["status"] == "completed"  # polling still tells
        assert emu.stats.webhooks_dropped == 3


@pytest.mark.parametrize(
    "endpoint",
    ["http://example.com/hook", "https://10.1.2.3/hook", "http://192.168.0.1:8080/x", "ftp://127.0.0.1/x"],
)
async def test_non_loopback_endpoints_are_refused(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, endpoint: str
) -> None:
    caplog.set_level(logging.WARNING, logger="qubico_async.testing")
    async with fast() as emu:
        body = body_with_hook(endpoint)
        async with http.post(f"{emu.base_url}/api/v1/task", json=body, headers={"x-api-key": KEY}) as resp:
            payload = await resp.json()
        if resp.status == 400:  # not even an http(s) URL: refused at create
            assert endpoint.startswith("ftp:")
            return
        task_id = payload["data"]["task_id"]
        await wait_until(lambda: emu.tasks[task_id].status == "completed")
        await emu.drain()
        assert emu.deliveries == [] and emu.stats.webhook_attempts == 0
        assert emu.stats.webhooks_refused == 2
    assert "not on loopback" in caplog.text
    assert "s3cr3t" not in caplog.text


async def test_localhost_endpoint_is_delivered(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    async with fast() as emu:
        await create(http, emu, body_with_hook(receiver.url.replace("127.0.0.1", "localhost")))
        await wait_until(lambda: len(receiver.calls) == 2)


async def test_task_transform_applies_to_deliveries(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    def shout(task: dict[str, Any]) -> dict[str, Any]:
        return {**task, "status": task["status"].upper()}

    async with fast(task_transform=shout) as emu:
        await create(http, emu, body_with_hook(receiver.url))
        await wait_until(lambda: len(receiver.calls) == 2)
        assert receiver.statuses == ["PENDING", "COMPLETED"]


async def test_aclose_cancels_everything(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    receiver.hold = anyio.Event()  # the receiver never answers
    before = set(asyncio.all_tasks())
    emu = fast(faults=Faults(webhooks=WebhookFaults(out_of_order=False)))
    await emu.start()
    await create(http, emu, body_with_hook(receiver.url))
    emu.faults.webhooks.out_of_order = True
    await create(http, emu, body_with_hook(receiver.url, secret="other"))  # creation held back
    # in flight, waiting for the receiver: task 1's creation and task 2's terminal delivery; queued
    # behind them: task 1's terminal delivery and task 2's held creation delivery
    await wait_until(lambda: len(receiver.calls) == 2)
    assert len(set(asyncio.all_tasks()) - before) > 0
    # The receiver never answers: an aclose() that waited for the deliveries would hit the guard
    # (and would record their timeouts in `deliveries`, and send the queued ones).
    with anyio.fail_after(HANG_GUARD):
        await emu.aclose()
    await anyio.lowlevel.checkpoint()
    leftover = {t for t in set(asyncio.all_tasks()) - before if not t.done()}
    leftover = {t for t in leftover if "RequestHandler" not in repr(t.get_coro())}  # the receiver's
    assert leftover == set()
    assert sorted(receiver.statuses) == ["completed", "pending"]
    assert emu.stats.webhooks_sent == 0 and emu.deliveries == []
    await emu.aclose()  # idempotent
