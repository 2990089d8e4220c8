"""`hub.latest()` keeps the first terminal state, as the waiters saw it (issue 11, finding 11).

A sender that misbehaves (a retried or forged-order delivery: completed, then failed) posts to
a real aiohttp webhook route on loopback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest
from aiohttp import web

from qubico_async import Task, TaskStatus
from qubico_async.integrations.aiohttp import webhook_route
from qubico_async.webhooks import WebhookHub
from tests._helpers import serve

pytestmark = pytest.mark.anyio

SECRET = "hook-s3cret-terminal-11"
PATH = "/hook"


def _delivery(status: str, ts: int) -> bytes:
    data = {
        "task_id": "t-11",
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "status": status,
        "output": {"image_url": "https://img.example/out.png"} if status == "completed" else None,
        "error": {"code": 1 if status == "failed" else 0, "message": "late failure" if status == "failed" else ""},
    }
    return json.dumps({"timestamp": ts, "data": data}).encode()


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[WebhookHub, str]]:
    hub = WebhookHub(SECRET)
    app = web.Application()
    app.add_routes([webhook_route(hub, PATH)])
    async with serve(app) as base:
        yield hub, f"{base}{PATH}"


async def test_a_second_terminal_delivery_does_not_replace_the_first(endpoint: tuple[WebhookHub, str]) -> None:
    hub, url = endpoint
    got: list[Task] = []

    async def waiter() -> None:
        with hub.subscribe("t-11") as sub:
            got.append(await sub.terminal())

    headers = {"X-Webhook-Secret": SECRET, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        for status, ts in (("completed", 10), ("failed", 11)):
            async with http.post(url, data=_delivery(status, ts), headers=headers) as resp:
                assert resp.status == 200
    assert [t.status for t in got] == [TaskStatus.COMPLETED]
    latest = hub.latest("t-11")
    assert latest is not None and latest.status is TaskStatus.COMPLETED  # what the waiter got
    assert latest == got[0]
    # a late subscriber sees the same first terminal state
    with hub.subscribe("t-11") as sub:
        assert sub.result is not None and sub.result.status is TaskStatus.COMPLETED


def test_resolve_keeps_the_first_terminal_state() -> None:
    hub = WebhookHub(SECRET)
    first = Task(task_id="t-1", status=TaskStatus.FAILED)
    hub.resolve(Task(task_id="t-1", status=TaskStatus.PROCESSING))
    hub.resolve(first)
    hub.resolve(Task(task_id="t-1", status=TaskStatus.COMPLETED))
    hub.resolve(Task(task_id="t-1", status=TaskStatus.PENDING))
    assert hub.latest("t-1") is first
