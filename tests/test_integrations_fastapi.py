"""The FastAPI kit and examples/fastapi_app.py on a real uvicorn server on loopback, with the
emulator delivering webhooks to it."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from fastapi import FastAPI, Request  # noqa: E402

from qubico_async import ClientClosedError, PollPolicy, QubicoClient, RetryPolicy, TaskStatus  # noqa: E402
from qubico_async.integrations import fastapi as kit  # noqa: E402
from qubico_async.integrations.fastapi import (  # noqa: E402
    QubicoClientDep,
    cancel_on_disconnect,
    get_client,
    get_hub,
    qubico_lifespan,
    webhook_router,
)
from qubico_async.testing import Emulator  # noqa: E402
from tests._helpers import HANG_GUARD, wait_until  # noqa: E402
from tests.test_integrations_aiohttp import (  # noqa: E402
    PATH,
    SCENARIOS,
    SECRET,
    Hooked,
    Scenario,
    check_no_secret_logged,
)

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures"
TARGET = (FIXTURES / "astronaut.jpg").read_bytes()
FACE = (FIXTURES / "grace_hopper.jpg").read_bytes()


@asynccontextmanager
async def serve(make_app: Callable[[str], FastAPI]) -> AsyncIterator[tuple[FastAPI, str]]:
    """Run `make_app(base_url)` under uvicorn on 127.0.0.1 (lifespan on) until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))  # bound before the app exists, so the app knows its public URL
        port = sock.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        app = make_app(base)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_level="warning",
            log_config=None,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            await wait_until(lambda: server.started)
            try:
                yield app, base
            finally:
                server.should_exit = True
    finally:
        sock.close()


def kit_app(emu: Emulator, **client_kwargs: Any) -> Callable[[str], FastAPI]:
    """An app built with the kit only: lifespan + webhook router."""

    def make(_: str) -> FastAPI:
        kwargs: dict[str, Any] = {"retry": RetryPolicy.instant(), "poll": PollPolicy.instant(timeout=10)}
        kwargs.update(client_kwargs)
        app = FastAPI(
            lifespan=qubico_lifespan(webhook_secret=SECRET, api_key=emu.api_key, base_url=emu.base_url, **kwargs)
        )
        app.include_router(webhook_router())
        return app

    return make


def example() -> ModuleType:
    return importlib.import_module("examples.fastapi_app")


def example_app(emu: Emulator) -> Callable[[str], FastAPI]:
    module = example()
    return lambda base: module.create_app(
        module.Settings(webhook_secret=SECRET, public_url=base, api_key=emu.api_key, base_url=emu.base_url)
    )


def swap_form(target: bytes = TARGET, face: bytes = FACE) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("target", target, filename="target.jpg", content_type="image/jpeg")
    form.add_field("face", face, filename="face.jpg", content_type="image/jpeg")
    return form


# -- the webhook router: the same scenarios as the aiohttp route --------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_webhook_router(scenario: Scenario, emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(kit_app(emu)) as (app, base), aiohttp.ClientSession() as http:
        client = app.state.qubico  # the client the app owns: the test drives it like a handler would
        await scenario(Hooked(emu, client.webhooks, client, base + PATH, http))
    check_no_secret_logged(caplog)


# -- the lifespan -------------------------------------------------------------------------------------


