"""The emulator fetches loopback URL inputs (127.0.0.0/8, ::1, localhost, any port) like the service
fetches public ones, and refuses every other host. Plus a third-party client (raw aiohttp only)
against `python -m qubico_async emulator` in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from qubico_async.testing import Emulator, identity
from qubico_async.testing._inputs import is_loopback_host

pytestmark = pytest.mark.anyio

KEY = "loop-key"
FIXTURES = Path(__file__).parent / "fixtures"
HOPPER = (FIXTURES / "grace_hopper.jpg").read_bytes()
ASTRONAUT = (FIXTURES / "astronaut.jpg").read_bytes()
TINY_MP4 = (FIXTURES / "tiny.mp4").read_bytes()
ROOT = Path(__file__).resolve().parent.parent


class StaticServer:
    """A loopback file server written for the test; counts the requests per path."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.hits: dict[str, int] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        data = self.files.get(request.path)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data)

    async def __aenter__(self) -> StaticServer:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def static() -> AsyncIterator[StaticServer]:
    files = {
        "/hopper.jpg": HOPPER,
        "/astronaut.jpg": ASTRONAUT,
        "/notes.png": b"plain text",
        "/clip.mp4": TINY_MP4,
        "/huge.jpg": HOPPER + b"\0" * (10 * 1024 * 1024),
    }
    async with StaticServer(files) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}) as session:
        yield session


async def run_task(http: aiohttp.ClientSession, emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{emu.base_url}/api/v1/task", json=body) as resp:
        created = await resp.json()
        assert resp.status == 200, created
    url = f"{emu.base_url}/api/v1/task/{created['data']['task_id']}"
    async with http.get(url) as resp:
        first: dict[str, Any] = (await resp.json())["data"]
    assert first["status"] == "processing"  # the fetch runs as a job: GETs keep being answered meanwhile
    await emu.drain()
    async with http.get(url) as resp:
        data: dict[str, Any] = (await resp.json())["data"]
        return data


def image_task(target: str, swap: str) -> dict[str, Any]:
    return {
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "input": {"target_image": target, "swap_image": swap},
    }


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.5.6.7", "::1", "[::1]", "localhost", "LOCALHOST", "localhost.", "a.localhost"):
        assert is_loopback_host(host), host
    for host in ("example.com", "10.0.0.1", "192.168.1.1", "0.0.0.0", "128.0.0.1", "::2", "localhost.example.com", ""):
        assert not is_loopback_host(host), host


async def test_loopback_urls_are_fetched(http: aiohttp.ClientSession, static: StaticServer) -> None:
    async with Emulator(api_key=KEY, processor=identity, wire="plain") as emu:
        done = await run_task(
            http, emu, image_task(static.url("/astronaut.jpg"), static.url("/hopper.jpg", "localhost"))
        )
        assert done["status"] == "completed", done["error"]
        assert emu.tasks[done["task_id"]].result == ASTRONAUT  # identity: the fetched target
        assert static.hits == {"/astronaut.jpg": 1, "/hopper.jpg": 1}

        video = {
            "model": "Qubico/video-toolkit",
            "task_type": "face-swap",
            "input": {"target_video": static.url("/clip.mp4"), "swap_image": static.url("/hopper.jpg")},
        }
        done = await run_task(http, emu, video)
        assert done["status"] == "completed", done["error"]
        assert emu.tasks[done["task_id"]].result == TINY_MP4


@pytest.mark.parametrize(
    ("path", "raw"),
    [("/notes.png", "not a supported image"), ("/nope.jpg", "HTTP 404"), ("/huge.jpg", "larger than 10485760 bytes")],
    ids=["not-an-image", "404", "over-10-MiB"],
)
async def test_bad_loopback_inputs_fail_the_task(
    http: aiohttp.ClientSession, static: StaticServer, path: str, raw: str
) -> None:
    async with Emulator(api_key=KEY, processor=identity, wire="plain") as emu:
        failed = await run_task(http, emu, image_task(static.url(path), static.url("/hopper.jpg")))
    assert (failed["status"], failed["error"]["message"]) == ("failed", "failed to get valid image")
    assert raw in failed["error"]["raw_message"]


async def test_other_hosts_are_never_contacted(http: aiohttp.ClientSession, static: StaticServer) -> None:
    async with Emulator(api_key=KEY, processor=identity, wire="plain") as emu:
        body = image_task("https://i.ibb.co/LnLYwhR/66f41e64b1922.jpg", static.url("/hopper.jpg"))
        async with http.post(f"{emu.base_url}/api/v1/task", json=body) as resp:
            task_id = (await resp.json())["data"]["task_id"]
        async with http.get(f"{emu.base_url}/api/v1/task/{task_id}") as resp:
            failed = (await resp.json())["data"]  # refused at once, before any fetch
    only = "the emulator only fetches loopback URLs (got host i.ibb.co)"
    assert failed["status"] == "failed"
    assert failed["error"]["raw_message"] == only
    assert only in failed["error"]["message"]
    assert static.hits == {}  # not even the loopback input was fetched


async def test_a_raw_aiohttp_client_completes_a_face_swap_against_the_cli_emulator(static: StaticServer) -> None:
    """A third-party client (no SDK): POST /api/v1/task with x-api-key, GET until completed, URL inputs
    on a loopback static server, against `python -m qubico_async emulator` in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "qubico_async", "emulator", "--port", "0", "--api-key", "third-party"]
    cmd += ["--pending-seconds", "0", "--processing-seconds", "0"]
    process = await anyio.open_process(cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        banner = b""
        with anyio.fail_after(60):
            while b"Press Ctrl-C" not in banner:
                chunk = await process.stdout.receive()
                banner += chunk
        lines = dict(
            line.split(":", 1) for line in banner.decode().splitlines() if line.startswith(("base_url", "wire"))
        )
        base_url = lines["base_url"].strip()
        assert lines["wire"].strip() == "realistic"

        async with aiohttp.ClientSession() as session:
            headers = {"x-api-key": "third-party", "Content-Type": "application/json"}
            body = image_task(static.url("/astronaut.jpg"), static.url("/hopper.jpg"))
            async with session.post(f"{base_url}/api/v1/task", json=body, headers=headers) as resp:
                assert resp.status == 200
                created = await resp.json()
            assert created["code"] in (200, 0), created
            task_id = created["data"]["task_id"]
            gets = 0
            task: dict[str, Any] = {}
            with anyio.fail_after(60):
                while True:
                    async with session.get(f"{base_url}/api/v1/task/{task_id}", headers=headers) as resp:
                        assert resp.status == 200
                        task = (await resp.json())["data"]
                    gets += 1
                    if task["status"].lower() in ("completed", "failed"):
                        break
                    await anyio.sleep(0.05)
            assert task["status"].lower() == "completed", task["error"]
            async with session.get(task["output"]["image_url"]) as resp:
                result = await resp.read()
            assert resp.status == 200 and result[:3] == b"\xff\xd8\xff"
            assert result != ASTRONAUT or "engine:     identity" in banner.decode()  # OpenCV swapped the face
        assert static.hits == {"/astronaut.jpg": 1, "/hopper.jpg": 1}
        assert gets >= 1
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await process.aclose()
