"""Downloads: streamed, capped, retried, atomic, and confined to the chosen folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from qubico_async import (
    APIError,
    FaceSwap,
    InvalidInputError,
    MalformedResponseError,
    QubicoClient,
    ResultExpiredError,
    RetryPolicy,
    Task,
    TaskOutput,
    TaskStatus,
    TransportError,
)
from qubico_async.testing import Emulator
from tests._helpers import serve, wait_until

pytestmark = pytest.mark.anyio

PAYLOAD = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4096  # ~1 MB


class Storage:
    """A tiny result host with misbehaviours, on 127.0.0.1."""

    def __init__(self) -> None:
        self.hits = 0
        self.fail_first = 0
        self.stall_after_half = False
        self.release = anyio.Event()
        self.halfway = anyio.Event()  # set when a stalled response has sent its first half

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        name = request.match_info["name"]
        if name.startswith("gone"):
            return web.Response(status=410)
        if name.startswith("missing"):
            return web.Response(status=404)
        if name.startswith("forbidden"):
            return web.Response(status=403)
        resp = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": str(len(PAYLOAD))})
        await resp.prepare(request)
        half = len(PAYLOAD) // 2
        await resp.write(PAYLOAD[:half])
        if self.fail_first > 0:
            self.fail_first -= 1
            assert request.transport is not None
            request.transport.close()  # reset mid-body
            return resp
        if self.stall_after_half:
            self.halfway.set()
            await self.release.wait()
        await resp.write(PAYLOAD[half:])
        await resp.write_eof()
        return resp


async def _to_storage(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"/r/{request.match_info['name']}")  # a CDN in front of the storage host


@pytest.fixture
async def storage() -> AsyncIterator[tuple[Storage, str]]:
    store = Storage()
    app = web.Application()
    app.router.add_get("/r/{name}", store.serve)
    app.router.add_get("/cdn/{name}", _to_storage)
    async with serve(app) as url:
        try:
            yield store, f"{url}/r"
        finally:
            store.release.set()  # a held response ends before the server does


def _task(url: str, task_id: str = "task-123") -> Task:
    return Task(task_id=task_id, status=TaskStatus.COMPLETED, output=TaskOutput(image_url=url))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


async def test_download_to_file_and_folder(client: QubicoClient, storage: tuple[Storage, str], tmp_path: Path) -> None:
    _, base = storage
    out = await client.download(_task(f"{base}/x.png"), tmp_path / "out.png")
    assert out == tmp_path / "out.png"
    assert out.read_bytes() == PAYLOAD
    in_folder = await client.download(_task(f"{base}/x.png"), tmp_path)
    assert in_folder == tmp_path / "task-123.png"  # named after the task and the content type
    assert _leftovers(tmp_path) == []


async def test_a_result_url_that_redirects_is_followed(
    client: QubicoClient, storage: tuple[Storage, str], tmp_path: Path
) -> None:
    store, base = storage
    out = await client.download(_task(base.replace("/r", "/cdn") + "/x.png"), tmp_path)
    assert out.read_bytes() == PAYLOAD and store.hits == 1
    assert client.requests_sent["download"] == 1  # one download; its redirect is not a retry


async def test_existing_file_is_not_overwritten_by_default(
    client: QubicoClient, storage: tuple[Storage, str], tmp_path: Path
) -> None:
    _, base = storage
    dest = tmp_path / "out.png"
    dest.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        await client.download(_task(f"{base}/x.png"), dest)
    assert dest.read_bytes() == b"keep me"
    await client.download(_task(f"{base}/x.png"), dest, overwrite=True)
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == []


async def test_download_retries_a_reset_mid_body(
    client: QubicoClient, storage: tuple[Storage, str], tmp_path: Path
) -> None:
    store, base = storage
    store.fail_first = 1
    out = await client.download(_task(f"{base}/x.png"), tmp_path / "out.png")
    assert out.read_bytes() == PAYLOAD
    assert store.hits == 2


async def test_failed_download_leaves_nothing_at_dest(
    storage: tuple[Storage, str], tmp_path: Path, emu: Emulator
) -> None:
    store, base = storage
    store.fail_first = 5
    async with QubicoClient(api_key="k", base_url=emu.base_url, retry=RetryPolicy.instant(2)) as c:
        with pytest.raises(TransportError):
            await c.download(_task(f"{base}/x.png"), tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
    assert _leftovers(tmp_path) == []


async def test_download_killed_midway_leaves_no_file(
    client: QubicoClient, storage: tuple[Storage, str], tmp_path: Path
) -> None:
    store, base = storage
    store.stall_after_half = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.download, _task(f"{base}/x.png"), tmp_path / "out.png")
        await store.halfway.wait()
        await wait_until(lambda: any(tmp_path.iterdir()))  # the temp file holds part of the body
        tg.cancel_scope.cancel()  # killed midway, by a count of bytes, not after some seconds
    assert not (tmp_path / "out.png").exists()
    assert list(tmp_path.iterdir()) == []  # no temp file either


async def test_size_cap(client: QubicoClient, storage: tuple[Storage, str], tmp_path: Path) -> None:
    _, base = storage
    with pytest.raises(MalformedResponseError, match="cap"):
        await client.download(_task(f"{base}/x.png"), tmp_path / "out.png", max_bytes=1000)
    with pytest.raises(MalformedResponseError, match="cap"):
        await client.download_bytes(_task(f"{base}/x.png"), max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["gone.png", "missing.png"])
async def test_expired_results(client: QubicoClient, storage: tuple[Storage, str], name: str) -> None:
    _, base = storage
    with pytest.raises(ResultExpiredError, match="3 days"):
        await client.download_bytes(_task(f"{base}/{name}"))


async def test_a_storage_refusal_is_an_api_error_not_invalid_input(
    client: QubicoClient, storage: tuple[Storage, str], tmp_path: Path
) -> None:
    """A 403 from the result host is the server's answer, not bad input (InvalidInputError means "before any request")."""
    _, base = storage
    with pytest.raises(APIError, match="HTTP 403") as caught:
        await client.download(_task(f"{base}/forbidden.png"), tmp_path / "x.png")
    assert caught.value.status == 403 and not isinstance(caught.value, InvalidInputError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "javascript:alert(1)"])
async def test_refuses_non_http_urls(client: QubicoClient, url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="only http"):
        await client.download(_task(url), tmp_path / "x.png")
    with pytest.raises(InvalidInputError, match="only http"):
        await client.download_bytes(_task(url))


async def test_server_chosen_names_cannot_escape_the_folder(
    client: QubicoClient, storage: tuple[Storage, str], tmp_path: Path
) -> None:
    _, base = storage
    out = await client.download(_task(f"{base}/x.png", task_id="../../etc/evil"), tmp_path)
    assert out.parent == tmp_path
    assert ".." not in out.name and "/" not in out.name


async def test_task_without_result(client: QubicoClient, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no result URL"):
        await client.download(Task(task_id="t", status=TaskStatus.FAILED), tmp_path)


async def test_download_real_emulator_result(
    client: QubicoClient, emu: Emulator, fixtures: Path, tmp_path: Path
) -> None:
    task = await client.run(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg"))
    path = await client.download(task, tmp_path)
    assert path.name == f"{task.task_id}.jpg"
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"
