"""The HTTP seam: one request in, one response (or a `TransportError`) out.

`HTTPTransport` is what the retry loop (`_transport.Transport`) sends through: `send` for API
calls (the body read whole, capped) and `stream` for result downloads (the body handed on chunk
by chunk as it arrives). `AiohttpTransport` is the real one (the client's session, capped reads,
aiohttp errors mapped to `TransportError` with `sent` telling whether the request can have left
the machine). `MockTransport` answers from a function, for unit tests without a server, like httpx's.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiohttp
from attrs import field, frozen

from ._config import Timeouts
from .errors import MalformedResponseError, TransportError

__all__ = ["AiohttpTransport", "Body", "HTTPRequest", "HTTPResponse", "HTTPTransport", "MockTransport", "Sink"]

_STREAM_BODY_BYTES = 512 * 1024
"""Bodies above this go to aiohttp as a stream: it would otherwise copy them on the event loop."""
_CHUNK = 256 * 1024
"""The largest piece `stream` hands to its sink at once."""

Sink = Callable[[bytes], Awaitable[None]]
"""Where `stream` puts a 2xx body, one chunk after another (e.g. a file being written)."""


Body = bytes | tuple[bytes, ...]
"""A request body: bytes, or pieces sent one after another (a large body built around media)."""


def _body_size(body: Body) -> int:
    return len(body) if isinstance(body, bytes) else sum(map(len, body))


def _sliced(body: Body) -> bool:
    return isinstance(body, tuple) or len(body) > _STREAM_BODY_BYTES


class _SlicedBody(aiohttp.payload.Payload):
    """A body written in slices, each awaited: never copied or joined, the loop runs between."""

    _value: tuple[bytes, ...]

    def __init__(self, body: Body) -> None:
        super().__init__(body if isinstance(body, tuple) else (body,), content_type="application/json")
        self._length = _body_size(body)

    @property
    def size(self) -> int:
        return self._length

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        left = self._length if content_length is None else min(content_length, self._length)
        for piece in self._value:
            view = memoryview(piece)[:left]
            for at in range(0, len(view), _STREAM_BODY_BYTES):
                await writer.write(view[at : at + _STREAM_BODY_BYTES])
            left -= len(view)
            if left <= 0:
                return


@frozen
class HTTPRequest:
    """One request as sent: `headers` include the `x-api-key` (never logged or shown)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(factory=dict, repr=False)
    body: Body | None = field(default=None, repr=False)
    """Bytes, or pieces sent one after another (a large body built around media: never joined)."""
    max_redirects: int = 0
    """Redirects to follow. 0 for API calls (their key must not follow a redirect elsewhere);
    downloads of result files follow a few (storage hosts redirect to their CDN)."""


@frozen
class HTTPResponse:
    """One answer: its status, headers and (capped) body bytes (empty for a 2xx `stream`)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(factory=dict)
    reason: str = ""

    @classmethod
    def json(cls, status: int, text: str, headers: Mapping[str, str] | None = None) -> HTTPResponse:
        """A JSON answer (for `MockTransport` handlers)."""
        return cls(status, text.encode(), {"Content-Type": "application/json", **(headers or {})})


class HTTPTransport(Protocol):
    """Sends one request. Reads at most `max_body` bytes of a 2xx body (more is a
    `MalformedResponseError`) and at most `max_error_body` of any other (the rest is dropped).
    Raises `TransportError` when no (whole) response came: `sent=False` only when the request
    provably never left this machine."""

    async def send(
        self, request: HTTPRequest, *, timeouts: Timeouts, max_body: int, max_error_body: int
    ) -> HTTPResponse:
        """The answer, its body read whole (API calls)."""
        ...

    async def stream(
        self, request: HTTPRequest, sink: Sink, *, timeouts: Timeouts, max_body: int, max_error_body: int
    ) -> HTTPResponse:
        """Like `send`, but a 2xx body goes to `sink` chunk by chunk as it arrives and the returned
        body is empty (downloads: a video is never held in memory whole). An error status's body
        is returned as with `send`, and `sink` never called. What `sink` raises propagates as is."""
        ...


class AiohttpTransport:
    """The real transport, over the session `session()` returns (the client owns it)."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession], redact: Callable[[str], str]) -> None:
        self._session = session
        self._redact = redact

    async def send(
        self, request: HTTPRequest, *, timeouts: Timeouts, max_body: int, max_error_body: int
    ) -> HTTPResponse:
        async def read(resp: aiohttp.ClientResponse) -> HTTPResponse:
            if 200 <= resp.status < 300:
                raw = await _read_capped(resp, max_body)
            else:  # an error is classified by its status, whatever the size of its page
                raw = await _read_capped(resp, max_error_body, truncate=True)
            return HTTPResponse(resp.status, raw, resp.headers, resp.reason or "")

        return await self._exchange(request, timeouts, read)

    async def stream(
        self, request: HTTPRequest, sink: Sink, *, timeouts: Timeouts, max_body: int, max_error_body: int
    ) -> HTTPResponse:
        async def read(resp: aiohttp.ClientResponse) -> HTTPResponse:
            if not 200 <= resp.status < 300:
                raw = await _read_capped(resp, max_error_body, truncate=True)
                return HTTPResponse(resp.status, raw, resp.headers, resp.reason or "")
            declared = resp.content_length
            if declared is not None and declared > max_body:
                raise MalformedResponseError(f"response body is {declared} bytes; the cap is {max_body}")
            size = 0
            async for chunk in resp.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > max_body:
                    raise MalformedResponseError(f"response body larger than the {max_body}-byte cap")
                try:
                    await sink(chunk)
                except Exception as exc:  # e.g. a full disk: the caller's error, not the connection's
                    raise _SinkFailed(exc) from None
            return HTTPResponse(resp.status, b"", resp.headers, resp.reason or "")

        return await self._exchange(request, timeouts, read)

    async def _exchange(
        self,
        request: HTTPRequest,
        timeouts: Timeouts,
        read: Callable[[aiohttp.ClientResponse], Awaitable[HTTPResponse]],
    ) -> HTTPResponse:
        """Send `request`, `read` the answer; aiohttp's failures become `TransportError`."""
        body = request.body
        failure: BaseException
        try:
            async with self._session().request(
                request.method,
                request.url,
                # Big bodies go in slices: one write (or BytesIO.getbuffer) would copy them on the loop.
                data=_SlicedBody(body) if body is not None and _sliced(body) else body,
                headers=dict(request.headers),
                timeout=timeouts.to_aiohttp(),
                allow_redirects=request.max_redirects > 0,
                max_redirects=max(request.max_redirects, 1),
            ) as resp:
                return await read(resp)
        except _SinkFailed as exc:
            failure = exc.error
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            failure = TransportError(
                f"could not connect to {origin(request.url)}: {self._redact(str(exc)) or type(exc).__name__}",
                sent=False,
            )
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            failure = TransportError(f"{request.method} {path(request.url)} timed out waiting for the response")
        except aiohttp.ClientError as exc:
            detail = self._redact(str(exc)) or type(exc).__name__
            failure = TransportError(f"{request.method} {path(request.url)} failed: {detail}")
        # Raised outside the handler, so the aiohttp error is not kept as `__context__`: its
        # `request_info` holds the request headers, the API key included.
        raise failure


