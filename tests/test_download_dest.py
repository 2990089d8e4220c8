"""Where `download()` writes, and that every way it can fail is a `QubicoError` (issue 11, finding 8).

`download(task, "newdir/")` used to write a *file* named `newdir` (the trailing slash was lost
in `Path("newdir/")`), and the next call raised a bare `FileExistsError`. A result host on
loopback serves the bytes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from qubico_async import QubicoClient, QubicoError, RetryPolicy, Task, TaskOutput, TaskStatus
from qubico_async.errors import DownloadError, OutputExistsError
from tests._helpers import serve

pytestmark = pytest.mark.anyio

PAYLOAD = b"\x89PNG\r\n\x1a\n" + b"result" * 1000


@pytest.fixture
async def host() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD, content_type="image/png")

    app = web.Application()
    app.router.add_get("/r/{name}", answer)
    async with serve(app) as base:
        yield f"{base}/r"


@pytest.fixture
async def client(host: str) -> AsyncIterator[QubicoClient]:
    async with QubicoClient(api_key="k", base_url=host, retry=RetryPolicy.instant()) as c:
        yield c


def _task(host: str, task_id: str = "task-8") -> Task:
    return Task(task_id=task_id, status=TaskStatus.COMPLETED, output=TaskOutput(image_url=f"{host}/x.png"))


def _parts(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part")]


async def test_a_dest_ending_in_a_slash_is_a_folder_created_on_demand(
    client: QubicoClient, host: str, tmp_path: Path
) -> None:
    dest = str(tmp_path / "newdir") + "/"
    first = await client.download(_task(host), dest)
    assert (tmp_path / "newdir").is_dir()
    assert first == tmp_path / "newdir" / "task-8.png" and first.read_bytes() == PAYLOAD
    second = await client.download(_task(host, "task-9"), dest)  # the same folder again
    assert second == tmp_path / "newdir" / "task-9.png"
    nested = await client.download(_task(host), str(tmp_path / "a" / "b") + os.sep)
    assert nested == tmp_path / "a" / "b" / "task-8.png"
    assert _parts(tmp_path) == []


async def test_the_same_result_twice_is_a_typed_file_exists_error(
    client: QubicoClient, host: str, tmp_path: Path
) -> None:
    dest = str(tmp_path / "out") + "/"
    await client.download(_task(host), dest)
    with pytest.raises(OutputExistsError, match="overwrite=True") as caught:
        await client.download(_task(host), dest)
    assert isinstance(caught.value, QubicoError) and isinstance(caught.value, FileExistsError)
    assert isinstance(caught.value, DownloadError)
    assert caught.value.path == tmp_path / "out" / "task-8.png"
    again = await client.download(_task(host), dest, overwrite=True)
    assert again.read_bytes() == PAYLOAD
    # the plain-file form too
    file_dest = tmp_path / "file.png"
    file_dest.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        await client.download(_task(host), file_dest)
    assert file_dest.read_bytes() == b"keep"
    assert _parts(tmp_path) == []


async def test_existing_folder_without_slash_and_new_file_path(client: QubicoClient, host: str, tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    assert await client.download(_task(host), tmp_path / "existing") == tmp_path / "existing" / "task-8.png"
    as_str = await client.download(_task(host, "task-10"), str(tmp_path / "existing"))
    assert as_str == tmp_path / "existing" / "task-10.png"
    as_file = await client.download(_task(host), str(tmp_path / "plain"))  # no slash, missing: a file
    assert as_file == tmp_path / "plain" and as_file.is_file()


async def test_file_system_errors_are_download_errors(client: QubicoClient, host: str, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"i am a file")
    for dest in (blocker / "out.png", str(blocker) + "/", str(blocker / "sub") + "/"):
        with pytest.raises(DownloadError, match="blocker") as caught:
            await client.download(_task(host), dest)
        assert isinstance(caught.value, QubicoError)
        assert caught.value.__cause__ is None or isinstance(caught.value.__cause__, OSError)
    assert blocker.read_bytes() == b"i am a file"
    # a folder where the file should go, with overwrite=True: still typed
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "task-8.png").mkdir()
    with pytest.raises(DownloadError):
        await client.download(_task(host), tmp_path / "taken", overwrite=True)
    assert _parts(tmp_path) == []
