"""Task ids are checked before they reach a URL (issue 11, finding 10).

`..` and `.` are dot segments: a URL library normalises them away, so `get_task("..")` used to
send `GET /api/v1/` and `"."` sent `GET /api/v1/task/`. A scripted server records every
request, so the tests prove that a bad id sends nothing and a good one exactly one GET.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from qubico_async import InvalidInputError, PollPolicy, QubicoClient, RetryPolicy, Task, TaskStatus
from qubico_async.webhooks import WebhookHub
from tests._helpers import serve

pytestmark = pytest.mark.anyio

BAD_IDS = [
    "..",
    ".",
    "",
    "   ",
    "\t\n",
    "a/b",
    "../account/info",
    "/",
    "a b",
    "ab%2Fcd",
    "x" * 201,
    "t\x00",
    "é",
    "a.b",
]
GOOD_IDS = ["0f8fad5b-d9cb-469f-a165-70867728950e", "abc_DEF-1", "7", "x" * 200]


class Scripted:
    """Answers every request with a completed task echoing the last path segment; records paths."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def any(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        task_id = request.raw_path.rsplit("/", 1)[-1] or "none"
        data = {"task_id": task_id, "status": "completed", "output": {"image_url": "https://x.example/r.png"}}
        return web.json_response({"code": 200, "message": "success", "data": data})


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, str]]:
    server = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.any)
    async with serve(app) as base:
        yield server, base


@pytest.fixture
async def client(scripted: tuple[Scripted, str]) -> AsyncIterator[QubicoClient]:
    async with QubicoClient(
        api_key="k", base_url=scripted[1], retry=RetryPolicy.instant(), poll=PollPolicy.instant(timeout=5)
    ) as c:
        yield c


@pytest.mark.parametrize("task_id", BAD_IDS)
async def test_bad_task_ids_send_nothing(scripted: tuple[Scripted, str], client: QubicoClient, task_id: str) -> None:
    server, _ = scripted
    with pytest.raises(InvalidInputError, match="task id"):
        await client.get_task(task_id)
    with pytest.raises(InvalidInputError, match="task id"):
        await client.wait(task_id)
    with pytest.raises(InvalidInputError, match="task id"):
        await client.wait(Task(task_id=task_id, status=TaskStatus.PENDING))
    assert server.paths == []


async def test_bad_task_id_in_a_webhook_wait_sends_nothing(scripted: tuple[Scripted, str]) -> None:
    server, base = scripted
    async with QubicoClient(api_key="k", base_url=base, webhooks=WebhookHub("s3cret-long-enough")) as c:
        with pytest.raises(InvalidInputError, match="task id"):
            await c.wait("..", via="webhook", poll=PollPolicy.instant(timeout=5))
        assert c.webhooks is not None and c.webhooks.waiting == 0
    assert server.paths == []


async def test_non_string_task_id_is_refused(scripted: tuple[Scripted, str], client: QubicoClient) -> None:
    with pytest.raises(InvalidInputError, match="task id"):
        await client.get_task(123)  # type: ignore[arg-type]
    assert scripted[0].paths == []


@pytest.mark.parametrize("task_id", GOOD_IDS)
async def test_good_task_ids_send_one_get_to_their_own_path(
    scripted: tuple[Scripted, str], client: QubicoClient, task_id: str
) -> None:
    server, _ = scripted
    task = await client.get_task(task_id)
    assert task.task_id == task_id
    assert server.paths == [f"/api/v1/task/{task_id}"]
    assert (await client.wait(task_id)).status is TaskStatus.COMPLETED
    assert server.paths == [f"/api/v1/task/{task_id}"] * 2
