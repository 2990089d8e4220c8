"""The emulator with its default processor, the OpenCV face-swap engine, driven by a raw aiohttp client."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")

from qubico_async.testing import Emulator  # noqa: E402
from qubico_async.testing import _faceswap as fs  # noqa: E402
from tests._helpers import ASTRONAUT, COFFEE, GROUP, HANG_GUARD, HOPPER, b64, changed, decode, region  # noqa: E402

KEY = "emu-key"
IMAGE, VIDEO = "Qubico/image-toolkit", "Qubico/video-toolkit"

pytestmark = pytest.mark.anyio


def assert_changed_only_in(before: Any, after: Any, changed_face: fs.Face, *kept: fs.Face) -> None:
    diff = changed(before, after)
    inside = region(before.shape, changed_face)
    assert diff[~inside].mean() < 0.005  # outside the grown box: JPEG noise only
    assert diff[region(before.shape, changed_face, grow=0.0)].mean() > 0.15  # the face itself changed
    for face in kept:
        assert diff[region(before.shape, face, grow=0.0)].mean() < 0.005


def write_mp4(path: Path, frames: int, image: bytes, side: int) -> bytes:
    frame = cv2.resize(decode(image), (side, side))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, (side, side))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        count = 0
        while cap.read()[0]:
            count += 1
        return count
    finally:
        cap.release()


@pytest.fixture
async def emu_cv() -> AsyncIterator[Emulator]:
    """The emulator with its default processor ("auto": the OpenCV engine), not conftest's identity one."""
    async with Emulator(api_key=KEY, wire="plain") as server:  # the default processor: "auto"
        assert server.engine == "opencv"
        yield server


