"""`qubico_lifespan(..., redis_url=...)`: two FastAPI "workers" (two uvicorn servers, each its own
client and hub) sharing one real redis-server. The service delivers webhooks to worker A only; a
`POST /swap` served by worker B still returns at the delivery, not at B's fallback poll."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import anyio
import pytest
from fastapi import FastAPI

from qubico_async import PollPolicy, RetryPolicy
from qubico_async.coordination import LocalCoordination, RedisCoordination
from qubico_async.integrations.fastapi import qubico_lifespan
from qubico_async.testing import Emulator
from tests.redis_server import RedisServer
from tests.test_integrations_aiohttp import SECRET
from tests.test_integrations_fastapi import example, serve, swap_form

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def worker_app(emu: Emulator, redis_url: str | None, hook_base: list[str]) -> FastAPI:
    """The example app; its webhooks point at `hook_base[0]` (worker A), wherever it runs."""
    module = example()
    settings = module.Settings(
        webhook_secret=SECRET, public_url=hook_base[0], api_key=emu.api_key, base_url=emu.base_url, redis_url=redis_url
    )
    return module.create_app(settings)  # type: ignore[no-any-return]


async def test_a_swap_served_by_one_worker_returns_at_the_delivery_to_another(
    emu: Emulator, redis_server: RedisServer
) -> None:
    hook_base: list[str] = []

    def make_a(base: str) -> FastAPI:
        hook_base.append(base)
        return worker_app(emu, redis_server.url, hook_base)

    async with (
        serve(make_a) as (app_a, _),
        serve(lambda _: worker_app(emu, redis_server.url, hook_base)) as (
            app_b,
            base_b,
        ),
    ):
        assert isinstance(app_a.state.qubico.coordination, RedisCoordination)
        async with aiohttp.ClientSession() as http:
            with anyio.fail_after(8):  # the fallback poll would come after 10 s
                async with http.post(base_b + "/swap", data=swap_form()) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
        assert body["status"] == "completed"
        assert emu.stats.gets == 0  # B learnt it from A's delivery through Redis, never polled
        assert app_a.state.qubico.webhooks.latest(body["task_id"]) is not None
        assert app_b.state.qubico.webhooks.latest(body["task_id"]) is not None


async def test_lifespan_without_redis_url_is_local(emu: Emulator) -> None:
    lifespan = qubico_lifespan(webhook_secret=SECRET, api_key=emu.api_key, base_url=emu.base_url)
    app = FastAPI(lifespan=lifespan)
    async with lifespan(app):
        assert isinstance(app.state.qubico.coordination, LocalCoordination)


def test_redis_url_and_coordination_are_exclusive() -> None:
    with pytest.raises(TypeError, match="redis_url"):
        qubico_lifespan(
            webhook_secret=SECRET,
            redis_url="redis://127.0.0.1:1/0",
            coordination=RedisCoordination("redis://127.0.0.1:1/0"),
            retry=RetryPolicy.instant(),
            poll=PollPolicy.instant(),
        )
