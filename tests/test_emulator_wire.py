"""The realistic wire (the default): per-task shapes from piapi-api.md §18, seeded; the plain switch;
usage in points; the credit refusal; account info fields."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qubico_async.testing import POINTS_PER_USD, ZERO_TIME, Emulator, identity

pytestmark = pytest.mark.anyio

KEY = "wire-key"
FIXTURES = Path(__file__).parent / "fixtures"
HOPPER = (FIXTURES / "grace_hopper.jpg").read_bytes()
IMAGE_BODY = {
    "model": "Qubico/image-toolkit",
    "task_type": "face-swap",
    "input": {
        "target_image": "data:image/jpeg;base64," + base64.b64encode(HOPPER).decode(),
        "swap_image": base64.b64encode(HOPPER).decode(),
    },
}
TERMINAL = ("completed", "failed")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}) as session:
        yield session


async def create(http: aiohttp.ClientSession, emu: Emulator) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{emu.base_url}/api/v1/task", json=IMAGE_BODY) as resp:
        return resp.status, await resp.json()


async def get(http: aiohttp.ClientSession, emu: Emulator, task_id: str) -> dict[str, Any]:
    async with http.get(f"{emu.base_url}/api/v1/task/{task_id}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def run(http: aiohttp.ClientSession, emu: Emulator, n: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(create envelope, final GET envelope) of `n` tasks that end on their first GET."""
    out = []
    for _ in range(n):
        status, created = await create(http, emu)
        assert status == 200, created
        out.append((created, await get(http, emu, created["data"]["task_id"])))
    return out


def shape_of(created: dict[str, Any], done: dict[str, Any]) -> tuple[Any, ...]:
    task = done["data"]
    return (
        task["status"],
        done["code"],
        task["logs"] is None,
        task["input"] is None,
        "image_base64" in (task["output"] or {}),
        "failover_triggered" in task["meta"],
        created["data"]["meta"]["started_at"],
    )


async def test_realistic_is_the_default_and_shows_every_variant(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, processor=identity, seed=5) as emu:
        assert emu.wire == "realistic"
        results = await run(http, emu, 40)
        base_url = emu.base_url
    statuses = {done["data"]["status"] for _, done in results}
    assert statuses == {"completed", "Completed"}
    assert {done["code"] for _, done in results} == {200, 0}
    assert {created["code"] for created, _ in results} == {200, 0}
    assert {repr(done["data"]["logs"]) for _, done in results} == {"[]", "None"}
    assert {repr(done["data"]["input"]) for _, done in results} == {"{}", "None"}
    outputs = [done["data"]["output"] for _, done in results]
    assert any(o.get("image_base64") == "" for o in outputs) and any("image_base64" not in o for o in outputs)
    assert all(o["image_url"].startswith(base_url) for o in outputs)
    stamps = {done["data"]["meta"]["ended_at"][-6:] for _, done in results}
    assert "+08:00" in stamps and any(s.endswith("Z") for s in stamps)
    assert any(len(done["data"]["meta"]["created_at"]) == len("2026-01-01T00:00:00.123456789Z") for _, done in results)
    for created, done in results:
        task = done["data"]
        assert created["message"] == done["message"] == "success"
        assert task["error"] == {"code": 0, "raw_message": "", "message": "", "detail": None}  # all empty on success
        # as created (pending): not started, Go's zero time; usage frozen, in points
        meta = created["data"]["meta"]
        assert (meta["started_at"], meta["ended_at"]) == (ZERO_TIME, ZERO_TIME)
        assert meta["usage"] == {"type": "point", "frozen": 1_000_000, "consume": 0}
        assert created["data"]["status"].lower() == "pending"
        assert task["meta"]["usage"] == {"type": "point", "frozen": 1_000_000, "consume": 1_000_000}
        assert task["meta"]["started_at"] != ZERO_TIME and task["meta"]["ended_at"] != ZERO_TIME
        assert isinstance(task["meta"]["usage"]["consume"], int)


async def test_each_task_keeps_its_shape_and_the_seed_fixes_it(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, processor=identity, seed=9, pending_seconds=1) as emu:
        _, created = await create(http, emu)
        task_id = created["data"]["task_id"]
        first = await get(http, emu, task_id)
        again = await get(http, emu, task_id)
        assert (first["code"], first["data"]["status"], first["data"]["logs"]) == (
            again["code"],
            again["data"]["status"],
            again["data"]["logs"],
        )
        assert first["code"] == created["code"]  # the same envelope code for every answer about it
        shape = emu.tasks[task_id].shape
    # the shape is a function of (seed, task_id) only
    from qubico_async.testing._wireshape import shape_for

    assert shape_for(9, task_id, "realistic") == shape
    shapes = {shape_for(9, f"id-{i}", "realistic") for i in range(50)}
    assert len(shapes) > 10
    assert {shape_for(10, f"id-{i}", "realistic") for i in range(50)} != shapes


