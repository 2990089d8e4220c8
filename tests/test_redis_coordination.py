"""`RedisCoordination` against a real redis-server process (tests/redis_server.py): several clients,
each with its own hub and its own `RedisCoordination` (as in several workers), share the webhook
results, the account limit, the 429 pause and the upload cache; Redis going away and coming back."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from qubico_async import FaceSwap, PollPolicy, QubicoClient, RetryPolicy, Task, TaskStatus, WebhookConfig
from qubico_async._redis_coordination import RedisCoordination, dump_task, load_task
from qubico_async.coordination import Coordination, LocalCoordination
from qubico_async.testing import Emulator, identity
from qubico_async.webhooks import WebhookHub
from tests.redis_server import RedisServer
from tests.test_integrations_aiohttp import SECRET, SLOW, png, wait_until

pytestmark = pytest.mark.anyio

HOOK = WebhookConfig("http://127.0.0.1:9/qubico/webhook", SECRET)  # never reached: deliveries are handed in


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def account() -> str:
    return "t-" + uuid.uuid4().hex[:12]  # each test its own keys in the shared server


def coordination(server: RedisServer, account: str, **kwargs: object) -> RedisCoordination:
    # op_timeout is a hang guard, not a test of timeouts: a loaded box stalls a command past 1 s, and
    # a timed-out command is an outage (local fallback), which the outage tests cause on purpose.
    options: dict[str, object] = {"lease_ttl": 1.0, "retry_interval": 0.05, "acquire_poll": 0.05, "op_timeout": 10.0}
    options.update(kwargs)
    return RedisCoordination(server.url, account=account, **options)  # type: ignore[arg-type]


def worker(emu: Emulator, coord: Coordination, hub: WebhookHub | None = None) -> QubicoClient:
    return QubicoClient(
        emu.api_key,
        base_url=emu.base_url,
        upload_url=emu.upload_url,
        retry=RetryPolicy.instant(),
        poll=PollPolicy.instant(timeout=10),
        webhooks=hub,
        coordination=coord,
    )


def delivery(task: Task, timestamp: int = 1) -> bytes:
    data: dict[str, object] = {"task_id": task.task_id, "model": "Qubico/image-toolkit", "status": task.status.value}
    if task.status is TaskStatus.COMPLETED:
        data["output"] = {"image_url": f"http://127.0.0.1:9/{task.task_id}.png"}
    return json.dumps({"timestamp": timestamp, "data": data}).encode()


@pytest.fixture
async def emu_slow() -> AsyncIterator[Emulator]:
    async with Emulator(api_key="emu-test-key", seed=1, processing_seconds=30, processor=identity) as server:
        yield server


async def test_task_round_trips_through_redis_without_inputs_or_secret() -> None:
    task = Task("t1", status=TaskStatus.COMPLETED, input={"target_image": "data:..."})
    task = Task(
        "t1",
        status=TaskStatus.COMPLETED,
        input={"target_image": "data:..."},
        config=task.config.__class__(webhook=HOOK),
    )
    back = load_task(dump_task(task))
    assert back.task_id == "t1" and back.status is TaskStatus.COMPLETED
    assert back.input == {} and back.config.webhook is not None and back.config.webhook.secret == ""
    assert SECRET not in dump_task(task)


async def test_a_delivery_to_one_worker_wakes_the_waiter_in_another(
    redis_server: RedisServer, account: str, emu_slow: Emulator
) -> None:
    hub_a, hub_b = WebhookHub(SECRET), WebhookHub(SECRET)
    async with (
        worker(emu_slow, coordination(redis_server, account), hub_a),
        worker(emu_slow, coordination(redis_server, account), hub_b) as b,
    ):
        created = await b.submit(FaceSwap(png(1), png(2)), webhook=HOOK)
        gets = emu_slow.stats.gets
        results: list[Task] = []
        with anyio.fail_after(5):  # the fallback poll (SLOW) would come after 30 s
            async with anyio.create_task_group() as tg:

                async def wait_in_b() -> None:
                    results.append(await b.wait(created, via="webhook", poll=SLOW))

                tg.start_soon(wait_in_b)
                await wait_until(lambda: hub_b.waiting == 1)
                done = Task(created.task_id, status=TaskStatus.COMPLETED)
                assert hub_a.handle({"x-webhook-secret": SECRET}, delivery(done)) is not None
        assert results[0].status is TaskStatus.COMPLETED
        assert emu_slow.stats.gets == gets  # no fallback poll: the delivery crossed workers
        assert hub_b.latest(created.task_id) is not None


async def test_a_waiter_arriving_after_the_delivery_gets_the_stored_state(
    redis_server: RedisServer, account: str, emu_slow: Emulator
) -> None:
    hub_a = WebhookHub(SECRET)
    async with worker(emu_slow, coordination(redis_server, account), hub_a) as a:
        created = await a.submit(FaceSwap(png(3), png(2)), webhook=HOOK)
        hub_a.handle({"x-webhook-secret": SECRET}, delivery(Task(created.task_id, status=TaskStatus.FAILED)))
        await wait_until(lambda: not a.coordination._background)  # type: ignore[attr-defined]
    hub_c = WebhookHub(SECRET)  # a worker started later: it never saw the pub/sub message
    async with worker(emu_slow, coordination(redis_server, account), hub_c) as c:
        gets = emu_slow.stats.gets
        with anyio.fail_after(5):
            done = await c.wait(created.task_id, via="webhook", poll=SLOW)
        assert done.status is TaskStatus.FAILED
        assert emu_slow.stats.gets == gets


async def test_duplicates_across_workers_are_shared_once_and_the_first_terminal_state_wins(
    redis_server: RedisServer, account: str
) -> None:
    coords = [coordination(redis_server, account) for _ in range(3)]
    hubs = [WebhookHub(SECRET) for _ in coords]
    for coord, hub in zip(coords, hubs, strict=True):
        hub.coordinate(coord)
        await coord.start()
    try:
        first = Task("dup-1", status=TaskStatus.COMPLETED)
        later = Task("dup-1", status=TaskStatus.FAILED)
        hubs[0].handle({"x-webhook-secret": SECRET}, delivery(first, 5))
        await wait_until(lambda: all(h.latest("dup-1") is not None for h in hubs))
        hubs[1].handle({"x-webhook-secret": SECRET}, delivery(first, 5))  # a retry reaching another worker
        hubs[2].handle({"x-webhook-secret": SECRET}, delivery(later, 6))  # a contradicting later delivery
        await wait_until(lambda: not any(c._background for c in coords))
        assert [c.stats["remote_terminals"] for c in coords] == [0, 1, 1]  # one message, every other worker
        assert all(h.latest("dup-1").status is TaskStatus.COMPLETED for h in hubs)  # type: ignore[union-attr]
        stored = await coords[2].latest("dup-1")
        assert stored is not None and stored.status is TaskStatus.COMPLETED
    finally:
        for coord in coords:
            await coord.aclose()


async def test_leases_are_account_wide(redis_server: RedisServer, account: str) -> None:
    coords = [coordination(redis_server, account, lease_ttl=5.0) for _ in range(4)]  # outlives a stalled loop
    for coord in coords:
        await coord.start()
    held = 0
    most = 0
    done = 0

    async def job(coord: RedisCoordination) -> None:
        nonlocal held, most, done
        lease = await coord.acquire(3)
        held += 1
        most = max(most, held)
        await anyio.sleep(0.01)
        held -= 1
        lease.release()
        done += 1

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(24):
                    tg.start_soon(job, coords[i % 4])
        assert done == 24
        assert sum(c.stats["fallback_leases"] for c in coords) == 0  # Redis answered throughout
        assert most == 3  # all four "workers" together, never more than the limit
        await wait_until(lambda: not any(c._background for c in coords))
        assert await coords[0].in_flight() == 0
        assert sum(c.stats["fallback_leases"] for c in coords) == 0
    finally:
        for coord in coords:
            await coord.aclose()


CRASHER = """
import asyncio, sys
from qubico_async._redis_coordination import RedisCoordination