class _SinkFailed(Exception):
    """Carries what a `stream` sink raised past the aiohttp error mapping, unchanged."""

    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error


Handler = Callable[[HTTPRequest], "HTTPResponse | Awaitable[HTTPResponse]"]


class MockTransport:
    """Answers every request with `handler(request)` (sync or async); records what was sent.

    ```python
    def handler(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse.json(200, '{"code": 200, "data": {"task_id": "t", "status": "pending"}}')

    async with QubicoClient(api_key="k", transport=MockTransport(handler)) as client:
        task = await client.submit(FaceSwap("https://x.test/a.jpg", "https://x.test/b.png"))
    ```

    A handler may raise `TransportError` to play a lost connection. The caps apply as on the wire.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[HTTPRequest] = []
        """Every request sent, in order."""

    async def send(
        self, request: HTTPRequest, *, timeouts: Timeouts, max_body: int, max_error_body: int
    ) -> HTTPResponse:
        return await self._answer(request, max_body, max_error_body)

    async def stream(
        self, request: HTTPRequest, sink: Sink, *, timeouts: Timeouts, max_body: int, max_error_body: int
    ) -> HTTPResponse:
        """The handler's answer; a 2xx body goes to `sink` in chunks, as it would off the wire."""
        response = await self._answer(request, max_body, max_error_body)
        if not 200 <= response.status < 300:
            return response
        body = response.body
        for at in range(0, len(body), _CHUNK):
            await sink(body[at : at + _CHUNK])
        return HTTPResponse(response.status, b"", response.headers, response.reason)

    async def _answer(self, request: HTTPRequest, max_body: int, max_error_body: int) -> HTTPResponse:
        self.requests.append(request)
        answer = self._handler(request)
        response = await answer if inspect.isawaitable(answer) else answer
        if 200 <= response.status < 300 and len(response.body) > max_body:
            raise MalformedResponseError(f"response body larger than the {max_body}-byte cap")
        if not 200 <= response.status < 300 and len(response.body) > max_error_body:
            response = HTTPResponse(response.status, response.body[:max_error_body], response.headers, response.reason)
        return response


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, *, truncate: bool = False) -> bytes:
    """The body, at most `cap` bytes: over it, the first `cap` bytes if `truncate`, else an error."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > cap:
            if truncate:  # the rest is never read: aiohttp closes the connection instead of reusing it
                chunks.append(chunk[: len(chunk) - (size - cap)])
                break
            raise MalformedResponseError(f"response body larger than the {cap}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def origin(url: str) -> str:
    parts = url.split("/", 3)
    return "/".join(parts[:3]) if len(parts) >= 3 else url


def path(url: str) -> str:
    """The URL's path, without its query: a signed result URL's query is a credential."""
    parts = url.split("/", 3)
    return ("/" + parts[3] if len(parts) == 4 else url).split("?", 1)[0].split("#", 1)[0]