class Api:
    def __init__(self, http: aiohttp.ClientSession, emu: Emulator) -> None:
        self.http, self.emu = http, emu
        self.headers = {"x-api-key": KEY}

    async def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.emu.base_url}/api/v1/task", json=body, headers=self.headers) as r:
            return r.status, await r.json()

    async def get(self, task_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.emu.base_url}/api/v1/task/{task_id}", headers=self.headers) as r:
            assert r.status == 200
            data: dict[str, Any] = (await r.json())["data"]
            return data

    async def run(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create, look once (that starts the swap in a worker thread), wait for it, look again."""
        status, created = await self.create(body)
        assert status == 200, created
        task_id = created["data"]["task_id"]
        await self.get(task_id)
        await self.emu.drain()
        return await self.get(task_id)

    async def download(self, url: str) -> bytes:
        async with self.http.get(url) as r:
            assert r.status == 200
            return await r.read()


def swap_body(target: bytes, swap: bytes, task_type: str = "face-swap", **indices: str) -> dict[str, Any]:
    return {
        "model": IMAGE,
        "task_type": task_type,
        "input": {"target_image": b64(target), "swap_image": b64(swap), **indices},
    }


async def test_face_swap_changes_only_the_target_face(http: aiohttp.ClientSession, emu_cv: Emulator) -> None:
    api = Api(http, emu_cv)
    done = await api.run(swap_body(ASTRONAUT, HOPPER))
    assert done["status"] == "completed", done["error"]
    result = await api.download(done["output"]["image_url"])
    assert result[:3] == b"\xff\xd8\xff"
    (face,) = fs.detect_faces(ASTRONAUT)
    assert_changed_only_in(decode(ASTRONAUT), decode(result), face)
    assert emu_cv.tasks[done["task_id"]].result == result


async def test_group_target_only_the_largest_face_changes(http: aiohttp.ClientSession, emu_cv: Emulator) -> None:
    api = Api(http, emu_cv)
    done = await api.run(swap_body(GROUP, HOPPER))
    assert done["status"] == "completed", done["error"]
    left, right = fs.detect_faces(GROUP)
    assert right.area > left.area
    assert_changed_only_in(decode(GROUP), decode(await api.download(done["output"]["image_url"])), right, left)


@pytest.mark.parametrize(("swap_index", "target_index"), [("1", "0"), ("0", "1")])
async def test_multi_face_swap_indices_map(
    http: aiohttp.ClientSession, emu_cv: Emulator, swap_index: str, target_index: str
) -> None:
    api = Api(http, emu_cv)
    body = swap_body(GROUP, GROUP, "multi-face-swap", swap_faces_index=swap_index, target_faces_index=target_index)
    done = await api.run(body)
    assert done["status"] == "completed", done["error"]
    result = await api.download(done["output"]["image_url"])
    faces = fs.detect_faces(GROUP)
    target = faces[int(target_index)]
    assert_changed_only_in(decode(GROUP), decode(result), target, faces[1 - int(target_index)])
    # the swap face chosen by the index, pasted exactly as the engine does it
    assert result == fs.swap_faces(GROUP, GROUP, [int(swap_index)], [int(target_index)])


async def test_face_index_out_of_range_fails_the_task(http: aiohttp.ClientSession, emu_cv: Emulator) -> None:
    api = Api(http, emu_cv)
    failed = await api.run(swap_body(GROUP, HOPPER, "multi-face-swap", swap_faces_index="0", target_faces_index="3"))
    assert failed["status"] == "failed"
    assert "target_faces_index 3 out of range" in failed["error"]["message"]
    assert failed["output"] is None


async def test_no_face_in_target(http: aiohttp.ClientSession, emu_cv: Emulator) -> None:
    failed = await Api(http, emu_cv).run(swap_body(COFFEE, HOPPER))
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == "no face detected in target_image"
    assert failed["error"]["raw_message"] == "no face detected in target_image"


async def test_video_swap_keeps_the_frame_count(http: aiohttp.ClientSession, emu_cv: Emulator, tmp_path: Path) -> None:
    video = write_mp4(tmp_path / "in.mp4", 8, ASTRONAUT, 256)
    body = {
        "model": VIDEO,
        "task_type": "face-swap",
        "input": {"target_video": b64(video), "swap_image": b64(HOPPER)},
    }
    api = Api(http, emu_cv)
    done = await api.run(body)
    assert done["status"] == "completed", done["error"]
    assert done["meta"]["usage"]["consume"] == 8 * 50_000  # points per frame
    url = done["output"]["video_url"]
    assert url.endswith(".mp4")
    out = tmp_path / "out.mp4"
    out.write_bytes(await api.download(url))
    assert out.read_bytes()[4:8] == b"ftyp"
    assert frame_count(out) == 8
    assert out.read_bytes() != video


async def test_video_over_600_frames_is_a_400_at_create(
    http: aiohttp.ClientSession, emu_cv: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "long.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (16, 16))
    for i in range(601):
        writer.write(np.full((16, 16, 3), i % 256, np.uint8))
    writer.release()
    body = {
        "model": VIDEO,
        "task_type": "face-swap",
        "input": {"target_video": b64(path.read_bytes()), "swap_image": b64(HOPPER)},
    }
    status, payload = await Api(http, emu_cv).create(body)
    assert status == 400
    assert "target_video has 601 frames; max 600" in payload["message"]
    assert emu_cv.stats.creates == 0


async def test_gets_stay_fast_while_a_video_swap_runs(
    http: aiohttp.ClientSession, emu_cv: Emulator, tmp_path: Path
) -> None:
    video = write_mp4(tmp_path / "in.mp4", 16, ASTRONAUT, 256)
    body = {
        "model": VIDEO,
        "task_type": "face-swap",
        "input": {"target_video": b64(video), "swap_image": b64(HOPPER)},
    }
    api = Api(http, emu_cv)
    status, created = await api.create(body)
    assert status == 200
    task_id = created["data"]["task_id"]
    statuses: list[str] = []
    with anyio.fail_after(HANG_GUARD):
        while True:
            data = await api.get(task_id)
            statuses.append(data["status"])
            if data["status"] != "processing":
                break
            await anyio.sleep(0.01)
    assert data["status"] == "completed", data["error"]
    # GETs were answered while the swap ran in its worker thread: a swap that held the event loop
    # would leave one GET waiting until the end, so it would see "completed" straight away.
    assert statuses.count("processing") >= 3


async def test_worker_threads_are_bounded_by_max_workers(http: aiohttp.ClientSession) -> None:
    lock = threading.Lock()
    release = threading.Event()  # the jobs run until the test has seen them all processing
    running, peak, threads = 0, 0, set()

    def slow(job: Any) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.get_ident())
        release.wait(30)
        with lock:
            running -= 1
        return bytes(job.target)

    async with Emulator(api_key=KEY, wire="plain", processor=slow, max_workers=2) as emu:
        assert emu.engine == "custom"
        api = Api(http, emu)
        ids = []
        for _ in range(5):
            _, created = await api.create(swap_body(ASTRONAUT, HOPPER))
            ids.append(created["data"]["task_id"])
        for task_id in ids:
            assert (await api.get(task_id))["status"] == "processing"
        release.set()
        await emu.drain()
        assert [(await api.get(t))["status"] for t in ids] == ["completed"] * 5
    assert peak == 2
    assert threading.get_ident() not in threads