async def main():
    coord = RedisCoordination(sys.argv[1], account=sys.argv[2], lease_ttl=float(sys.argv[3]))
    await coord.start()
    for _ in range(2):
        await coord.acquire(2)
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_killed_process_frees_its_slots_when_its_leases_expire(redis_server: RedisServer, account: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [sys.executable, "-c", CRASHER, redis_server.url, account, "0.4"], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == b"held"
        coord = coordination(redis_server, account)
        await coord.start()
        try:
            assert await coord.in_flight() == 2  # the other process holds the whole account
            proc.kill()  # kill -9: no release, no renewal
            proc.wait()
            with anyio.fail_after(10):
                leases = [await coord.acquire(2), await coord.acquire(2)]
            for lease in leases:
                lease.release()
        finally:
            await coord.aclose()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_held_leases_are_renewed_while_the_task_runs(redis_server: RedisServer, account: str) -> None:
    coord = coordination(redis_server, account, lease_ttl=0.3)
    await coord.start()
    try:
        lease = await coord.acquire(1)
        for _ in range(4):  # well past the TTL: the renewal keeps the slot
            await anyio.sleep(0.15)
            assert await coord.in_flight() == 1
        lease.release()
        with anyio.fail_after(5):
            while await coord.in_flight():
                await anyio.sleep(0.01)
    finally:
        await coord.aclose()


async def test_swap_many_in_two_workers_share_the_account_limit(redis_server: RedisServer, account: str) -> None:
    async with Emulator(api_key="emu-test-key", seed=1, processing_seconds=0.05, processor=identity) as emu:
        coords = [coordination(redis_server, account, limit=3) for _ in range(2)]
        async with worker(emu, coords[0]) as a, worker(emu, coords[1]) as b:
            peak = 0
            held = 0

            for coord in coords:  # count slots held across both workers
                acquire = coord.acquire

                async def counted(limit: int, acquire: object = acquire) -> object:
                    nonlocal held, peak
                    lease = await acquire(limit)  # type: ignore[operator]
                    held += 1
                    peak = max(peak, held)
                    return Counted(lease)

                coord.acquire = counted  # type: ignore[method-assign,assignment]

            class Counted:
                def __init__(self, lease: object) -> None:
                    self.lease = lease
                    self.done = False

                def release(self) -> None:
                    nonlocal held
                    if not self.done:
                        self.done = True
                        held -= 1
                        self.lease.release()  # type: ignore[attr-defined]

            async def run(client: QubicoClient, offset: int) -> list[str]:
                jobs = [FaceSwap(png(offset + i), png(-1)) for i in range(8)]
                async with client.swap_many(jobs, concurrency=8) as batch:
                    return [o.status async for o in batch]

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    results: list[list[str]] = []

                    async def go(client: QubicoClient, offset: int) -> None:
                        results.append(await run(client, offset))

                    tg.start_soon(go, a, 0)
                    tg.start_soon(go, b, 100)
            assert sorted(s for r in results for s in r) == ["succeeded"] * 16
            assert peak == 3  # each batch alone would run 8
            assert held == 0


async def test_one_workers_429_pauses_the_others(redis_server: RedisServer, account: str, emu: Emulator) -> None:
    async with (
        worker(emu, coordination(redis_server, account)) as a,
        worker(emu, coordination(redis_server, account)) as b,
    ):
        limiter_b = b._transport.limiter
        assert not limiter_b.limited
        a._transport.limiter.on_rate_limited(30.0)
        await wait_until(lambda: limiter_b.shared is not None and limiter_b.shared.shared_pause() > 0)
        with anyio.move_on_after(0.05) as scope:
            await limiter_b.acquire("create")
        assert scope.cancelled_caught  # b's creates wait for a's Retry-After


async def test_a_face_is_uploaded_once_per_account(redis_server: RedisServer, account: str, emu: Emulator) -> None:
    face = png(7, size=128)
    async with (
        worker(emu, coordination(redis_server, account)) as a,
        worker(emu, coordination(redis_server, account)) as b,
    ):
        url_a = await a.upload(face)
        url_b = await b.upload(face)
    assert url_a == url_b
    assert emu.stats.uploads == 1


async def test_concurrent_uploads_of_the_same_face_in_two_workers_send_one(
    redis_server: RedisServer, account: str, emu: Emulator
) -> None:
    face = png(8, size=128)
    urls: list[str] = []
    async with (
        worker(emu, coordination(redis_server, account)) as a,
        worker(emu, coordination(redis_server, account)) as b,
    ):
        async with anyio.create_task_group() as tg:
            for client in (a, b, a, b):

                async def up(client: QubicoClient = client) -> None:
                    urls.append(await client.upload(face))

                tg.start_soon(up)
    assert len(set(urls)) == 1
    assert emu.stats.uploads == 1


async def test_redis_going_away_falls_back_and_coming_back_is_picked_up(
    emu_slow: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer()
    server.start()
    try:
        coord = RedisCoordination(server.url, account="outage", lease_ttl=1.0, retry_interval=0.05, op_timeout=0.5)
        hub = WebhookHub(SECRET)
        caplog.set_level(logging.WARNING, logger="qubico_async")
        async with worker(emu_slow, coord, hub) as client:
            first = await client.submit(FaceSwap(png(1), png(2)), webhook=HOOK)
            assert coord.available and coord.stats["fallback_leases"] == 0
            server.stop()
            with anyio.fail_after(10):  # nothing hangs: creates go on under the local limit
                second = await client.submit(FaceSwap(png(2), png(2)), webhook=HOOK)
                third = await client.submit(FaceSwap(png(3), png(2)), webhook=HOOK)
            assert not coord.available
            assert coord.stats["fallback_leases"] >= 1
            assert emu_slow.stats.creates == 3  # each paid once
            emu_slow.advance(60)  # all finish; no delivery: the wait falls back to polling
            with anyio.fail_after(10):
                done = await client.wait(second, via="webhook", poll=PollPolicy.instant(timeout=10))
            assert done.status is TaskStatus.COMPLETED
            warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(warnings) == 1  # once per outage, however many calls failed
            assert server.url.split("@")[-1] in warnings[0].getMessage()
            server.start()
            await wait_until(lambda: coord.available, timeout=10)
            assert any("is back" in r.getMessage() for r in caplog.records)
            fallbacks = coord.stats["fallback_leases"]
            fourth = await client.submit(FaceSwap(png(4), png(2)), webhook=HOOK)
            assert coord.stats["fallback_leases"] == fallbacks  # shared again
            assert await coord.in_flight() == 1
            emu_slow.advance(60)
            for task in (first, third, fourth):
                await client.wait(task, poll=PollPolicy.instant(timeout=10))
            await wait_until(lambda: not coord._background)
            assert await coord.in_flight() == 0
    finally:
        server.close()


async def test_without_coordination_the_client_is_local(emu: Emulator) -> None:
    async with QubicoClient(emu.api_key, base_url=emu.base_url) as client:
        assert isinstance(client.coordination, LocalCoordination)
        assert client._transport.limiter.shared is client.coordination
        assert client._media._cache.shared is None


async def test_the_redis_password_never_reaches_repr_or_logs() -> None:
    coord = RedisCoordination("redis://user:hunter2-secret@127.0.0.1:1/0")
    assert "hunter2" not in repr(coord)
    assert isinstance(coord, Coordination)


async def test_a_delivery_during_an_outage_reaches_the_other_worker_when_redis_is_back(
    emu_slow: Emulator,
) -> None:
    server = RedisServer()
    server.start()
    try:
        coords = [
            RedisCoordination(server.url, account="catch-up", retry_interval=0.05, op_timeout=0.5) for _ in range(2)
        ]
        hub_a, hub_b = WebhookHub(SECRET), WebhookHub(SECRET)
        async with worker(emu_slow, coords[0], hub_a), worker(emu_slow, coords[1], hub_b) as b:
            created = await b.submit(FaceSwap(png(5), png(2)), webhook=HOOK)
            gets = emu_slow.stats.gets
            results: list[Task] = []
            async with anyio.create_task_group() as tg:

                async def wait_in_b() -> None:
                    results.append(await b.wait(created, via="webhook", poll=SLOW))

                tg.start_soon(wait_in_b)
                await wait_until(lambda: hub_b.waiting == 1)
                server.stop()
                await wait_until(lambda: not any(c.available for c in coords), timeout=10)
                done = Task(created.task_id, status=TaskStatus.COMPLETED)
                hub_a.handle({"x-webhook-secret": SECRET}, delivery(done))  # Redis is away: kept for later
                await anyio.sleep(0.1)
                assert not results
                server.start()
                with anyio.fail_after(10):  # well before B's 30 s fallback poll
                    while not results:
                        await anyio.sleep(0.01)
            assert results[0].status is TaskStatus.COMPLETED
            assert emu_slow.stats.gets == gets
    finally:
        server.close()
