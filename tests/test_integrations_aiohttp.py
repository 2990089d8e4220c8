"""The aiohttp webhook route on a real loopback server, fed by the emulator's deliveries.

The scenarios are plain functions over a `Hooked` (emulator + hub + client + endpoint), so
test_integrations_fastapi.py runs the very same ones against the FastAPI router.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from qubico_async import FaceSwap, PollPolicy, QubicoClient, RetryPolicy, Task, TaskStatus, WebhookConfig
from qubico_async.integrations.aiohttp import webhook_handler, webhook_route
from qubico_async.testing import Emulator
from qubico_async.webhooks import MAX_BODY_BYTES, WebhookEvent, WebhookHub
from tests._helpers import HANG_GUARD, wait_until
from tests._helpers import png as _png

pytestmark = pytest.mark.anyio

SECRET = "hook-s3cret-9d1c-long-enough"
WRONG = "not-the-secret-4242"
PATH = "/qubico/webhook"
SLOW = PollPolicy(initial=3600, factor=1, max_interval=3600, jitter=0)
"""A fallback poll that never fires within a test: whatever resolves the wait is a webhook."""
FAST = PollPolicy(initial=0.02, factor=1, max_interval=0.02, jitter=0)


def png(i: int, size: int = 64) -> bytes:
    """A distinct valid PNG header per i (the emulator and the SDK check headers only)."""
    return _png(i, size, tag="img")


@dataclass
class Hooked:
    """An app on loopback that receives webhooks into `hub`; `client` has that hub attached."""

    emu: Emulator
    hub: WebhookHub
    client: QubicoClient
    url: str  # the webhook endpoint
    http: aiohttp.ClientSession

    async def submit(self, secret: str = SECRET, i: int = 0) -> Task:
        return await self.client.submit(FaceSwap(png(i), png(-1)), webhook=WebhookConfig(self.url, secret))

    async def post(self, body: Any, secret: str | None = SECRET) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Webhook-Secret"] = secret
        if isinstance(body, bytes) and len(body) > 1 << 20:
            body = io.BytesIO(body)  # aiohttp warns about big raw bytes bodies
        async with self.http.post(self.url, data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


# -- the scenarios (shared with the FastAPI tests) ------------------------------------------------


async def happy_path(h: Hooked) -> None:
    task = await h.submit()
    with anyio.fail_after(HANG_GUARD):
        done = await h.client.wait(task, via="webhook", poll=SLOW)
    assert done.status is TaskStatus.COMPLETED and done.result_url
    assert h.emu.stats.gets == 0  # no fallback poll ran: the delivery resolved it
    await h.emu.drain()
    assert [(d.status, d.status_code) for d in h.emu.deliveries] == [("pending", 200), ("completed", 200)]
    assert h.hub.waiting == 0
    assert h.hub.latest(task.task_id) == done


async def failed_task_is_delivered_too(h: Hooked) -> None:
    h.emu.fail_next(1, "no face detected in target_image")
    task = await h.submit()
    with anyio.fail_after(HANG_GUARD):
        done = await h.client.wait(task, via="webhook", poll=SLOW)
    assert done.status is TaskStatus.FAILED
    assert done.error is not None and done.error.message == "no face detected in target_image"
    assert h.emu.stats.gets == 0


async def wrong_secret_is_401_and_resolves_nothing(h: Hooked) -> None:
    h.emu.faults.webhooks.retries = 0
    task = await h.submit(secret=WRONG)
    results: list[Task] = []

    async def waiter() -> None:
        results.append(await h.client.wait(task, via="webhook", poll=SLOW))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_until(lambda: h.hub.waiting == 1)
        await wait_until(lambda: len(h.emu.deliveries) == 2)
        await h.emu.drain()
        assert [(d.status, d.status_code) for d in h.emu.deliveries] == [("pending", 401), ("completed", 401)]
        await anyio.sleep(0.05)  # nothing is on its way: the waiter stays unresolved
        assert results == [] and h.hub.waiting == 1
        assert h.hub.latest(task.task_id) is None
        tg.cancel_scope.cancel()
    assert h.hub.waiting == 0
    assert h.emu.stats.gets == 0


async def garbage_is_400_and_verified_first(h: Hooked) -> None:
    valid = {"timestamp": 1724511853, "data": {"task_id": "t-1", "status": "completed"}}
    for body in (
        b"not json at all",
        b"[]",
        b"\xff\xfe",
        json.dumps({"timestamp": 1}).encode(),
        json.dumps({**valid, "timestamp": "soon"}).encode(),
        json.dumps({**valid, "data": {"status": "completed"}}).encode(),
        json.dumps({**valid, "data": "nope"}).encode(),
        b'{"timestamp": 1, "data": ' * 5000,
    ):
        status, answer = await h.post(body)
        assert (status, answer) == (400, {"ok": False, "error": "malformed delivery"}), body[:40]
    # The secret is checked before the body is looked at.
    assert await h.post(b"not json at all", secret=WRONG) == (401, {"ok": False, "error": "unauthorized"})
    assert (await h.post(json.dumps(valid).encode(), secret=None))[0] == 401
    assert (await h.post(json.dumps(valid).encode(), secret=SECRET.upper()))[0] == 401
    # Over the cap: refused without reading it all, declared length or chunked.
    assert await h.post(b" " * (MAX_BODY_BYTES + 1)) == (413, {"ok": False, "error": "body too large"})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    assert (await h.post(chunks()))[0] == 413
    assert h.hub.latest("t-1") is None
    # Still healthy: a real delivery after all that is accepted.
    assert await h.post(json.dumps(valid).encode()) == (200, {"ok": True})
    assert h.hub.latest("t-1") is not None


async def duplicates_are_acknowledged_and_ignored(h: Hooked) -> None:
    events: list[WebhookEvent | None] = []
    handle = h.hub.handle

    def spy(headers: Any, body: Any) -> WebhookEvent | None:
        event = handle(headers, body)
        events.append(event)
        return event

    h.hub.handle = spy  # type: ignore[method-assign]
    h.emu.faults.webhooks.duplicate = 2  # both deliveries of the task are sent twice
    task = await h.submit()
    with anyio.fail_after(HANG_GUARD):
        done = await h.client.wait(task, via="webhook", poll=SLOW)
    assert done.status is TaskStatus.COMPLETED
    await h.emu.drain()
    assert [(d.status, d.status_code) for d in h.emu.deliveries] == [
        ("pending", 200),
        ("pending", 200),
        ("completed", 200),
        ("completed", 200),
    ]
    assert [e is None for e in events] == [False, True, False, True]  # the copies were recognised
    assert h.emu.stats.gets == 0


async def dropped_webhook_is_recovered_by_polling(h: Hooked) -> None:
    h.emu.faults.webhooks.drop = 2  # neither the creation nor the terminal delivery is sent
    task = await h.submit()
    with anyio.fail_after(HANG_GUARD):
        done = await h.client.wait(task, via="webhook", poll=FAST)
    assert done.status is TaskStatus.COMPLETED
    assert h.emu.stats.webhooks_dropped == 2 and h.emu.deliveries == []
    assert h.emu.stats.gets >= 1
    latest = h.hub.latest(task.task_id)  # the poll fed the hub, for every other waiter
    assert latest is not None and latest.status is TaskStatus.COMPLETED
    assert h.hub.waiting == 0


async def out_of_order_delivery_keeps_the_terminal_state(h: Hooked) -> None:
    h.emu.faults.webhooks.out_of_order = True  # `completed` is delivered before `pending`
    task = await h.submit()
    with anyio.fail_after(HANG_GUARD):
        done = await h.client.wait(task, via="webhook", poll=SLOW)
    assert done.status is TaskStatus.COMPLETED
    await h.emu.drain()
    assert [(d.status, d.status_code) for d in h.emu.deliveries] == [("completed", 200), ("pending", 200)]
    latest = h.hub.latest(task.task_id)
    assert latest is not None and latest.status is TaskStatus.COMPLETED  # the late `pending` did not win
    with anyio.fail_after(HANG_GUARD):  # a later waiter is answered from the hub at once
        again = await h.client.wait(task.task_id, via="webhook", poll=SLOW)
    assert again.status is TaskStatus.COMPLETED
    assert h.emu.stats.gets == 0


Scenario = Callable[[Hooked], Awaitable[None]]
SCENARIOS: list[Scenario] = [
    happy_path,
    failed_task_is_delivered_too,
    wrong_secret_is_401_and_resolves_nothing,
    garbage_is_400_and_verified_first,
    duplicates_are_acknowledged_and_ignored,
    dropped_webhook_is_recovered_by_polling,
    out_of_order_delivery_keeps_the_terminal_state,
]


def check_no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert SECRET not in text and WRONG not in text
    assert SECRET.upper() not in text


# -- aiohttp ----------------------------------------------------------------------------------------


@pytest.fixture
async def hooked(emu: Emulator) -> AsyncIterator[Hooked]:
    hub = WebhookHub(SECRET)
    app = web.Application()
    app.add_routes([webhook_route(hub)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}"
        async with (
            QubicoClient(
                emu.api_key,
                base_url=emu.base_url,
                retry=RetryPolicy.instant(),
                poll=PollPolicy.instant(timeout=10),
                webhooks=hub,
            ) as client,
            aiohttp.ClientSession() as http,
        ):
            yield Hooked(emu, hub, client, url, http)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_webhook_route(scenario: Scenario, hooked: Hooked, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await scenario(hooked)
    check_no_secret_logged(caplog)


async def test_route_defaults_and_other_methods(hooked: Hooked) -> None:
    route = webhook_route(hooked.hub)
    assert (route.method, route.path) == ("POST", PATH)
    async with hooked.http.get(hooked.url) as resp:
        assert resp.status == 405


async def test_custom_cap_and_path(emu: Emulator) -> None:
    hub = WebhookHub(SECRET)
    app = web.Application()
    app.router.add_post("/hooks/piapi", webhook_handler(hub, max_body=64))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/piapi"
        async with aiohttp.ClientSession() as http:
            headers = {"x-webhook-secret": SECRET}
            async with http.post(url, data=b"{" + b" " * 64 + b"}", headers=headers) as resp:
                assert resp.status == 413
            async with http.post(url, data=b"{" + b" " * 60 + b"}", headers=headers) as resp:
                assert resp.status == 400  # within the cap: parsed, and not a delivery
    finally:
        await runner.cleanup()
    with pytest.raises(ValueError, match="max_body"):
        webhook_handler(hub, max_body=0)