async def test_plain_wire_is_one_clean_shape(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, processor=identity, wire="plain") as emu:
        results = await run(http, emu, 12)
        async with http.get(f"{emu.base_url}/account/info") as resp:
            info = (await resp.json())["data"]
    for created, done in results:
        assert created["code"] == done["code"] == 200
        assert created["data"]["meta"] == {}  # as in the docs' create example
        task = done["data"]
        assert (task["status"], task["logs"], task["input"]) == ("completed", [], {})
        assert set(task["output"]) == {"image_url"}
        assert task["meta"]["ended_at"].endswith("Z") and "failover_triggered" not in task["meta"]
    assert "max_image_toolkit_concurrency" not in info


async def test_account_info_carries_points_and_toolkit_concurrency(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, processor=identity, balance_usd=1.0, max_concurrent_task_count=4) as emu:
        await run(http, emu, 3)
        async with http.get(f"{emu.base_url}/account/info") as resp:
            body = await resp.json()
    info = body["data"]
    assert info["max_concurrent_task_count"] == 4
    assert info["max_image_toolkit_concurrency"] == 4
    assert info["wallet"]["point_remain"] == POINTS_PER_USD - 3 * 1_000_000
    assert info["equivalent_in_usd"] == pytest.approx(0.97)
    async with Emulator(api_key=KEY, max_image_toolkit_concurrency=2, wire="plain") as emu:
        async with http.get(f"{emu.base_url}/account/info") as resp:
            assert (await resp.json())["data"]["max_image_toolkit_concurrency"] == 2


@pytest.mark.parametrize("wire", ["realistic", "plain"])
async def test_credit_refusal_when_the_balance_runs_out(http: aiohttp.ClientSession, wire: str) -> None:
    # $0.025 covers two $0.01 face swaps (1,000,000 points each) but not a third
    async with Emulator(api_key=KEY, processor=identity, balance_usd=0.025, pending_seconds=5, wire=wire) as emu:  # type: ignore[arg-type]
        for _ in range(2):
            status, created = await create(http, emu)
            assert status == 200 and created["code"] in (200, 0) and created["data"]["status"].lower() == "pending"
        # both still pending: their points are frozen, so a third cannot be frozen
        status, refused = await create(http, emu)
        assert status == 200
        assert (refused["code"], refused["message"]) == (500, "failed to pre-process task runtime")
        task = refused["data"]
        assert task["status"].lower() == "failed"
        assert task["error"] == {
            "code": 10000,
            "message": "failed to pre-process task runtime",
            "raw_message": "failed to freeze account point quota: account point quota not enough; "
            "account credit not enough",
            "detail": None,
        }
        assert task["meta"]["usage"] == {"type": "point", "frozen": 500000, "consume": 0}
        assert task["output"] is None
        # the task exists: GET answers it (an ordinary envelope), still failed; it never starts
        got = await get(http, emu, task["task_id"])
        assert got["code"] in (200, 0) and got["data"]["status"].lower() == "failed"
        assert got["data"]["error"]["code"] == 10000
        emu.advance(5)
        assert emu.stats.tasks_by_status == {"completed": 2, "failed": 1} or [t.status for t in emu.tasks.values()] == [
            "completed",
            "completed",
            "failed",
        ]
        # adding credit makes creates work again
        emu.balance_usd = 1.0
        status, created = await create(http, emu)
        assert created["code"] in (200, 0) and created["data"]["status"].lower() == "pending"


async def test_a_failed_task_frees_its_frozen_points(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, processor=identity, balance_usd=0.01) as emu:
        emu.fail_next()
        ((_, done),) = await run(http, emu, 1)
        assert done["data"]["status"].lower() == "failed"
        assert done["data"]["meta"]["usage"]["consume"] == 0
        ((_, done),) = await run(http, emu, 1)  # the failed one consumed nothing: still $0.01 left
        assert done["data"]["status"].lower() == "completed"
        _, refused = await create(http, emu)  # now it is spent
        assert refused["code"] == 500


def test_wire_switch_on_the_constructor_and_the_command_line() -> None:
    from qubico_async.testing._cli import build_parser

    with pytest.raises(ValueError, match="wire"):
        Emulator(wire="fancy")  # type: ignore[arg-type]
    args = build_parser().parse_args(["--wire", "plain", "--balance-usd", "0.05"])
    assert (args.wire, args.balance_usd) == ("plain", 0.05)
    assert build_parser().parse_args([]).wire == "realistic"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--wire", "fancy"])


async def test_an_instant_task_ended_when_it_was_due_not_when_it_was_polled(http: aiohttp.ClientSession) -> None:
    """`ended_at` is the task's own end (what a client learns durations from), not the GET's time."""
    async with Emulator(api_key=KEY, processor=identity, processing_seconds=5, wire="plain") as emu:
        status, created = await create(http, emu)
        assert status == 200
        emu.advance(60)  # polled long after it was done
        meta = (await get(http, emu, created["data"]["task_id"]))["data"]["meta"]
    created_at = dt.datetime.fromisoformat(meta["created_at"].replace("Z", "+00:00"))
    ended_at = dt.datetime.fromisoformat(meta["ended_at"].replace("Z", "+00:00"))
    assert 4 <= (ended_at - created_at).total_seconds() <= 6
