"""Unit tests of the request rules on `MockTransport`: no server, every answer scripted per request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from qubico_async import (
    APIError,
    FaceSwap,
    HTTPRequest,
    HTTPResponse,
    InsufficientCreditError,
    MalformedResponseError,
    MockTransport,
    Pacing,
    QubicoClient,
    RateLimitError,
    ResultExpiredError,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    Task,
    TaskOutput,
    TaskStatus,
    TransportError,
)

pytestmark = pytest.mark.anyio

KEY = "mock-key-0123456789"
SWAP = FaceSwap("https://example.invalid/t.jpg", "https://example.invalid/f.png")


def task(task_id: str = "t-1", status: str = "pending", **extra: object) -> dict[str, object]:
    return {"task_id": task_id, "status": status, "model": "Qubico/image-toolkit", **extra}


def answers(*responses: HTTPResponse | Exception) -> Callable[[HTTPRequest], HTTPResponse]:
    queue = list(responses)

    def handler(request: HTTPRequest) -> HTTPResponse:
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler


def ok(data: object, code: int = 200) -> HTTPResponse:
    return HTTPResponse.json(200, json.dumps({"code": code, "data": data, "message": "success"}))


def client(mock: MockTransport) -> QubicoClient:
    """Zero-delay: instant retries and no pacing (these tests are about which requests are retried)."""
    return QubicoClient(
        api_key=KEY, base_url="http://127.0.0.1:9", transport=mock, retry=RetryPolicy.instant(), pacing=Pacing.off()
    )


async def test_the_request_carries_the_key_and_the_payload() -> None:
    mock = MockTransport(answers(ok(task())))
    async with client(mock) as c:
        created = await c.submit(SWAP)
    assert created.task_id == "t-1"
    [sent] = mock.requests
    assert (sent.method, sent.url) == ("POST", "http://127.0.0.1:9/api/v1/task")
    assert sent.headers["x-api-key"] == KEY and KEY not in repr(sent)
    assert json.loads(sent.body or b"")["input"]["target_image"] == "https://example.invalid/t.jpg"
    assert c.requests_sent == {"create": 1, "read": 0, "download": 0}


async def test_a_read_retries_transient_failures_then_succeeds() -> None:
    mock = MockTransport(
        answers(
            HTTPResponse(502, b"<html>bad gateway</html>"),
            TransportError("reset", sent=True),
            HTTPResponse(429, b"{}", {"Retry-After": "0"}),
            ok(task(status="Completed")),
        )
    )
    async with client(mock) as c:
        done = await c.get_task("t-1")
    assert done.status is TaskStatus.COMPLETED
    assert len(mock.requests) == 4


async def test_a_create_is_never_resent_once_it_may_have_landed() -> None:
    for failure in (HTTPResponse(502, b"bad gateway"), TransportError("reset", sent=True), HTTPResponse(409, b"{}")):
        mock = MockTransport(answers(failure, ok(task())))
        async with client(mock) as c:
            with pytest.raises(SubmissionUncertainError):
                await c.submit(SWAP)
        assert len(mock.requests) == 1, failure


async def test_a_create_that_provably_made_nothing_is_retried() -> None:
    mock = MockTransport(
        answers(TransportError("refused", sent=False), HTTPResponse(503, b"{}"), HTTPResponse(429, b"{}"), ok(task()))
    )
    async with client(mock) as c:
        assert (await c.submit(SWAP)).task_id == "t-1"
    assert len(mock.requests) == 4


async def test_retries_run_out_with_the_status_error() -> None:
    mock = MockTransport(answers(*[HTTPResponse(429, b'{"message": "slow down"}')] * 4))
    async with client(mock) as c:
        with pytest.raises(RateLimitError, match="slow down"):
            await c.submit(SWAP)  # 429 proves nothing was made: retried, then raised as itself
    mock = MockTransport(answers(*[HTTPResponse(500, b"oops")] * 4))
    async with client(mock) as c:
        with pytest.raises(ServerError):
            await c.get_task("t-1")
    assert len(mock.requests) == 4


async def test_a_task_in_an_error_envelope_is_that_task() -> None:
    refused = task(status="failed", error={"message": "failed to pre-process", "raw_message": "credit not enough"})
    mock = MockTransport(answers(ok(refused, code=500)))
    async with client(mock) as c:
        with pytest.raises(InsufficientCreditError, match="credit not enough"):
            await c.submit(SWAP)
    assert len(mock.requests) == 1


async def test_an_async_handler_works_too() -> None:
    async def handler(request: HTTPRequest) -> HTTPResponse:
        return ok(task(status="processing"))

    async with client(MockTransport(handler)) as c:
        assert (await c.get_task("t-2")).status is TaskStatus.PROCESSING


# -- downloads: the same seam, the same retry loop --------------------------------------------------

RESULT = "https://cdn.example.invalid/results/t-1.png?signature=s3cr3t-sig"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2048  # 512 KiB: more than one streamed chunk


def done(url: str = RESULT) -> Task:
    return Task(task_id="t-1", status=TaskStatus.COMPLETED, output=TaskOutput(image_url=url))


def png() -> HTTPResponse:
    return HTTPResponse(200, PNG, {"Content-Type": "image/png"})


async def test_a_download_goes_through_the_transport_and_is_retried_after_a_503(tmp_path: Path) -> None:
    mock = MockTransport(answers(HTTPResponse(503, b"<html>busy</html>"), TransportError("reset"), png()))
    async with client(mock) as c:
        out = await c.download(done(), tmp_path)
    assert out == tmp_path / "t-1.png" and out.read_bytes() == PNG
    assert [(r.method, r.url) for r in mock.requests] == [("GET", RESULT)] * 3
    assert all("x-api-key" not in r.headers for r in mock.requests)  # the storage host never sees the key
    assert c.requests_sent == {"create": 0, "read": 0, "download": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-1.png"]  # no temp file left by the retries


async def test_a_download_failing_on_404_is_an_expired_result_and_not_retried() -> None:
    mock = MockTransport(answers(HTTPResponse(404, b"Not Found"), png()))
    async with client(mock) as c:
        with pytest.raises(ResultExpiredError, match="3 days") as caught:
            await c.download_bytes(done())
    assert caught.value.status == 404 and len(mock.requests) == 1
    assert "s3cr3t-sig" not in str(caught.value) and "s3cr3t-sig" not in caught.value.url  # the query is a credential


async def test_a_download_refused_with_403_is_an_api_error_and_not_retried() -> None:
    mock = MockTransport(answers(HTTPResponse(403, b"denied"), png()))
    async with client(mock) as c:
        with pytest.raises(APIError, match="storage refused the download: HTTP 403") as caught:
            await c.download_bytes(done())
    assert caught.value.status == 403 and len(mock.requests) == 1


async def test_download_retries_run_out_with_the_server_error() -> None:
    mock = MockTransport(answers(*[HTTPResponse(500, b"oops")] * 4))
    async with client(mock) as c:
        with pytest.raises(ServerError, match="storage answered 500"):
            await c.download_bytes(done())
    assert len(mock.requests) == 4  # RetryPolicy.instant(): 4 attempts, like a GET


async def test_a_storage_429_is_retried_but_does_not_slow_the_api() -> None:
    mock = MockTransport(answers(HTTPResponse(429, b"", {"Retry-After": "0"}), png()))
    async with client(mock) as c:
        assert await c.download_bytes(done()) == PNG
        assert not c._transport.limiter.limited  # the CDN's 429 says nothing about the API's host
    assert len(mock.requests) == 2


async def test_a_result_over_the_cap_is_not_fetched_again() -> None:
    mock = MockTransport(answers(png(), png()))
    async with client(mock) as c:
        with pytest.raises(MalformedResponseError, match="cap"):
            await c.download_bytes(done(), max_bytes=1000)
    assert len(mock.requests) == 1  # the same file would be as big the next time
