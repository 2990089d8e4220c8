"""client.upload() and the upload policy, against the emulator's File Upload API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from qubico_async import (
    BadRequestError,
    FaceSwap,
    Image,
    InsufficientPlanError,
    InvalidInputError,
    PermissionDeniedError,
    PollPolicy,
    QubicoClient,
    RetryPolicy,
    Video,
)
from qubico_async._uploads import AUTO_UPLOAD_BYTES, UploadCache
from qubico_async.testing import Emulator

pytestmark = pytest.mark.anyio


@pytest.fixture
async def uclient(emu: Emulator) -> AsyncIterator[QubicoClient]:
    async with QubicoClient(
        api_key=emu.api_key,
        base_url=emu.base_url,
        upload_url=emu.upload_url,
        retry=RetryPolicy.instant(),
        poll=PollPolicy.instant(),
    ) as c:
        yield c


async def test_upload_returns_a_url_serving_the_bytes(uclient: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    url = await uclient.upload(fixtures / "astronaut.jpg")
    assert url.startswith(emu.upload_url) and url.endswith(".jpg")
    assert await uclient.download_bytes(url) == (fixtures / "astronaut.jpg").read_bytes()
    assert emu.stats.uploads == 1


async def test_video_upload(uclient: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    url = await uclient.upload(fixtures / "tiny.mp4")
    assert url.endswith(".mp4")
    assert await uclient.upload(Video.from_path(fixtures / "tiny.mp4")) == url  # cached


async def test_same_bytes_uploaded_once_per_client(uclient: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    face = fixtures / "grace_hopper.jpg"
    urls = {await uclient.upload(face) for _ in range(3)}
    urls.add(await uclient.upload(face.read_bytes()))  # same content, different form
    assert len(urls) == 1
    assert emu.stats.uploads == 1


async def test_concurrent_uploads_of_the_same_bytes_share_one_request(
    uclient: QubicoClient, emu: Emulator, fixtures: Path
) -> None:
    emu.faults.latency = 0.05
    urls: list[str] = []

    async def one() -> None:
        urls.append(await uclient.upload(fixtures / "astronaut.jpg"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert len(set(urls)) == 1
    assert emu.stats.upload_requests == 1


async def test_n_submits_of_one_face_cost_one_upload(uclient: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    targets = [fixtures / "astronaut.jpg", fixtures / "group-two-faces.jpg", fixtures / "coffee-no-face.jpg"]
    for target in targets * 2:
        await uclient.submit(FaceSwap(target, fixtures / "grace_hopper.jpg"), upload="always")
    assert emu.stats.creates == 6
    assert emu.stats.uploads == 4  # the face once, each target once
    inputs = [t.input["swap_image"] for t in emu.tasks.values()]
    assert len(set(inputs)) == 1 and inputs[0].startswith(emu.upload_url)


async def test_auto_uploads_reused_content_and_inlines_the_rest(
    uclient: QubicoClient, emu: Emulator, fixtures: Path
) -> None:
    face = fixtures / "grace_hopper.jpg"
    first = await uclient.submit(FaceSwap(fixtures / "astronaut.jpg", face))
    second = await uclient.submit(FaceSwap(fixtures / "group-two-faces.jpg", face))
    assert emu.tasks[first.task_id].input["swap_image"].startswith("data:image/jpeg")  # first use: inline
    assert emu.tasks[second.task_id].input["swap_image"].startswith(emu.upload_url)  # reused: uploaded
    assert emu.tasks[second.task_id].input["target_image"].startswith("data:")  # small, new: inline
    assert emu.stats.uploads == 1


async def test_auto_uploads_large_content(uclient: QubicoClient, emu: Emulator, tmp_path: Path, fixtures: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes((fixtures / "astronaut.jpg").read_bytes() + b"\0" * (AUTO_UPLOAD_BYTES + 1))
    task = await uclient.submit(FaceSwap(big, fixtures / "grace_hopper.jpg"))
    assert emu.tasks[task.task_id].input["target_image"].startswith(emu.upload_url)


async def test_never_inlines_everything(uclient: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    for _ in range(3):
        await uclient.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "astronaut.jpg"), upload="never")
    assert emu.stats.upload_requests == 0


async def test_plan_too_low_is_its_own_error_and_auto_falls_back(
    uclient: QubicoClient, emu: Emulator, fixtures: Path
) -> None:
    emu.faults.upload_plan_error = True
    with pytest.raises(InsufficientPlanError, match="Creator plan") as info:
        await uclient.upload(fixtures / "astronaut.jpg")
    assert isinstance(info.value, PermissionDeniedError) and info.value.status == 403
    with pytest.raises(InsufficientPlanError):
        await uclient.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "astronaut.jpg"), upload="always")
    # auto: the refusal is remembered and media goes inline from then on
    face = fixtures / "grace_hopper.jpg"
    for target in (fixtures / "astronaut.jpg", fixtures / "group-two-faces.jpg", fixtures / "coffee-no-face.jpg"):
        await uclient.submit(FaceSwap(target, face))
    assert emu.stats.creates == 3
    assert all(t.input["swap_image"].startswith("data:") for t in emu.tasks.values())
    requests_after_refusal = emu.stats.upload_requests
    await uclient.submit(FaceSwap(fixtures / "astronaut.jpg", face))
    assert emu.stats.upload_requests == requests_after_refusal


async def test_upload_400_is_a_bad_request_with_the_message(
    uclient: QubicoClient, emu: Emulator, fixtures: Path
) -> None:
    emu.faults.script("upload", 400, '{"code":400,"message":"Invalid request parameters: file too large"}')
    with pytest.raises(BadRequestError, match="file too large") as info:
        await uclient.upload(fixtures / "astronaut.jpg")
    assert isinstance(info.value, InvalidInputError)


async def test_top_level_url_variant(uclient: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    emu.faults.upload_url_style = "top-level"
    assert (await uclient.upload(fixtures / "astronaut.jpg")).startswith(emu.upload_url)


async def test_upload_checks_input_first(uclient: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    with pytest.raises(InvalidInputError, match="2049x1000"):
        await uclient.upload(fixtures / "too-wide-2049.png")
    assert emu.stats.upload_requests == 0
    assert await uclient.upload("https://cdn.example/a.png") == "https://cdn.example/a.png"


async def test_uploads_need_an_upload_url_with_a_custom_base_url(emu: Emulator, fixtures: Path) -> None:
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url) as c:
        assert c.upload_url is None
        with pytest.raises(InvalidInputError, match="upload_url"):
            await c.upload(fixtures / "astronaut.jpg")
        # auto never reaches for an upload host that was not configured
        for _ in range(2):
            await c.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "astronaut.jpg"))
    assert emu.stats.upload_requests == 0


async def test_cache_expires_with_a_safety_margin() -> None:
    now = [0.0]
    cache = UploadCache(clock=lambda: now[0])
    calls = 0

    async def send() -> str:
        nonlocal calls
        calls += 1
        return f"https://u/{calls}.png"

    assert await cache.get_or_upload("d", send) == "https://u/1.png"
    now[0] = 22 * 3600
    assert await cache.get_or_upload("d", send) == "https://u/1.png"
    now[0] = 23 * 3600  # an hour before the service deletes it: upload again
    assert await cache.get_or_upload("d", send) == "https://u/2.png"
    assert calls == 2


async def test_failed_shared_upload_raises_for_every_waiter() -> None:
    cache = UploadCache()
    gate = anyio.Event()

    async def failing() -> str:
        await gate.wait()
        raise RuntimeError("boom")

    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await cache.get_or_upload("x", failing)
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
        await anyio.sleep(0.01)
        gate.set()
    assert len(errors) == 5
    assert cache.cached("x") is None


def test_image_coerce_keeps_upload_separate_from_urls() -> None:
    assert Image.coerce("https://cdn.example/a.png").is_url
