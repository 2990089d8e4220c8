"""The bundled emulator, exercised with a raw aiohttp client against its real loopback server."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio
import pytest

from qubico_async.testing import DEFAULT_FAILURE_MESSAGE, Emulator, Faults, SwapJob, _faceswap, identity
from qubico_async.testing._cli import _announce, build_parser, main, serve_forever
from qubico_async.testing._faults import TokenBucket, retry_after_header
from tests._helpers import ASTRONAUT, FIXTURES, GROUP, HANG_GUARD, HOPPER, b64, header_only_mp4, wait_until

TOO_WIDE = (FIXTURES / "too-wide-2049.png").read_bytes()
IMAGE = "Qubico/image-toolkit"
VIDEO = "Qubico/video-toolkit"
KEY = "emu-key"

pytestmark = pytest.mark.anyio


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{b64(data)}"


def face_swap_body(target: str | None = None, swap: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "model": IMAGE,
        "task_type": "face-swap",
        "input": {"target_image": target or data_uri(ASTRONAUT), "swap_image": swap or b64(HOPPER)},
        **extra,
    }


class Api:
    """Tiny raw client: returns (status, parsed JSON or None, headers)."""

    def __init__(self, http: aiohttp.ClientSession, emu: Emulator, key: str | None = KEY) -> None:
        self.http, self.emu, self.key = http, emu, key

    def _headers(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"x-api-key": key}

    async def _read(self, resp: aiohttp.ClientResponse) -> tuple[int, Any, Any]:
        text = await resp.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        return resp.status, body, resp.headers

    async def create(self, body: Any, *, raw: bytes | None = None, **kw: Any) -> tuple[int, Any, Any]:
        data = io.BytesIO(raw if raw is not None else json.dumps(body).encode())
        headers = {**self._headers(self.key), "Content-Type": "application/json"}
        async with self.http.post(f"{self.emu.base_url}/api/v1/task", data=data, headers=headers, **kw) as r:
            return await self._read(r)

    async def get(self, task_id: str, **kw: Any) -> tuple[int, Any, Any]:
        url = f"{self.emu.base_url}/api/v1/task/{task_id}"
        async with self.http.get(url, headers=self._headers(self.key), **kw) as r:
            return await self._read(r)

    async def account(self) -> tuple[int, Any, Any]:
        async with self.http.get(f"{self.emu.base_url}/account/info", headers=self._headers(self.key)) as r:
            return await self._read(r)

    async def task(self, task_id: str) -> dict[str, Any]:
        status, body, _ = await self.get(task_id)
        assert status == 200, body
        data: dict[str, Any] = body["data"]
        return data

    async def new_task(self, body: Any = None) -> str:
        status, payload, _ = await self.create(body if body is not None else face_swap_body())
        assert status == 200, payload
        task_id: str = payload["data"]["task_id"]
        return task_id

    async def fetch(self, url: str) -> tuple[int, bytes, str]:
        async with self.http.get(url) as r:
            return r.status, await r.read(), r.headers.get("Content-Type", "")


# -- happy path and status progression ---------------------------------------------------------------


async def test_create_then_statuses_follow_the_clock(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity, pending_seconds=5, processing_seconds=10) as emu:
        api = Api(http, emu)
        hook = {"endpoint": "https://example.com/hook", "secret": "s3cr3t"}
        status, body, headers = await api.create(
            face_swap_body(config={"webhook_config": hook, "service_mode": "public"})
        )
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert body["code"] == 200 and body["message"] == "success"
        data = body["data"]
        assert set(data) == {
            "task_id", "model", "task_type", "status", "config", "input",
            "output", "meta", "detail", "logs", "error",
        }  # fmt: skip
        assert data["model"] == IMAGE and data["task_type"] == "face-swap"
        assert data["status"] == "pending"
        assert data["config"] == {"service_mode": "public", "webhook_config": hook}
        assert data["input"] == {} and data["output"] is None and data["meta"] == {}
        assert data["detail"] is None and data["logs"] == []
        assert data["error"] == {"code": 0, "raw_message": "", "message": "", "detail": None}
        task_id = data["task_id"]

        assert (await api.task(task_id))["status"] == "pending"
        emu.advance(5)
        processing = await api.task(task_id)
        assert processing["status"] == "processing"
        assert processing["output"] is None
        meta = processing["meta"]
        assert meta["created_at"].endswith("Z") and meta["started_at"].endswith("Z")
        assert "ended_at" not in meta
        assert meta["usage"] == {"type": "point", "frozen": 1_000_000, "consume": 0}  # points, not USD
        assert meta["is_using_private_pool"] is False
        assert emu.stats.tasks_by_status == {"processing": 1}

        emu.advance(10)
        done = await api.task(task_id)
        assert done["status"] == "completed"
        assert done["meta"]["usage"] == {"type": "point", "frozen": 1_000_000, "consume": 1_000_000}
        assert done["meta"]["ended_at"].endswith("Z")
        assert done["config"]["webhook_config"] == hook
        url = done["output"]["image_url"]
        assert url == f"{emu.base_url}/results/{task_id}.jpg"
        assert emu.stats.tasks_by_status == {"completed": 1}

        status, content, content_type = await api.fetch(url)  # no key needed
        assert status == 200 and content == ASTRONAUT and content_type == "image/jpeg"
        assert emu.stats.downloads == 1
        stored = emu.tasks[task_id]
        assert stored.input["target_image"] == data_uri(ASTRONAUT)
        assert stored.result == ASTRONAUT


async def test_zero_durations_complete_on_first_get(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        _, body, _ = await api.create(face_swap_body())
        assert body["data"]["status"] == "pending"  # the create answer is always the task as created
        done = await api.task(body["data"]["task_id"])
        assert done["status"] == "completed"
        assert done["meta"]["created_at"] <= done["meta"]["started_at"] <= done["meta"]["ended_at"]


async def test_multi_face_swap_price_and_indices(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        body = {
            "model": IMAGE,
            "task_type": "multi-face-swap",
            "input": {
                "target_image": b64(GROUP),
                "swap_image": data_uri(GROUP),
                "swap_faces_index": "0,1",
                "target_faces_index": "1, 0",
            },
        }
        task_id = await api.new_task(body)
        done = await api.task(task_id)
        assert done["task_type"] == "multi-face-swap"
        assert done["meta"]["usage"]["consume"] == 1_500_000
        stored = emu.tasks[task_id]
        assert stored.swap_faces_index == (0, 1) and stored.target_faces_index == (1, 0)
        assert done["config"] == {"webhook_config": {"endpoint": "", "secret": ""}}


async def test_video_face_swap(http: aiohttp.ClientSession) -> None:
    video = header_only_mp4(frames=10)
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        body = {
            "model": VIDEO,
            "task_type": "face-swap",
            "input": {"target_video": data_uri(video, "video/mp4"), "swap_image": b64(HOPPER)},
        }
        task_id = await api.new_task(body)
        done = await api.task(task_id)
        assert done["status"] == "completed"
        assert done["meta"]["usage"]["consume"] == 10 * 50_000  # points per frame
        url = done["output"]["video_url"]
        assert url.endswith(f"/results/{task_id}.mp4")
        status, content, content_type = await api.fetch(url)
        assert (status, content, content_type) == (200, video, "video/mp4")


async def test_url_inputs_resolve_only_on_this_emulator(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        hosted = emu.host_file(HOPPER)
        assert hosted.startswith(f"{emu.base_url}/files/") and hosted.endswith(".jpg")
        status, content, _ = await api.fetch(hosted)
        assert (status, content) == (200, HOPPER)

        ok = await api.task(await api.new_task(face_swap_body(target=hosted, swap=hosted)))
        assert ok["status"] == "completed"
        # a result URL of this emulator is a valid input too
        chained = await api.task(await api.new_task(face_swap_body(target=ok["output"]["image_url"])))
        assert chained["status"] == "completed"
        assert emu.tasks[chained["task_id"]].result == HOPPER

        missing = f"{emu.base_url}/files/missing.jpg"
        failed = await api.task(await api.new_task(face_swap_body(target=missing)))
        assert (failed["status"], failed["error"]["message"]) == ("failed", "failed to get valid image")
        assert failed["error"]["raw_message"] == f"GET {missing}: 404 Not Found"
        assert failed["output"] is None
        far = await api.task(await api.new_task(face_swap_body(target="https://example.com/face.jpg")))
        only = "the emulator only fetches loopback URLs (got host example.com)"
        assert far["status"] == "failed" and far["error"]["raw_message"] == only
        assert far["error"]["message"] == f"failed to get valid image: {only}"

        not_an_image = emu.host_file(b"plain text", name="notes.txt")
        failed = await api.task(await api.new_task(face_swap_body(swap=not_an_image)))
        assert failed["error"]["message"] == "failed to get valid image"


# -- auth and routing -------------------------------------------------------------------------------


async def test_auth(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        for key in (None, "wrong", ""):
            api = Api(http, emu, key=key)
            for status, body, _ in (
                await api.create(face_swap_body()),
                await api.get("x"),
                await api.account(),
            ):
                assert status == 401
                assert body == {"code": 401, "data": None, "message": "Invalid API key"}
        assert emu.stats.creates == 0
        headers = {"X-API-KEY": KEY}
        async with http.get(f"{emu.base_url}/account/info", headers=headers) as resp:
            assert resp.status == 200


async def test_unknown_task_route_and_method(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        status, body, _ = await api.get("90efd2db-bcfc-413f-a0be-c893850c9d68")
        assert status == 404
        assert body == {"code": 404, "data": None, "message": "task not found"}
        async with http.get(f"{emu.base_url}/api/v2/nothing") as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == 404
        async with http.delete(f"{emu.base_url}/api/v1/task") as resp:
            assert resp.status == 405
        status, _, _ = await api.fetch(f"{emu.base_url}/results/nope.png")
        assert status == 404


# -- create validation ------------------------------------------------------------------------------


def _without(field: str) -> dict[str, Any]:
    body = face_swap_body()
    del body["input"][field]
    return body


def _with_input(**values: Any) -> dict[str, Any]:
    body = face_swap_body()
    body["input"].update(values)
    return body


INVALID: list[tuple[str, Any, str]] = [
    ("not json", b"{nope", "not valid JSON"),
    ("json array", [], "must be a JSON object"),
    ("no model", {"task_type": "face-swap", "input": {}}, "model is required"),
    ("unknown model", {**face_swap_body(), "model": "Qubico/other"}, "unsupported model/task_type"),
    ("unknown task type", {**face_swap_body(), "task_type": "swap"}, "unsupported model/task_type"),
    ("video multi", {**face_swap_body(), "model": VIDEO, "task_type": "multi-face-swap"}, "unsupported"),
    ("no input", {"model": IMAGE, "task_type": "face-swap"}, "input is required"),
    ("input not object", {**face_swap_body(), "input": "x"}, "input is required and must be an object"),
    ("no target", _without("target_image"), "input.target_image is required"),
    ("no swap", _without("swap_image"), "input.swap_image is required"),
    ("target not str", _with_input(target_image=123), "input.target_image must be a string"),
    ("bad base64", _with_input(target_image="not*base64!"), "invalid base64 in target_image"),
    (
        "bad base64 data uri",
        _with_input(swap_image="data:image/png;base64,@@@@"),
        "invalid base64 in swap_image",
    ),
    (
        "data uri not base64",
        _with_input(target_image="data:image/png,abc"),
        "invalid data URI in target_image",
    ),
    ("not an image", _with_input(target_image=b64(b"hello, world")), "target_image is not a supported image"),
    ("too wide", _with_input(target_image=b64(TOO_WIDE)), "target_image is 2049x1000; max 2048x2048"),
    ("bad url", _with_input(swap_image="https://"), "swap_image is not a valid URL"),
    ("indices not ints", _with_input(swap_faces_index="a,b"), "swap_faces_index must be a string"),
    ("negative index", _with_input(target_faces_index="0,-1"), "target_faces_index must be a string"),
    ("indices list", _with_input(swap_faces_index=[0, 1]), "swap_faces_index must be a string"),
    ("unequal indices", _with_input(swap_faces_index="0,1", target_faces_index="0"), "same number of faces"),
    ("config not object", {**face_swap_body(), "config": []}, "config must be an object"),
    (
        "webhook not object",
        {**face_swap_body(), "config": {"webhook_config": "x"}},
        "config.webhook_config must be an object",
    ),
    (
        "video missing target",
        {"model": VIDEO, "task_type": "face-swap", "input": {"swap_image": b64(HOPPER)}},
        "input.target_video is required",
    ),
    (
        "video too long",
        {
            "model": VIDEO,
            "task_type": "face-swap",
            "input": {"target_video": b64(header_only_mp4(601)), "swap_image": b64(HOPPER)},
        },
        "target_video has 601 frames; max 600",
    ),
    (
        "video not mp4",
        {
            "model": VIDEO,
            "task_type": "face-swap",
            "input": {"target_video": b64(HOPPER), "swap_image": b64(HOPPER)},
        },
        "target_video is not a supported video",
    ),
]


@pytest.mark.parametrize(("body", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
async def test_create_validation(http: aiohttp.ClientSession, body: Any, message: str) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        raw = body if isinstance(body, bytes) else None
        status, payload, _ = await api.create(body, raw=raw)
        assert status == 400, payload
        assert payload["code"] == 400 and payload["data"] is None
        assert message in payload["message"]
        assert emu.stats.creates == 0 and len(emu.tasks) == 0
        assert emu.stats.create_requests == 1
        assert emu.stats.requests_by_status == {400: 1}


async def test_create_rejects_media_over_10_mib(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        big = ASTRONAUT + b"\0" * (10 * 1024 * 1024)  # a valid JPEG header, but too many bytes
        status, payload, _ = await api.create(face_swap_body(target=b64(big)))
        assert status == 400
        assert "target_image is larger than 10485760 bytes" in payload["message"]
        assert emu.stats.creates == 0


# -- outcomes ---------------------------------------------------------------------------------------


async def test_failure_rate_one_fails_every_task(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity, failure_rate=1.0, processing_seconds=3) as emu:
        api = Api(http, emu)
        task_id = await api.new_task()
        assert (await api.task(task_id))["status"] == "processing"
        emu.advance(3)
        failed = await api.task(task_id)
        assert failed["status"] == "failed"
        assert failed["output"] is None
        assert failed["error"] == {
            "code": 10000,
            "raw_message": DEFAULT_FAILURE_MESSAGE,
            "message": DEFAULT_FAILURE_MESSAGE,
            "detail": None,
        }
        assert failed["meta"]["usage"]["consume"] == 0
        assert emu.stats.tasks_by_status == {"failed": 1}


async def test_failure_rate_is_seeded(http: aiohttp.ClientSession) -> None:
    outcomes = []
    for _ in range(2):
        async with Emulator(api_key=KEY, wire="plain", processor=identity, failure_rate=0.5, seed=7) as emu:
            api = Api(http, emu)
            ids = [await api.new_task() for _ in range(12)]
            outcomes.append([(await api.task(i))["status"] for i in ids])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {"completed", "failed"}


async def test_fail_next(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        emu.fail_next(2, message="face swap failed: boom")
        results = [await api.task(await api.new_task()) for _ in range(3)]
        assert [r["status"] for r in results] == ["failed", "failed", "completed"]
        assert results[0]["error"]["message"] == "face swap failed: boom"


async def test_task_transform_and_envelope_code(http: aiohttp.ClientSession) -> None:
    def shout(task: dict[str, Any]) -> dict[str, Any]:
        return {**task, "status": task["status"].upper(), "logs": None}

    async with Emulator(api_key=KEY, wire="plain", processor=identity, task_transform=shout) as emu:
        api = Api(http, emu)
        _, created, _ = await api.create(face_swap_body())
        assert created["data"]["status"] == "PENDING" and created["data"]["logs"] is None
        done = await api.task(created["data"]["task_id"])
        assert done["status"] == "COMPLETED"
        assert emu.tasks[done["task_id"]].status == "completed"

        emu.faults.envelope_code = 0
        status, body, _ = await api.get(done["task_id"])
        assert status == 200 and body["code"] == 0 and body["message"] == "success"
        status, body, _ = await api.get("missing")
        assert status == 404 and body["code"] == 404  # errors keep mirroring the HTTP status


async def test_account_info(http: aiohttp.ClientSession) -> None:
    async with Emulator(
        api_key=KEY, wire="plain", processor=identity, max_concurrent_task_count=3, balance_usd=1.0
    ) as emu:
        api = Api(http, emu)
        status, body, _ = await api.account()
        assert status == 200 and body["code"] == 200 and body["message"] == "success"
        data = body["data"]
        assert data["equivalent_in_usd"] == 1.0
        assert data["max_concurrent_task_count"] == 3
        assert data["is_enable"] is True
        assert {"id", "name", "plan", "credit_pack_info"} <= set(data)
        await api.task(await api.new_task())
        _, body, _ = await api.account()
        assert body["data"]["equivalent_in_usd"] == pytest.approx(0.99)
        assert body["data"]["credit_pack_info"]["used_credits"] == pytest.approx(0.01)
        assert emu.stats.account_requests == 2


async def test_stats_counters(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity, pending_seconds=1) as emu:
        api = Api(http, emu)
        task_id = await api.new_task()
        await api.create({"model": "nope"})
        await api.get(task_id)
        await api.get("missing")
        await api.account()
        stats = emu.stats
        assert (stats.creates, stats.create_requests, stats.gets, stats.uploads) == (1, 2, 2, 0)
        assert stats.requests_by_status == {200: 3, 400: 1, 404: 1}
        assert stats.tasks_by_status == {"pending": 1}
        emu.advance(1)
        assert emu.stats.tasks_by_status == {"completed": 1}


# -- faults -----------------------------------------------------------------------------------------


async def test_latency(http: aiohttp.ClientSession) -> None:
    """Latency holds every API response; set back to 0, later requests are answered at once.

    Proved by order, not by a clock: with an hour of latency, a request sent later without it is
    answered while the first one is still held (until closing drops it).
    """
    async with Emulator(api_key=KEY, wire="plain", processor=identity, faults=Faults(latency=3600)) as emu:
        api = Api(http, emu)
        with pytest.raises(TimeoutError):
            await api.create(face_swap_body(), timeout=aiohttp.ClientTimeout(total=0.05))
        assert emu.stats.creates == 0  # held before the handler: nothing stored
        held: list[str] = []

        async def first() -> None:
            try:
                await api.account()
                held.append("answered")
            except aiohttp.ClientError:
                held.append("dropped")

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await wait_until(lambda: emu.stats.account_requests == 1)  # received, now in its latency
            emu.faults.latency = 0
            status, _, _ = await api.account()
            assert status == 200 and held == []  # the later request overtook the held one
            await emu.aclose()  # closing wakes the held request: dropped, not answered
        assert held == ["dropped"]
        assert emu.stats.account_requests == 2 and emu.stats.requests_by_status == {200: 1}


async def test_error_rate_answers_5xx_and_stores_nothing(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity, faults=Faults(error_rate=1.0)) as emu:
        api = Api(http, emu)
        seen = set()
        for _ in range(10):
            status, body, _ = await api.create(face_swap_body())
            assert status in (500, 502, 503)
            assert body["code"] == status and body["data"] is None and body["message"]
            seen.add(status)
        assert len(seen) > 1
        assert (await api.get("x"))[0] >= 500 and (await api.account())[0] >= 500
        assert emu.stats.creates == 0 and emu.stats.create_requests == 10
        emu.faults.error_rate = 0.0
        assert (await api.create(face_swap_body()))[0] == 200


async def test_rate_limit(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity, faults=Faults(rate_limit=2)) as emu:
        api = Api(http, emu)
        assert [(await api.account())[0] for _ in range(2)] == [200, 200]
        status, body, headers = await api.create(face_swap_body())
        assert status == 429
        assert body == {"code": 429, "data": None, "message": "Too many requests: rate limit exceeded"}
        assert headers["Retry-After"] == "1"
        assert emu.stats.creates == 0
        emu.advance(1)  # refills two tokens
        assert (await api.create(face_swap_body()))[0] == 200
        assert (await api.account())[0] == 200
        emu.faults.retry_after = 0
        status, _, headers = await api.account()
        assert (status, headers["Retry-After"]) == (429, "0")
        emu.faults.rate_limit = None
        assert (await api.account())[0] == 200
        assert emu.stats.requests_by_status == {200: 5, 429: 2}


def test_token_bucket_and_retry_after() -> None:
    bucket = TokenBucket()
    assert bucket.take(0.5, 0.0) is None  # capacity is at least one request
    assert bucket.take(0.5, 0.0) == pytest.approx(2.0)
    assert bucket.take(0.5, 2.0) is None
    assert retry_after_header(0.2, None) == "1"
    assert retry_after_header(2.5, None) == "3"
    assert retry_after_header(9, 0.5) == "0.5"


async def test_create_then_stall(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity, faults=Faults(create_then_stall=1)) as emu:
        api = Api(http, emu)
        with pytest.raises(TimeoutError):
            await api.create(face_swap_body(), timeout=aiohttp.ClientTimeout(total=0.2))
        assert emu.stats.creates == 1 and emu.faults.create_then_stall == 0
        (task_id,) = emu.tasks
        assert (await api.task(task_id))["status"] == "completed"
        assert (await api.create(face_swap_body()))[0] == 200
        assert emu.stats.creates == 2


async def test_create_then_stall_short_stall_then_answers(http: aiohttp.ClientSession) -> None:
    async with Emulator(
        api_key=KEY, wire="plain", processor=identity, faults=Faults(create_then_stall=1, stall_seconds=0.05)
    ) as emu:
        status, body, _ = await Api(http, emu).create(face_swap_body())
        assert status == 200 and body["data"]["status"] == "pending"


async def test_aclose_drops_stalled_requests_promptly(http: aiohttp.ClientSession) -> None:
    emu = Emulator(api_key=KEY, wire="plain", processor=identity, faults=Faults(create_then_stall=1))
    await emu.start()
    api = Api(http, emu)
    errors: list[BaseException] = []

    async def stalled() -> None:
        try:
            await api.create(face_swap_body(), timeout=aiohttp.ClientTimeout(total=HANG_GUARD))
        except aiohttp.ClientError as exc:
            errors.append(exc)

    # The stall lasts an hour (`stall_seconds`): an aclose() that waited for it would hit the guard,
    # and the client would not see a disconnect.
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stalled)
            await wait_until(lambda: emu.stats.creates == 1)
            await emu.aclose()
    assert len(errors) == 1 and isinstance(errors[0], aiohttp.ServerDisconnectedError)
    await emu.aclose()  # idempotent


async def test_create_then_drop(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity, faults=Faults(create_then_drop=1)) as emu:
        api = Api(http, emu)
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await api.create(face_swap_body())
        assert emu.stats.creates == 1 and emu.stats.create_requests == 1
        assert emu.stats.requests_by_status == {}
        assert (await api.create(face_swap_body()))[0] == 200
        assert emu.stats.creates == 2


async def test_scripted_responses(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=KEY, wire="plain", processor=identity) as emu:
        api = Api(http, emu)
        html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
        emu.faults.script("create", 502, html, times=2)
        for _ in range(2):
            async with http.post(f"{emu.base_url}/api/v1/task", json=face_swap_body()) as resp:
                assert resp.status == 502
                assert resp.headers["Content-Type"].startswith("text/html")
                assert await resp.text() == html
        assert emu.stats.creates == 0 and emu.faults.scripted == 0

        emu.faults.script("any", 500)
        emu.faults.script("get", 429, '{"code": 429}', headers={"Retry-After": "7"})
        emu.faults.script("account", 200, json.dumps({"code": 0, "data": {"x": 1}, "message": "ok"}))
        status, body, _ = await api.get("whatever")  # "any" was queued first
        assert status == 500 and body is None
        status, body, headers = await api.get("whatever")
        assert (status, body, headers["Retry-After"]) == (429, {"code": 429}, "7")
        status, body, _ = await api.account()
        assert (status, body) == (200, {"code": 0, "data": {"x": 1}, "message": "ok"})

        task_id = await api.new_task()
        done = await api.task(task_id)
        emu.faults.script("result", 404, "gone")
        status, content, _ = await api.fetch(done["output"]["image_url"])
        assert (status, content) == (404, b"gone")
        status, content, _ = await api.fetch(done["output"]["image_url"])
        assert (status, content) == (200, ASTRONAUT)
        assert emu.stats.requests_by_status == {502: 2, 500: 1, 429: 1, 200: 4, 404: 1}

        emu.faults.script("create", 503, times=3)
        emu.faults.clear_scripts()
        assert emu.faults.scripted == 0


def test_faults_validate_on_set() -> None:
    with pytest.raises(ValueError, match="probability"):
        Faults(error_rate=1.5)
    faults = Faults()
    with pytest.raises(ValueError, match="rate_limit"):
        faults.rate_limit = 0
    with pytest.raises(ValueError, match="unknown route"):
        faults.script("uploads", 500)  # type: ignore[arg-type]
    faults.latency, faults.create_then_drop = 1.0, 2
    faults.script("any", 500)
    faults.reset()
    assert faults == Faults() and faults.scripted == 0


# -- processor hook ---------------------------------------------------------------------------------


async def test_processor_runs_off_loop_once_and_its_errors_fail_the_task(http: aiohttp.ClientSession) -> None:
    release = threading.Event()
    calls: list[SwapJob] = []

    def slow_swap(job: SwapJob) -> bytes:
        calls.append(job)
        if not release.wait(2 * HANG_GUARD):
            raise RuntimeError("test never released the processor")
        if job.swap == GROUP:
            raise ValueError("no face detected in swap_image")
        return job.swap

    try:
        async with Emulator(api_key=KEY, wire="plain", processor=slow_swap) as emu:
            api = Api(http, emu)
            task_id = await api.new_task()
            with anyio.fail_after(HANG_GUARD):  # hang guard: the GETs are answered while the processor is blocked
                statuses = {(await api.task(task_id))["status"] for _ in range(5)}
            assert statuses == {"processing"}
            await wait_until(lambda: len(calls) == 1)  # the worker thread may start a moment later
            assert calls[0].target == ASTRONAUT and calls[0].swap == HOPPER
            release.set()
            await emu.drain()
            done = await api.task(task_id)
            assert done["status"] == "completed"
            assert emu.tasks[task_id].result == HOPPER

            bad = await api.new_task(face_swap_body(swap=b64(GROUP)))
            await api.task(bad)
            await emu.drain()
            failed = await api.task(bad)
            assert failed["status"] == "failed"
            assert failed["error"]["message"] == "no face detected in swap_image"
            assert len(calls) == 2
    finally:
        release.set()


async def test_aclose_does_not_wait_for_a_stuck_processor(http: aiohttp.ClientSession) -> None:
    release = threading.Event()

    def stuck(job: SwapJob) -> bytes:
        release.wait(2 * HANG_GUARD)
        return job.target

    try:
        # The processor stays stuck for twice the guard: an exit that waited for it would hit the guard.
        with anyio.fail_after(HANG_GUARD):
            async with Emulator(api_key=KEY, wire="plain", processor=stuck) as emu:
                api = Api(http, emu)
                task_id = await api.new_task()
                assert (await api.task(task_id))["status"] == "processing"
        assert not release.is_set()  # it was still stuck when the emulator closed
    finally:
        release.set()


# -- CLI and pytest plugin ---------------------------------------------------------------------------


async def test_serve_forever_until_cancelled(http: aiohttp.ClientSession) -> None:
    seen: list[Emulator] = []
    ready = anyio.Event()

    def on_ready(emu: Emulator) -> None:
        seen.append(emu)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_forever(0, "cli-key", pending_seconds=0, ready=on_ready))
        with anyio.fail_after(HANG_GUARD):
            await ready.wait()
        emu = seen[0]
        assert emu.api_key == "cli-key" and emu.port > 0
        status, _, _ = await Api(http, emu, key="cli-key").account()
        assert status == 200
        tg.cancel_scope.cancel()


async def test_cli_announces_the_upload_url_and_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    ready = anyio.Event()

    def on_ready(emu: Emulator) -> None:
        _announce(emu)
        seen.append(emu.upload_url)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_forever(0, "cli-key", engine="identity", ready=on_ready))
        with anyio.fail_after(HANG_GUARD):
            await ready.wait()
        tg.cancel_scope.cancel()
    out = capsys.readouterr().out
    assert f"upload_url: {seen[0]}" in out
    assert "engine:     identity" in out
    args = build_parser().parse_args(["--upload-port", "9001", "--engine", "identity"])
    assert (args.upload_port, args.engine) == (9001, "identity")


def test_cli_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--port", "9000", "--api-key", "k", "--processing-seconds", "0.5"])
    assert (args.port, args.api_key, args.processing_seconds, args.failure_rate) == (9000, "k", 0.5, 0.0)
    assert main(["--failure-rate", "2"]) == 2
    assert "--failure-rate" in capsys.readouterr().err


async def test_pytest_plugin_fixture(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    assert emulator.api_key == "emu-key"
    status, _, _ = await Api(http, emulator).account()
    assert status == 200


async def test_default_engine_falls_back_to_identity_with_a_warning(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_faceswap, "engine_available", lambda: False)
    async with Emulator(api_key=KEY, wire="plain") as emu:  # processor="auto"
        assert emu.engine == "identity"
        api = Api(http, emu)
        done = await api.task(await api.new_task())
        assert done["status"] == "completed"
        assert emu.tasks[done["task_id"]].result == ASTRONAUT
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "qubico_async.testing"]
    assert len(warnings) == 1
    assert "returns the target image unchanged" in warnings[0].getMessage()


async def test_engine_names(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async with Emulator(processor=identity) as emu:
        assert emu.engine == "identity"
    async with Emulator(processor=None) as emu:
        assert emu.engine == "identity"
    async with Emulator(processor=lambda job: job.target) as emu:
        assert emu.engine == "custom"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # only "auto" warns
    monkeypatch.setattr(_faceswap, "engine_available", lambda: True)
    assert Emulator().engine == "opencv"
    with pytest.raises(ValueError, match="auto"):
        Emulator(processor="opencv")  # type: ignore[arg-type]


def test_emulator_rejects_bad_settings_and_use_before_start() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        Emulator(failure_rate=2)
    emu = Emulator()
    with pytest.raises(RuntimeError, match="not running"):
        _ = emu.base_url
    with pytest.raises(RuntimeError, match="not running"):
        _ = emu.upload_url
    with pytest.raises(ValueError, match="forward"):
        emu.advance(-1)
    view: Callable[[], Any] = lambda: emu.tasks  # noqa: E731
    with pytest.raises(TypeError):
        view()["x"] = 1
