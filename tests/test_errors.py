"""Error mapping, retries and the paid create, against the emulator's fault knobs."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qubico_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    FaceSwap,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    Pacing,
    PermissionDeniedError,
    PollPolicy,
    QubicoClient,
    RateLimitError,
    RawTask,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    Timeouts,
    TransportError,
    WebhookConfig,
)
from qubico_async.testing import Emulator

pytestmark = pytest.mark.anyio

HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"


@pytest.fixture
def request_(fixtures: Path) -> FaceSwap:
    return FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg")


@pytest.fixture
async def one_shot(emu: Emulator) -> AsyncIterator[QubicoClient]:
    """A client that never retries, to see each error class as the service sent it."""
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url, retry=RetryPolicy.none()) as c:
        yield c


# -- each status maps to its class -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (418, APIError),
    ],
)
async def test_status_classes_from_json_envelopes(
    one_shot: QubicoClient, emu: Emulator, status: int, cls: type[APIError]
) -> None:
    emu.faults.script("get", status, f'{{"code": {status}, "data": null, "message": "envelope says {status}"}}')
    with pytest.raises(cls) as info:
        await one_shot.get_task("t-1")
    err = info.value
    assert type(err) is cls
    assert err.status == status
    assert err.code == status
    assert f"envelope says {status}" in str(err)
    assert "/api/v1/task/t-1" in str(err)


async def test_html_502_from_a_proxy(one_shot: QubicoClient, emu: Emulator) -> None:
    emu.faults.script("get", 502, HTML_502, headers={"Content-Type": "text/html"})
    with pytest.raises(ServerError) as info:
        await one_shot.get_task("t-1")
    assert info.value.status == 502
    assert "HTML" in str(info.value) and "502 Bad Gateway" in str(info.value)
    assert "<center>" not in str(info.value)


async def test_empty_error_body(one_shot: QubicoClient, emu: Emulator) -> None:
    emu.faults.script("get", 500, b"")
    with pytest.raises(ServerError) as info:
        await one_shot.get_task("t-1")
    assert info.value.status == 500
    assert info.value.code is None
    assert "Internal Server Error" in str(info.value)


async def test_plain_text_error_body(one_shot: QubicoClient, emu: Emulator) -> None:
    emu.faults.script("get", 400, "bad things happened")
    with pytest.raises(BadRequestError, match="bad things happened") as info:
        await one_shot.get_task("t-1")
    assert isinstance(info.value, InvalidInputError)  # a 400 is an input problem too


async def test_real_401_and_404_and_400_from_the_emulator(emu: Emulator) -> None:
    async with QubicoClient(api_key="wrong-key", base_url=emu.base_url) as bad:
        with pytest.raises(AuthenticationError):
            await bad.account_info()
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url) as good:
        with pytest.raises(NotFoundError):
            await good.get_task("no-such-task")
        with pytest.raises(BadRequestError, match="model"):
            await good.submit(RawTask(model="Qubico/nope", task_type="face-swap", input={}))
    assert emu.stats.creates == 0


async def test_success_envelope_with_code_zero(client: QubicoClient, emu: Emulator, request_: FaceSwap) -> None:
    emu.faults.envelope_code = 0
    task = await client.submit(request_)
    assert (await client.get_task(task.task_id)).task_id == task.task_id


async def test_error_envelope_inside_http_200(one_shot: QubicoClient, emu: Emulator) -> None:
    emu.faults.script("get", 200, '{"code": 404, "data": null, "message": "task not found"}')
    with pytest.raises(NotFoundError, match="task not found"):
        await one_shot.get_task("t-1")


async def test_non_json_2xx_is_malformed(one_shot: QubicoClient, emu: Emulator) -> None:
    emu.faults.script("get", 200, '{"code": 200, "data": {"task_id": "x", "sta')
    with pytest.raises(MalformedResponseError, match="not JSON"):
        await one_shot.get_task("t-1")


# -- GET retries ----------------------------------------------------------------------------


async def test_get_retries_5xx_then_succeeds(client: QubicoClient, emu: Emulator, request_: FaceSwap) -> None:
    task = await client.submit(request_)
    emu.faults.script("get", 502, HTML_502)
    emu.faults.script("get", 500, b"")
    got = await client.get_task(task.task_id)
    assert got.task_id == task.task_id
    assert emu.stats.gets == 3


async def test_get_retry_honours_retry_after(emu: Emulator, request_: FaceSwap) -> None:
    seen: list[float | None] = []

    class SpyPolicy(RetryPolicy):
        def delay(self, attempt: int, retry_after: float | None = None, rng: object = None) -> float:
            seen.append(retry_after)
            return 0.0

    policy = SpyPolicy(max_attempts=3, base=0.0, cap=0.0, jitter=0.0, max_retry_after=0.0)
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url, retry=policy, pacing=Pacing.off()) as c:
        task = await c.submit(request_)
        emu.faults.script("get", 429, '{"code":429,"message":"slow down"}', headers={"Retry-After": "7"})
        assert (await c.get_task(task.task_id)).task_id == task.task_id
    assert seen == [7.0]
    assert emu.stats.gets == 2


async def test_get_gives_up_after_max_attempts_with_rate_limit_info(emu: Emulator) -> None:
    emu.faults.script("get", 429, '{"code":429,"message":"slow down"}', headers={"Retry-After": "3"}, times=3)
    instant = RetryPolicy.instant(3)
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url, retry=instant, pacing=Pacing.off()) as c:
        with pytest.raises(RateLimitError) as info:
            await c.get_task("t-1")
    assert info.value.retry_after == 3.0
    assert emu.stats.gets == 3


async def test_rate_limit_knob_gives_429_with_retry_after(emu: Emulator, request_: FaceSwap) -> None:
    policy = RetryPolicy(max_attempts=2, base=0.0, cap=0.0, jitter=0.0, max_retry_after=0.0)
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url, retry=policy, pacing=Pacing.off()) as c:
        task = await c.submit(request_)
        emu.faults.rate_limit = 1.0  # one request per (emulator) second, burst of one
        await c.get_task(task.task_id)
        with pytest.raises(RateLimitError) as info:
            await c.get_task(task.task_id)
        assert info.value.retry_after is not None and info.value.retry_after >= 1
        assert emu.stats.requests_by_status[429] == 2  # retried once, then gave up
        emu.advance(2)  # the bucket refills on the emulator's clock
        assert (await c.get_task(task.task_id)).task_id == task.task_id


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_get_never_retries_client_errors(client: QubicoClient, emu: Emulator, status: int) -> None:
    emu.faults.script("get", status, f'{{"code":{status},"message":"no"}}', times=5)
    with pytest.raises(APIError):
        await client.get_task("t-1")
    assert emu.stats.gets == 1


async def test_connection_refused_is_a_transport_error_marked_not_sent(request_: FaceSwap) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with QubicoClient(api_key="k", base_url=f"http://127.0.0.1:{port}", retry=RetryPolicy.instant(2)) as c:
        with pytest.raises(TransportError) as info:
            await c.get_task("t-1")
        assert info.value.sent is False
        with pytest.raises(TransportError) as info2:
            await c.submit(request_)  # refused before sending: safe to retry, and still refused
        assert info2.value.sent is False


# -- the paid create ----------------------------------------------------------------------------


async def test_create_retried_on_503_and_429_exactly_one_task(
    client: QubicoClient, emu: Emulator, request_: FaceSwap
) -> None:
    emu.faults.script("create", 503, '{"code":503,"message":"overloaded"}')
    emu.faults.script("create", 429, '{"code":429,"message":"slow"}', headers={"Retry-After": "0"})
    task = await client.submit(request_)
    assert emu.stats.create_requests == 3
    assert emu.stats.creates == 1
    assert set(emu.tasks) == {task.task_id}


@pytest.mark.parametrize(
    ("status", "cls"), [(400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError)]
)
async def test_create_never_retries_account_or_input_errors(
    client: QubicoClient, emu: Emulator, request_: FaceSwap, status: int, cls: type[APIError]
) -> None:
    emu.faults.script("create", status, f'{{"code":{status},"message":"no"}}', times=5)
    with pytest.raises(cls):
        await client.submit(request_)
    assert emu.stats.create_requests == 1


async def test_create_dropped_after_send_is_uncertain_and_not_retried(
    client: QubicoClient, emu: Emulator, request_: FaceSwap
) -> None:
    emu.faults.create_then_drop = 1
    with pytest.raises(SubmissionUncertainError) as info:
        await client.submit(request_)
    err = info.value
    assert emu.stats.create_requests == 1
    assert emu.stats.creates == 1  # the service did create (and bill) it
    assert len(err.fingerprint) == 64
    assert err.request is request_
    assert isinstance(err.cause, TransportError)
    assert err.sent_at > 0


async def test_create_timeout_after_send_is_uncertain(emu: Emulator, request_: FaceSwap) -> None:
    emu.faults.create_then_stall = 1
    async with QubicoClient(
        api_key=emu.api_key, base_url=emu.base_url, retry=RetryPolicy.instant(), timeout=Timeouts(read=0.2)
    ) as c:
        with pytest.raises(SubmissionUncertainError, match="paying twice"):
            await c.submit(request_)
    assert emu.stats.create_requests == 1
    assert emu.stats.creates == 1


async def test_create_500_is_uncertain_not_retried(client: QubicoClient, emu: Emulator, request_: FaceSwap) -> None:
    emu.faults.script("create", 500, '{"code":500,"message":"oops"}', times=3)
    with pytest.raises(SubmissionUncertainError) as info:
        await client.submit(request_)
    assert isinstance(info.value.cause, ServerError)
    assert emu.stats.create_requests == 1


async def test_create_unreadable_2xx_is_uncertain(client: QubicoClient, emu: Emulator, request_: FaceSwap) -> None:
    emu.faults.script("create", 200, '{"code":200,"data":null,"message":"success"}')
    with pytest.raises(SubmissionUncertainError):
        await client.submit(request_)
    assert emu.stats.create_requests == 1


async def test_resubmission_only_when_opted_in(client: QubicoClient, emu: Emulator, request_: FaceSwap) -> None:
    emu.faults.create_then_drop = 1
    task = await client.submit(request_, resubmit_uncertain=True)
    assert emu.stats.creates == 2  # the caller accepted paying twice
    assert task.task_id in emu.tasks


async def test_fingerprint_is_stable_and_ignores_webhook_secret(emu: Emulator, fixtures: Path) -> None:
    prints = []
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url, retry=RetryPolicy.none()) as c:
        for secret in ("one", "two"):
            emu.faults.create_then_drop = 1
            req = FaceSwap(
                fixtures / "astronaut.jpg",
                fixtures / "grace_hopper.jpg",
                webhook=WebhookConfig("http://h/x", secret),
            )
            with pytest.raises(SubmissionUncertainError) as info:
                await c.submit(req)
            prints.append(info.value.fingerprint)
    assert prints[0] == prints[1]


# -- secrets ------------------------------------------------------------------------------------


async def test_api_key_never_in_repr_errors_or_logs(
    emu: Emulator, request_: FaceSwap, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "sk-MARKER-7f3a9c"
    caplog.set_level(logging.DEBUG, logger="qubico_async")
    errors: list[BaseException] = []
    async with QubicoClient(api_key=marker, base_url=emu.base_url, retry=RetryPolicy.instant(2)) as c:
        assert marker not in repr(c)
        for action in (c.account_info(), c.get_task("x"), c.submit(request_)):
            try:
                await action
            except Exception as exc:
                errors.append(exc)
        emu.faults.script("get", 401, f'{{"code":401,"message":"bad key {marker}"}}')
        try:
            await c.get_task("y")
        except Exception as exc:
            errors.append(exc)
    assert len(errors) == 4
    for err in errors:
        assert marker not in str(err)
        assert marker not in repr(err)
        assert marker not in repr(vars(err))
    assert marker not in caplog.text
    assert marker not in repr(c._transport.__dict__)


async def test_retries_are_logged_without_secrets(
    client: QubicoClient, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="qubico_async")
    emu.faults.script("get", 503, b"")
    with pytest.raises(NotFoundError):
        await client.get_task("missing")
    assert "retry 1/" in caplog.text
    assert emu.api_key not in caplog.text


def test_poll_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="timeout"):
        PollPolicy(timeout=0)
    with pytest.raises(ValueError, match="factor"):
        PollPolicy(factor=0.5)
