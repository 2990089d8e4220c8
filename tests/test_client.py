"""The client against the bundled emulator over real loopback HTTP."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import anyio
import pytest

from qubico_async import (
    ClientClosedError,
    FaceSwap,
    Image,
    InvalidInputError,
    MissingApiKeyError,
    MultiFaceSwap,
    PollPolicy,
    QubicoClient,
    RawTask,
    RetryPolicy,
    Task,
    TaskFailedError,
    TaskStatus,
    VideoFaceSwap,
    WaitTimeoutError,
    WebhookConfig,
)
from qubico_async.testing import Emulator
from tests._helpers import HANG_GUARD

pytestmark = pytest.mark.anyio


async def test_face_swap_happy_path_with_paths(client: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    task = await client.face_swap(fixtures / "astronaut.jpg", str(fixtures / "grace_hopper.jpg"))
    assert task.status is TaskStatus.COMPLETED
    assert task.model == "Qubico/image-toolkit" and task.task_type == "face-swap"
    assert task.image_url is not None and task.image_url.startswith(emu.base_url)
    assert emu.stats.creates == 1
    stored = emu.tasks[task.task_id]
    assert stored.input["target_image"].startswith("data:image/jpeg;base64,")
    result = await client.download_bytes(task)
    assert result[:3] == b"\xff\xd8\xff"


async def test_face_swap_accepts_bytes_image_objects_and_base64(
    client: QubicoClient, emu: Emulator, fixtures: Path
) -> None:
    target = (fixtures / "astronaut.jpg").read_bytes()
    swap = Image.from_base64(base64.b64encode((fixtures / "grace_hopper.jpg").read_bytes()).decode())
    task = await client.face_swap(target, swap)
    assert task.status.is_success
    stored = emu.tasks[task.task_id]
    assert base64.b64decode(stored.input["target_image"].split(",", 1)[1]) == target


async def test_url_inputs_are_sent_verbatim(client: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    url = emu.host_file((fixtures / "astronaut.jpg").read_bytes(), "target.jpg")
    task = await client.submit(FaceSwap(url, fixtures / "grace_hopper.jpg"))
    assert emu.tasks[task.task_id].input["target_image"] == url


async def test_multi_face_swap_sends_index_strings(client: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    group = fixtures / "group-two-faces.jpg"
    task = await client.multi_face_swap(group, group, swap_faces=[0, 1], target_faces=[1, 0])
    assert task.status.is_success
    stored = emu.tasks[task.task_id]
    assert stored.task_type == "multi-face-swap"
    assert stored.input["swap_faces_index"] == "0,1"
    assert stored.input["target_faces_index"] == "1,0"


async def test_video_face_swap(client: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    task = await client.video_face_swap(fixtures / "tiny.mp4", fixtures / "astronaut.jpg")
    assert task.status.is_success
    assert task.model == "Qubico/video-toolkit"
    assert task.video_url is not None
    stored = emu.tasks[task.task_id]
    assert stored.input["target_video"].startswith("data:video/mp4;base64,")
    assert (await client.download_bytes(task))[4:8] == b"ftyp"


async def test_submit_raw_unified_task_dict_and_rawtask(client: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    face = Image.from_path(fixtures / "astronaut.jpg")
    raw = RawTask(model="Qubico/image-toolkit", task_type="face-swap", input={"target_image": face, "swap_image": face})
    created = await client.submit(raw)
    assert created.status is TaskStatus.PENDING
    url = emu.host_file((fixtures / "astronaut.jpg").read_bytes(), "a.jpg")
    as_dict = {
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "input": {"target_image": url, "swap_image": url},
    }
    created2 = await client.submit(as_dict)
    assert emu.tasks[created2.task_id].input == {"target_image": url, "swap_image": url}
    assert emu.stats.creates == 2


async def test_webhook_config_is_sent(client: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    hook = WebhookConfig("http://127.0.0.1:9/hook", "hook-secret")
    task = await client.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg", webhook=hook))
    assert emu.tasks[task.task_id].config["webhook_config"] == {
        "endpoint": hook.endpoint,
        "secret": "hook-secret",
    }
    # The service echoes the secret back: like every string it sends, it is redacted on arrival.
    assert task.config.webhook is not None and task.config.webhook.endpoint == hook.endpoint
    assert "hook-secret" not in repr(task) and task.config.webhook.secret == "***"


async def test_get_task_and_wait_through_statuses(emu: Emulator, fixtures: Path) -> None:
    emu_slow = Emulator(api_key="k", pending_seconds=10, processing_seconds=10)
    async with (
        emu_slow,
        QubicoClient(api_key="k", base_url=emu_slow.base_url, poll=PollPolicy.instant()) as c,
    ):
        created = await c.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg"))
        assert (await c.get_task(created.task_id)).status is TaskStatus.PENDING
        emu_slow.advance(10)
        assert (await c.get_task(created.task_id)).status is TaskStatus.PROCESSING
        emu_slow.advance(10)
        done = await c.wait(created.task_id)
        assert done.status is TaskStatus.COMPLETED
        assert done.meta.usage is not None and done.meta.usage.consume == 1_000_000  # points, never USD


async def test_failed_task_raises_task_failed_error_with_task(
    client: QubicoClient, emu: Emulator, fixtures: Path
) -> None:
    emu.fail_next(1, "no face detected in target_image")
    with pytest.raises(TaskFailedError) as info:
        await client.face_swap(fixtures / "coffee-no-face.jpg", fixtures / "grace_hopper.jpg")
    task = info.value.task
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and "no face detected" in task.error.message
    assert "no face detected" in str(info.value)


async def test_wait_returns_failed_task_without_raising(client: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    emu.fail_next(1)
    created = await client.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg"))
    done = await client.wait(created)
    assert done.status is TaskStatus.FAILED


async def test_wait_on_terminal_task_makes_no_request(client: QubicoClient, emu: Emulator) -> None:
    done = Task(task_id="x", status=TaskStatus.COMPLETED)
    assert await client.wait(done) is done
    assert emu.stats.gets == 0


async def test_wait_deadline_raises_and_leaves_task_alive(fixtures: Path) -> None:
    async with Emulator(api_key="k", processing_seconds=1000) as slow:
        policy = PollPolicy(initial=0.001, factor=1.0, max_interval=0.001, jitter=0.0, timeout=0.05)
        async with QubicoClient(api_key="k", base_url=slow.base_url, poll=policy) as c:
            created = await c.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg"))
            with pytest.raises(WaitTimeoutError) as info:
                await c.wait(created)
            err = info.value
            assert err.task_id == created.task_id
            assert err.last_task is not None and err.last_task.status is TaskStatus.PROCESSING
            assert isinstance(err, TimeoutError)
            # The remote task is untouched: it finishes later and can still be collected.
            slow.advance(1000)
            assert (await c.wait(created.task_id, timeout=HANG_GUARD)).status.is_success
            assert slow.stats.creates == 1


async def test_wait_timeout_argument_overrides_policy(client: QubicoClient, fixtures: Path) -> None:
    async with (
        Emulator(api_key="k", processing_seconds=1000) as slow,
        QubicoClient(api_key="k", base_url=slow.base_url, poll=PollPolicy.instant(timeout=None)) as c,
    ):
        created = await c.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg"))
        with pytest.raises(WaitTimeoutError):
            await c.wait(created, timeout=0.02)


async def test_cancelling_wait_leaves_no_task_or_connection(fixtures: Path) -> None:
    import asyncio

    async with (
        Emulator(api_key="k", processing_seconds=1000) as slow,
        QubicoClient(api_key="k", base_url=slow.base_url, poll=PollPolicy.instant(timeout=None)) as c,
    ):
        created = await c.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg"))
        before = asyncio.all_tasks()
        with anyio.move_on_after(0.05) as scope:
            await c.wait(created)
        assert scope.cancelled_caught
        await anyio.sleep(0.01)  # let the server finish a GET that was in flight
        gets = slow.stats.gets
        assert gets > 0
        await anyio.sleep(0.03)
        assert slow.stats.gets == gets  # polling really stopped
        leftover = [t for t in asyncio.all_tasks() - before if "web_protocol" not in repr(t)]
        assert leftover == []  # the client started nothing that outlives the wait
        session = c._http()
        assert session.connector is not None
        assert len(session.connector._acquired) == 0  # no connection left checked out


async def test_borrowed_session_is_never_closed(emu: Emulator, fixtures: Path) -> None:
    async with aiohttp.ClientSession() as session:
        c = QubicoClient(api_key=emu.api_key, base_url=emu.base_url, session=session, poll=PollPolicy.instant())
        task = await c.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg"))
        await c.aclose()
        assert not session.closed
        with pytest.raises(ClientClosedError):
            await c.get_task(task.task_id)
        async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url, session=session) as c2:
            assert (await c2.get_task(task.task_id)).task_id == task.task_id
        assert not session.closed


async def test_use_before_open_and_after_close_is_an_error(emu: Emulator) -> None:
    c = QubicoClient(api_key=emu.api_key, base_url=emu.base_url)
    with pytest.raises(ClientClosedError, match="async with"):
        await c.get_task("abc")
    async with c:
        pass
    with pytest.raises(ClientClosedError, match="closed"):
        await c.get_task("abc")
    with pytest.raises(ClientClosedError):
        await c.__aenter__()


async def test_missing_key_is_reported_at_first_use(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUBICO_API_KEY", raising=False)
    monkeypatch.delenv("PIAPI_API_KEY", raising=False)
    async with QubicoClient(base_url=emu.base_url) as c:
        assert "missing" in repr(c)
        with pytest.raises(MissingApiKeyError, match="QUBICO_API_KEY"):
            await c.get_task("abc")
    assert emu.stats.gets == 0


async def test_key_from_environment(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUBICO_API_KEY", emu.api_key)
    monkeypatch.setenv("PIAPI_API_KEY", "wrong")
    async with QubicoClient(base_url=emu.base_url) as c:
        info = await c.account_info()
        assert info.max_concurrent_task_count is not None
    monkeypatch.delenv("QUBICO_API_KEY")
    monkeypatch.setenv("PIAPI_API_KEY", emu.api_key)
    async with QubicoClient(base_url=emu.base_url) as c:
        assert (await c.account_info()).equivalent_in_usd is not None


async def test_inputs_are_checked_before_any_request(
    client: QubicoClient, emu: Emulator, fixtures: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        await client.face_swap(tmp_path / "missing.jpg", fixtures / "astronaut.jpg")
    with pytest.raises(InvalidInputError, match="2049x1000"):
        await client.face_swap(fixtures / "too-wide-2049.png", fixtures / "astronaut.jpg")
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(InvalidInputError, match=r"notes\.png"):
        await client.face_swap(tmp_path / "notes.png", fixtures / "astronaut.jpg")
    assert emu.stats.create_requests == 0


@pytest.mark.parametrize(
    ("swap_faces", "target_faces", "match"),
    [
        ([0, 1], [0], "pair"),
        ([-1], [0], "negative"),
        ([True], [0], "not an int"),
        ("0,1", "0,1", "list of ints"),
        ([], [], "at least one"),
    ],
)
def test_multi_face_indices_validated(swap_faces: object, target_faces: object, match: str, fixtures: Path) -> None:
    with pytest.raises(InvalidInputError, match=match):
        MultiFaceSwap(fixtures / "astronaut.jpg", fixtures / "astronaut.jpg", swap_faces, target_faces)  # type: ignore[arg-type]


def test_requests_are_frozen_and_coerce_inputs(fixtures: Path) -> None:
    req = VideoFaceSwap("https://cdn.example/clip.mp4", fixtures / "astronaut.jpg", [0], [1])
    assert req.target_video.is_url
    assert req.swap_faces == (0,) and req.target_faces == (1,)
    with pytest.raises(AttributeError):
        req.swap_faces = (1,)  # type: ignore[misc]


def test_url_checks_need_no_network() -> None:
    with pytest.raises(InvalidInputError, match=r"\.jpg"):
        FaceSwap("https://cdn.example/photo.gif", "https://cdn.example/a.png")
    with pytest.raises(InvalidInputError, match="http"):
        Image.from_url("ftp://cdn.example/a.png")


def test_client_arguments_are_validated() -> None:
    with pytest.raises(InvalidInputError, match="max_connections"):
        QubicoClient(api_key="k", max_connections=0)
    with pytest.raises(InvalidInputError, match="base_url"):
        QubicoClient(api_key="k", base_url="api.piapi.ai")


async def test_owned_session_has_a_connection_limit(emu: Emulator) -> None:
    async with QubicoClient(api_key="k", base_url=emu.base_url, max_connections=7) as c:
        connector = c._http().connector
        assert connector is not None and connector.limit == 7


async def test_retry_policy_instant_is_used_for_gets(emu: Emulator) -> None:
    emu.faults.script("get", 503, '{"code":503,"message":"busy"}', times=2)
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url, retry=RetryPolicy.instant(3)) as c:
        from qubico_async import NotFoundError

        with pytest.raises(NotFoundError):
            await c.get_task("no-such-task")
    assert emu.stats.gets == 3


async def test_base_and_upload_url_come_from_the_environment(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUBICO_BASE_URL", emu.base_url)
    monkeypatch.setenv("QUBICO_UPLOAD_URL", emu.upload_url)
    env_client = QubicoClient(api_key=emu.api_key)
    assert (env_client.base_url, env_client.upload_url) == (emu.base_url, emu.upload_url)
    async with env_client:
        assert (await env_client.account_info()).max_concurrent_task_count == emu.max_concurrent_task_count
    explicit = QubicoClient(api_key="x", base_url="http://127.0.0.1:9", upload_url="http://127.0.0.1:8")
    assert (explicit.base_url, explicit.upload_url) == ("http://127.0.0.1:9", "http://127.0.0.1:8")