async def test_lifespan_owns_exactly_one_client_and_closes_it(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[QubicoClient] = []

    class Recorded(QubicoClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(kit, "QubicoClient", Recorded)

    def make(base: str) -> FastAPI:
        app = kit_app(emu)(base)

        @app.get("/which")
        async def which(client: QubicoClientDep) -> dict[str, Any]:
            info = await client.account_info()  # really uses the session
            return {"client": id(client), "hub": id(client.webhooks), "concurrency": info.max_concurrent_task_count}

        return app

    async with serve(make) as (app, base), aiohttp.ClientSession() as http:

        async def which() -> dict[str, Any]:
            async with http.get(base + "/which") as resp:
                assert resp.status == 200
                answer: dict[str, Any] = await resp.json()
                return answer

        answers = await asyncio.gather(*(which() for _ in range(8)))
        client = app.state.qubico
        assert len(made) == 1 and made[0] is client
        assert {a["client"] for a in answers} == {id(client)}
        assert {a["hub"] for a in answers} == {id(client.webhooks)}
        session = client._http()
        assert session is not None and not session.closed
    assert len(made) == 1
    assert session.closed  # closed on shutdown, not left to the garbage collector
    assert not hasattr(app.state, "qubico")
    with pytest.raises(ClientClosedError):
        await client.get_task("anything")
    gc.collect()  # an unclosed session or connector would warn here, and -W error fails the test


async def test_missing_lifespan_is_explained_at_startup_and_first_use() -> None:
    app = FastAPI()
    request = Request({"type": "http", "app": app, "headers": []})
    with pytest.raises(RuntimeError, match=r"lifespan=qubico_lifespan\(webhook_secret=\.\.\.\)"):
        get_client(request)
    with pytest.raises(RuntimeError, match="qubico_lifespan"):
        get_hub(request)
    app.include_router(webhook_router())
    with pytest.raises(RuntimeError, match="webhook_router\\(\\) is mounted but no QubicoClient"):
        async with app.router.lifespan_context(app):
            pass


async def test_lifespan_refuses_an_empty_secret_and_keeps_it_private(emu: Emulator) -> None:
    app = FastAPI()
    with pytest.raises(ValueError, match="secret is empty"):
        async with qubico_lifespan(webhook_secret="", api_key=emu.api_key)(app):
            pass
    assert not hasattr(app.state, "qubico")
    with pytest.raises(TypeError, match="webhooks="):
        qubico_lifespan(webhook_secret=SECRET, webhooks=None)
    lifespan = qubico_lifespan(webhook_secret=SECRET, api_key="sk-live-123")
    assert SECRET not in repr(lifespan) and "sk-live-123" not in repr(lifespan)
    async with lifespan(app):  # usable inside an app's own lifespan
        assert isinstance(get_client(Request({"type": "http", "app": app, "headers": []})), QubicoClient)
        with pytest.raises(RuntimeError, match="once per app"):
            async with lifespan(app):
                pass
    assert not hasattr(app.state, "qubico")


# -- the example app ----------------------------------------------------------------------------------


async def test_example_imports_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QUBICO_API_KEY", "QUBICO_WEBHOOK_SECRET", "PUBLIC_URL", "QUBICO_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    module = importlib.reload(example())
    assert isinstance(module.app, FastAPI)
    settings = module.Settings.from_env()
    assert settings.webhook_secret == "" and settings.public_url == "http://127.0.0.1:8000"
    with pytest.raises(ValueError, match="secret is empty"):  # refused at startup, not at import
        async with module.app.router.lifespan_context(module.app):
            pass
    monkeypatch.setenv("QUBICO_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PUBLIC_URL", "https://swap.example.com")
    assert module.Settings.from_env().public_url == "https://swap.example.com"
    assert SECRET not in repr(module.Settings.from_env())


async def test_example_swap_end_to_end(emu: Emulator) -> None:
    async with serve(example_app(emu)) as (app, base), aiohttp.ClientSession() as http:
        with anyio.fail_after(HANG_GUARD):
            async with http.post(base + "/swap", data=swap_form()) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
        assert answer["status"] == "completed" and answer["error"] is None
        assert answer["image_url"].startswith(emu.base_url)
        assert emu.stats.gets == 0  # the webhook answered, not the fallback poll
        async with http.get(answer["image_url"]) as resp:
            assert await resp.read() == TARGET  # the emulator's identity "swap"
        await emu.drain()
        assert {(d.endpoint, d.status_code) for d in emu.deliveries} == {(base + PATH, 200)}
        assert app.state.qubico.webhooks.waiting == 0


async def test_example_swap_reports_failures_and_bad_input(emu: Emulator) -> None:
    async with serve(example_app(emu)) as (_, base), aiohttp.ClientSession() as http:
        async with http.post(base + "/swap", data=swap_form(target=b"not an image")) as resp:
            assert resp.status == 400
            assert "image" in (await resp.json())["detail"]
        assert emu.stats.creates == 0  # refused before anything was paid for
        emu.fail_next(1, "no face detected in target_image")
        async with http.post(base + "/swap", data=swap_form()) as resp:
            assert resp.status == 502
            answer = await resp.json()
        assert answer["status"] == "failed" and answer["error"] == "no face detected in target_image"
        async with http.get(base + "/swap/no-such-task") as resp:
            assert resp.status == 404


async def test_example_swap_async_answers_at_once_and_reads_the_webhook(emu: Emulator) -> None:
    emu.processing_seconds = 3600
    async with serve(example_app(emu)) as (app, base), aiohttp.ClientSession() as http:
        hub = app.state.qubico.webhooks
        with anyio.fail_after(HANG_GUARD):  # the task needs an hour: a handler that waited for it would hit the guard
            async with http.post(base + "/swap/async", data=swap_form()) as resp:
                assert resp.status == 202
                task_id = (await resp.json())["task_id"]
        assert hub.waiting == 0  # nothing is held open server-side
        async with http.get(f"{base}/swap/{task_id}") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] in ("pending", "processing")
        gets = emu.stats.gets
        emu.advance(3600)
        await wait_until(lambda: (t := hub.latest(task_id)) is not None and t.status is TaskStatus.COMPLETED)
        async with http.get(f"{base}/swap/{task_id}") as resp:
            answer = await resp.json()
        assert answer["status"] == "completed" and answer["image_url"].startswith(emu.base_url)
        assert emu.stats.gets == gets  # answered from the webhook hub, no call to the service


# -- client disconnects -------------------------------------------------------------------------------


def new_tasks(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Tasks started since `before`, except the emulator's handlers of keep-alive connections
    (the app's client keeps its connection to the emulator pooled: that is no leak)."""
    return [
        t for t in asyncio.all_tasks() - before if getattr(t.get_coro(), "__qualname__", "") != "RequestHandler.start"
    ]


async def test_client_disconnect_cancels_the_wait_without_leaks(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    emu.processing_seconds = 30  # the handler would wait (webhook or 10 s+ fallback poll) for ages
    async with serve(example_app(emu)) as (app, base):
        hub = app.state.qubico.webhooks
        before = asyncio.all_tasks()
        async with aiohttp.ClientSession() as http:

            async def call() -> None:
                async with http.post(base + "/swap", data=swap_form()) as resp:
                    await resp.read()

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_until(lambda: hub.waiting == 1)  # the handler is inside client.wait()
                tg.cancel_scope.cancel()  # the browser goes away: aiohttp closes the connection
        with anyio.fail_after(HANG_GUARD):
            await wait_until(lambda: hub.waiting == 0)
            await wait_until(lambda: not new_tasks(before))  # the handler and its watcher are gone
        assert emu.stats.gets == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_cancel_on_disconnect_passes_results_and_errors_through(emu: Emulator) -> None:
    def make(base: str) -> FastAPI:
        app = kit_app(emu)(base)

        async def boom() -> None:
            raise LookupError("from the awaited call")

        @app.get("/ok")
        async def ok(request: Request) -> dict[str, Any]:
            return {"value": await cancel_on_disconnect(request, _value())}

        @app.get("/boom")
        async def fails(request: Request) -> dict[str, Any]:
            try:
                await cancel_on_disconnect(request, boom())
            except LookupError as exc:  # not wrapped in an ExceptionGroup
                return {"error": str(exc)}
            return {}

        return app

    async with serve(make) as (_, base), aiohttp.ClientSession() as http:
        async with http.get(base + "/ok") as resp:
            assert await resp.json() == {"value": 42}
        async with http.get(base + "/boom") as resp:
            assert await resp.json() == {"error": "from the awaited call"}


async def _value() -> int:
    await anyio.lowlevel.checkpoint()
    return 42
