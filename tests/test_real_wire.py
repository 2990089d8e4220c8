"""The SDK against the answer shapes real clients recorded from the service (piapi-api.md §18).

Every server here is hand-scripted (`scripted_service`), never the emulator: these tests hold the
SDK to the real wire, not to an implementation that shares its assumptions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from qubico_async import (
    FaceSwap,
    InsufficientCreditError,
    PollPolicy,
    Prices,
    QubicoClient,
    RawTask,
    RetryPolicy,
    TaskFailedError,
    TaskStatus,
    Usage,
    WebhookConfig,
    WebhookHub,
)
from qubico_async._convert import structure_task

from .scripted_service import CREDIT_RAW, ZERO_TIME, ScriptedService, credit_refusal, envelope, real_task

pytestmark = pytest.mark.anyio

TARGET = "https://example.invalid/target.jpg"  # URLs go as given: the scripted service never fetches them
FACE = "https://example.invalid/face.jpg"
POLL = PollPolicy.instant(timeout=30)


@pytest.fixture
async def service() -> AsyncIterator[ScriptedService]:
    async with ScriptedService().running() as svc:
        yield svc


def client_for(service: ScriptedService) -> QubicoClient:
    return QubicoClient(
        api_key="real-wire-key-0123456789",
        base_url=service.base_url,
        retry=RetryPolicy.instant(),
        poll=POLL,
    )


def swap(i: int = 0) -> FaceSwap:
    return FaceSwap(f"https://example.invalid/target-{i}.jpg", FACE)


async def test_credit_refusal_is_a_typed_account_error_sent_once(service: ScriptedService) -> None:
    service.on_create = lambda svc, payload: credit_refusal(svc.new_id())
    async with client_for(service) as client:
        with pytest.raises(InsufficientCreditError) as caught:
            await client.submit(swap())
    assert service.creates == 1  # the refused task exists: never sent again
    exc = caught.value
    assert exc.task.status is TaskStatus.FAILED and exc.task.task_id
    assert exc.raw_message == CREDIT_RAW
    assert "failed to pre-process task runtime: " + CREDIT_RAW in str(exc)
    assert isinstance(exc, TaskFailedError)


@pytest.mark.parametrize("http_status", [200, 500, 502])
async def test_an_error_code_around_a_pending_task_is_that_task(
    service: ScriptedService, http_status: int, caplog: pytest.LogCaptureFixture
) -> None:
    def create(svc: ScriptedService, payload: object) -> tuple[int, object]:
        return http_status, envelope(real_task(svc.new_id()), code=500, message="internal error")

    service.on_create = create
    async with client_for(service) as client:
        with caplog.at_level(logging.WARNING, logger="qubico_async"):
            task = await client.submit(swap())
        assert task.status is TaskStatus.PENDING
        assert service.creates == 1  # a 5xx that carries a task is never re-sent (no second payment)
        assert "taking it as that task" in caplog.text
        done = await client.wait(task)
    assert done.status is TaskStatus.COMPLETED


async def test_any_other_failure_at_birth_is_task_failed_error(service: ScriptedService) -> None:
    error = {"code": 10000, "message": "failed to pre-process task runtime", "raw_message": "invalid image format"}

    def create(svc: ScriptedService, payload: object) -> tuple[int, object]:
        return 200, envelope(real_task(svc.new_id(), "failed", error=error), code=500)

    service.on_create = create
    async with client_for(service) as client:
        with pytest.raises(TaskFailedError) as caught:
            await client.submit(swap())
    assert not isinstance(caught.value, InsufficientCreditError)
    assert service.creates == 1
    assert "failed to pre-process task runtime: invalid image format" in str(caught.value)


async def test_a_failed_task_in_an_error_envelope_is_returned_by_wait(service: ScriptedService) -> None:
    error = {"code": 10000, "message": "task failed", "raw_message": "no face detected in swap_image"}

    def get(svc: ScriptedService, task_id: str, poll: int) -> tuple[int, object]:
        return 200, envelope(real_task(task_id, "failed", error=error), code=500, message="task failed")

    service.on_get = get
    async with client_for(service) as client:
        task = await client.submit(swap())
        done = await client.wait(task)
        assert done.status is TaskStatus.FAILED
        assert service.gets == 1  # returned, not retried 4 times and raised as ServerError
        with pytest.raises(TaskFailedError, match="task failed: no face detected in swap_image"):
            await client.run(swap(1))


async def test_zero_times_mean_not_yet(service: ScriptedService) -> None:
    async with client_for(service) as client:
        task = await client.submit(swap())
        assert task.meta.started_at is None and task.meta.ended_at is None
        assert task.meta.created_at is not None and task.meta.created_at.year == 2026
        done = await client.wait(task)
    assert done.meta.started_at is not None and done.meta.started_at.utcoffset() is not None
    assert done.meta.ended_at is not None and done.meta.ended_at.year == 2026
    assert ZERO_TIME.startswith("0001")


async def test_usage_stays_in_service_units(service: ScriptedService) -> None:
    async with client_for(service) as client:
        done = await client.run(swap())
    assert done.meta.usage == Usage(type="point", frozen=0, consume=2000000)
    assert isinstance(done.meta.usage.consume, int)
    assert done.error is None  # the all-empty error object of a success is no error
    assert done.image_url == service.result_url(done.task_id)
    assert done.output is not None and done.output.extra == {"image_base64": ""}


async def test_budget_counts_dollars_from_prices_not_points(service: ScriptedService) -> None:
    """50 jobs at $0.01 with a $1 budget, usage in points: every job runs (was: 4 ran, 46 skipped)."""
    async with client_for(service) as client:
        batch = client.swap_many([swap(i) for i in range(50)], concurrency=8, budget_usd=1.0)
        outcomes = [o async for o in batch]
    assert [o.status for o in outcomes].count("succeeded") == 50
    assert service.creates == 50
    assert batch.report is not None
    assert batch.report.spend_usd == pytest.approx(0.5)
    assert batch.report.usage == {"point": 50 * 2000000}
    assert all(o.usage == Usage("point", 0, 2000000) and o.spend_usd == pytest.approx(0.01) for o in outcomes)


async def test_usage_becomes_money_only_with_a_rate(service: ScriptedService) -> None:
    prices = Prices(usd_per_unit={"point": 1e-9})
    async with client_for(service) as client:
        batch = client.swap_many([swap(i) for i in range(5)], concurrency=5, prices=prices, budget_usd=1.0)
        outcomes = [o async for o in batch]
    assert all(o.spend_usd == pytest.approx(0.002) for o in outcomes)
    assert batch.report is not None and batch.report.spend_usd == pytest.approx(0.01)


async def test_a_credit_refusal_stops_the_batch_and_skips_the_rest(service: ScriptedService) -> None:
    def create(svc: ScriptedService, payload: object) -> tuple[int, object]:
        if svc.creates > 3:
            return credit_refusal(svc.new_id())
        return ScriptedService.accept(svc, payload)  # type: ignore[arg-type]

    service.on_create = create
    async with client_for(service) as client:
        batch = client.swap_many([swap(i) for i in range(20)], concurrency=1, budget_usd=5)
        outcomes = [o async for o in batch]
    statuses = [o.status for o in outcomes]
    assert statuses[:3] == ["succeeded"] * 3
    assert statuses[3] == "failed" and isinstance(outcomes[3].error, InsufficientCreditError)
    assert statuses[4:] == ["skipped"] * 16
    assert all("credit" in o.reason for o in outcomes[4:])
    assert service.creates == 4  # not one uncertain job, nothing re-sent
    assert batch.report is not None and batch.report.spend_usd == pytest.approx(0.03)
    assert batch.report.stopped_reason is not None and "account credit not enough" in batch.report.stopped_reason


async def test_image_toolkit_concurrency_is_the_default_for_face_swaps(service: ScriptedService) -> None:
    service.account = {"max_concurrent_task_count": 2, "max_image_toolkit_concurrency": 5}
    open_tasks: set[str] = set()
    most = 0

    def create(svc: ScriptedService, payload: object) -> tuple[int, object]:
        nonlocal most
        status, body = ScriptedService.accept(svc, payload)  # type: ignore[arg-type]
        open_tasks.add(body["data"]["task_id"])
        most = max(most, len(open_tasks))
        return status, body

    def get(svc: ScriptedService, task_id: str, poll: int) -> tuple[int, object]:
        # Nothing finishes until five tasks were created at once (or a task was polled 200 times).
        if most < 5 and poll < 200:
            return 200, envelope(real_task(task_id, "processing"))
        open_tasks.discard(task_id)
        return ScriptedService.complete_on_second_poll(svc, task_id, 2)

    service.on_create, service.on_get = create, get
    async with client_for(service) as client:
        info = await client.account_info()
        assert info.max_image_toolkit_concurrency == 5
        with anyio.fail_after(60):  # a hang guard, not a speed assertion
            outcomes = [o async for o in client.swap_many([swap(i) for i in range(12)])]
    assert [o.status for o in outcomes].count("succeeded") == 12
    assert most == 5


def video_task(task_id: str, status: str) -> dict[str, object]:
    task = real_task(task_id, status)
    task["model"], task["task_type"] = "Qubico/video-toolkit", "face-swap"
    if status == "completed":
        task["output"] = {"video_url": f"http://127.0.0.1:9/{task_id}.mp4"}
    return task


VIDEO = RawTask(model="Qubico/video-toolkit", task_type="face-swap", input={"target_video": TARGET, "swap_image": FACE})
IMAGE_DEADLINE_GONE = PollPolicy(initial=0, factor=1, max_interval=0, jitter=0, timeout=1e-6, video_timeout=30)
"""A poll policy whose image deadline is over at once: only the video deadline lets a video wait."""


async def test_a_bare_task_id_of_a_video_gets_the_video_deadline(service: ScriptedService) -> None:
    service.on_create = lambda svc, payload: (200, envelope(video_task(svc.new_id(), "pending")))
    service.on_get = lambda svc, task_id, poll: (
        200,
        envelope(video_task(task_id, "completed" if poll > 3 else "processing")),
    )
    async with QubicoClient(api_key="k" * 12, base_url=service.base_url, poll=IMAGE_DEADLINE_GONE) as client:
        created = await client.submit(VIDEO)
        done = await client.wait(created.task_id)  # a bare id: the kind is learned from the first poll
    assert done.status is TaskStatus.COMPLETED
    assert service.gets == 4


async def test_a_video_job_resumed_from_the_journal_gets_the_video_deadline(
    service: ScriptedService, tmp_path: Path
) -> None:
    journal = tmp_path / "run.sqlite"
    service.on_create = lambda svc, payload: (200, envelope(video_task(svc.new_id(), "pending")))
    service.on_get = lambda svc, task_id, poll: (200, envelope(video_task(task_id, "processing")))
    stuck = PollPolicy.instant(timeout=0.01)
    async with QubicoClient(api_key="k" * 12, base_url=service.base_url, poll=stuck) as client:
        first = [o async for o in client.swap_many([VIDEO], journal=journal, concurrency=1)]
    assert first[0].status == "failed" and "not finished" in first[0].reason  # left submitted in the journal
    service.on_get = lambda svc, task_id, poll: (
        200,
        envelope(video_task(task_id, "completed" if poll > 5 else "processing")),
    )
    async with QubicoClient(api_key="k" * 12, base_url=service.base_url, poll=IMAGE_DEADLINE_GONE) as client:
        resumed = [o async for o in client.swap_many([VIDEO], journal=journal, concurrency=1)]
    assert resumed[0].status == "succeeded", resumed[0].reason
    assert service.creates == 1  # polled, never created again


async def test_a_batch_job_with_a_webhook_finishes_from_the_delivery(service: ScriptedService) -> None:
    """The batch races the client's WebhookHub like wait(via="webhook") (it used to ignore it)."""
    hub = WebhookHub("hook-secret-0123456789")
    hook = WebhookConfig("http://127.0.0.1:9/hook", "hook-secret-0123456789")

    def get(svc: ScriptedService, task_id: str, poll: int) -> tuple[int, object]:
        if poll == 1:  # the delivery arrives while the poll still says "processing"
            done = real_task(task_id, "completed", image_url=svc.result_url(task_id), consume=2000000)
            hub.resolve(structure_task(done))
        return 200, envelope(real_task(task_id, "processing"))

    service.on_get = get
    async with QubicoClient(
        api_key="k" * 12, base_url=service.base_url, poll=PollPolicy.instant(timeout=5), webhooks=hub
    ) as client:
        requests = [FaceSwap(f"https://example.invalid/t{i}.jpg", FACE, webhook=hook) for i in range(3)]
        outcomes = [o async for o in client.swap_many(requests, concurrency=3)]
    assert [o.status for o in outcomes] == ["succeeded"] * 3
    assert hub.waiting == 0
