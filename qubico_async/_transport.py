"""The one request path: auth header, envelope decoding, error mapping and retries.

Every HTTP call goes through `Transport`: API calls through `request`, result files through
`download`, sharing one retry loop. It knows whether a request is a read (retry freely; a
download is a read) or the paid create (retry only when provably not created).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import aiohttp
import aiohttp.payload
import anyio
import attrs

from ._config import Timeouts
from ._http import AiohttpTransport, Body, HTTPRequest, HTTPResponse, HTTPTransport, Sink
from ._http import path as _path
from ._rate import Pacing, Priority, RateController
from ._redaction import redact_tree
from ._responses import decode_envelope, download_error, error_for_status, task_envelope, warn_task_with_error
from ._version import __version__
from .errors import (
    APIError,
    MalformedResponseError,
    QubicoError,
    RateLimitError,
    SubmissionUncertainError,
    TransportError,
)
from .retry import (
    RetryPolicy,
    is_retryable_create,
    is_retryable_read,
    is_uncertain_create,
    retry_after_of,
)

if TYPE_CHECKING:
    from .coordination import Coordination

__all__ = ["Secret", "Transport"]

logger = logging.getLogger("qubico_async")

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""API responses are small JSON; anything bigger is a broken or hostile server."""

_ERROR_BODY_BYTES = 1024 * 1024
"""Of an error response only the start is read: enough for a task the service sends with an error
status (it is that task), while its message is cut to a few hundred characters anyway."""

_DOWNLOAD_ERROR_BYTES = 64 * 1024
"""Of a result host's error page only this much is read (its status says what went wrong)."""
_DOWNLOAD_REDIRECTS = 5

_MAX_SECRETS = 64
"""Webhook secrets remembered per client for redaction (an app normally uses one)."""

RequestKind = Literal["read", "create", "download"]
"""`download`: a result file, from a storage host; retried like a read, not paced (see `download`)."""
_T = TypeVar("_T")


class Secret:
    """A string that never shows itself in `repr`, `str` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class Transport:
    """Sends requests for one client. Holds no session: the client passes its own each time."""

    def __init__(
        self,
        *,
        api_key: Secret | None,
        retry: RetryPolicy,
        timeouts: Timeouts,
        pacing: Pacing | None = None,
        http: HTTPTransport | None = None,
        session: Callable[[], aiohttp.ClientSession] | None = None,
        coordination: Coordination | None = None,
    ) -> None:
        """`http` sends each request; by default an `AiohttpTransport` over `session()`.
        `coordination` shares 429 pauses with the account's other processes."""
        self._api_key = api_key
        self._secrets: dict[str, None] = {}  # webhook secrets sent in creates, newest last
        self.retry = retry
        self.timeouts = timeouts
        self.pacing = pacing or Pacing()
        self.limiter = RateController.from_pacing(self.pacing)
        self.limiter.shared = coordination
        self.requests_sent: dict[RequestKind, int] = {"read": 0, "create": 0, "download": 0}
        self._rng = random.Random()
        self._user_agent = f"qubico_async/{__version__} aiohttp/{aiohttp.__version__}"
        if http is None:
            if session is None:
                raise TypeError("Transport needs an HTTPTransport or a session getter")
            http = AiohttpTransport(session, self._redact)
        self._http = http

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"User-Agent": self._user_agent, "Accept": "application/json"}
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.reveal()
        if has_body:
            headers["Content-Type"] = "application/json"
        return headers

    def _redact(self, text: str) -> str:
        """`text` without the API key or any webhook secret this transport has sent."""
        key = self._api_key.reveal() if self._api_key is not None else ""
        if key:
            text = text.replace(key, "***")
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def add_secret(self, secret: str) -> None:
        """Redact `secret` (e.g. the app's webhook secret) from every message from now on."""
        if secret:
            self._secrets.pop(secret, None)
            self._secrets[secret] = None

    def _remember_secret(self, request: object) -> None:
        """A server may echo the create's `webhook_config.secret` in any later answer: redact it too."""
        secret = getattr(getattr(request, "webhook", None), "secret", None)
        if isinstance(secret, str) and secret:
            self._secrets.pop(secret, None)
            self._secrets[secret] = None
            if len(self._secrets) > _MAX_SECRETS:
                del self._secrets[next(iter(self._secrets))]

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: Body | None = None,
        kind: RequestKind = "read",
        fingerprint: str = "",
        request: object = None,
        resubmit_uncertain: bool = False,
    ) -> dict[str, Any]:
        """Send with retries and return the decoded JSON envelope (a dict).

        For `kind="create"`, a failure after the body may have reached the service raises
        `SubmissionUncertainError` (or resends, with `resubmit_uncertain=True`).
        """
        self._remember_secret(request)
        return await self._retrying(
            method,
            url,
            kind,
            lambda: self._send_once(method, url, body),
            fingerprint=fingerprint,
            request=request,
            resubmit_uncertain=resubmit_uncertain,
        )

    async def download(self, url: str, sink: Sink, *, restart: Callable[[], None], max_bytes: int) -> HTTPResponse:
        """GET a result file into `sink`, retried like a read; returns the answer (its headers).

        `restart()` runs before every attempt, so a retry starts the sink afresh. No API key is
        sent: result URLs live on storage hosts that must never see it. Redirects are followed
        (a few). `timeouts.connect` and `timeouts.read` (the longest silence) apply to each
        attempt, `total` does not: a large video may take long to arrive, but a stalled
        transfer never hangs. Downloads are not paced by the rate controller: it paces the
        API's host, and result URLs are on another (a CDN); a storage host's 429 is retried after
        its `Retry-After` without slowing API calls.
        """
        timeouts = attrs.evolve(self.timeouts, total=None)
        headers = {"User-Agent": self._user_agent, "Accept": "*/*"}
        request = HTTPRequest("GET", url, headers, max_redirects=_DOWNLOAD_REDIRECTS)

        async def once() -> HTTPResponse:
            restart()
            resp = await self._http.stream(
                request, sink, timeouts=timeouts, max_body=max_bytes, max_error_body=_DOWNLOAD_ERROR_BYTES
            )
            logger.debug("GET %s -> %d (download)", _path(url), resp.status)
            if not 200 <= resp.status < 300:
                raise download_error(resp.status, resp.headers, url)
            return resp

        return await self._retrying("GET", url, "download", once)

    async def _retrying(
        self,
        method: str,
        url: str,
        kind: RequestKind,
        once: Callable[[], Awaitable[_T]],
        *,
        fingerprint: str = "",
        request: object = None,
        resubmit_uncertain: bool = False,
    ) -> _T:
        """`once()` until it succeeds or the failure is final (see `_should_retry`); each try counted."""
        attempt = 0
        while True:
            attempt += 1
            if kind != "download":  # the API's pacing (see `download` for why not downloads)
                priority: Priority = "create" if kind == "create" else "poll"
                await self.limiter.acquire(priority, max_wait=self.pacing.max_wait)
            sent_at = time.time()
            self.requests_sent[kind] += 1
            try:
                return await once()
            except (TransportError, APIError, MalformedResponseError) as exc:
                if isinstance(exc, RateLimitError) and kind != "download":
                    # Paced by `Pacing`'s bound, not the retry policy's (instant retries still pace).
                    pause = exc.retry_after if self.retry.respect_retry_after else None
                    self.limiter.on_rate_limited(None if pause is None else min(pause, self.pacing.max_wait))
                retry = self._should_retry(exc, kind, resubmit_uncertain)
                if retry and attempt < self.retry.max_attempts:
                    delay = self.retry.delay(attempt, retry_after_of(exc), self._rng)
                    logger.warning(
                        "%s %s failed (%s); retry %d/%d in %.2fs",
                        method,
                        _path(url),
                        type(exc).__name__,
                        attempt,
                        self.retry.max_attempts - 1,
                        delay,
                    )
                    await anyio.sleep(delay)
                    continue
                if kind == "create" and (is_uncertain_create(exc) or isinstance(exc, MalformedResponseError)):
                    raise SubmissionUncertainError(
                        f"the create request may or may not have created a task ({exc}); "
                        "check before resubmitting to avoid paying twice",
                        fingerprint=fingerprint,
                        sent_at=sent_at,
                        request=request,
                        cause=exc,
                    ) from exc
                raise

    @staticmethod
    def _should_retry(exc: QubicoError, kind: RequestKind, resubmit_uncertain: bool) -> bool:
        if kind == "download":  # a read, but an over-the-cap file would be as big the next time
            return is_retryable_read(exc)
        if kind == "read":
            return is_retryable_read(exc) or isinstance(exc, MalformedResponseError)
        if is_retryable_create(exc):
            return True
        return resubmit_uncertain and (is_uncertain_create(exc) or isinstance(exc, MalformedResponseError))

    async def _send_once(self, method: str, url: str, body: Body | None) -> dict[str, Any]:
        started = time.monotonic()
        request = HTTPRequest(method, url, self._headers(body is not None), body)
        resp = await self._http.send(
            request, timeouts=self.timeouts, max_body=MAX_RESPONSE_BYTES, max_error_body=_ERROR_BODY_BYTES
        )
        status, raw, reason, headers = resp.status, resp.body, resp.reason, resp.headers
        elapsed = (time.monotonic() - started) * 1000
        logger.debug("%s %s -> %d (%.0f ms)", method, _path(url), status, elapsed)
        if not 200 <= status < 300:
            carried = task_envelope(raw)
            if carried is None:
                raise error_for_status(status, raw, reason, headers, method, _path(url), self._redact)
            warn_task_with_error(method, _path(url), f"HTTP {status}", carried, self._redact)
            return self._redact_tree(carried, raw)
        return self._redact_tree(decode_envelope(raw, reason, headers, method, _path(url), self._redact), raw)

    def _redact_tree(self, value: dict[str, Any], raw: bytes) -> dict[str, Any]:
        """`value` with the API key and webhook secrets replaced in every string value the server sent.

        Skipped when the raw body shows no secret and has no backslash: without a JSON escape, every
        decoded string is a substring of the raw UTF-8, so no secret can be in one (the usual case;
        walking every answer cost about as much as decoding it).
        """
        key = self._api_key.reveal() if self._api_key is not None else ""
        if b"\\" not in raw and not any(s.encode() in raw for s in (key, *self._secrets) if s):
            return value
        try:
            return cast(dict[str, Any], redact_tree(value, (key, *self._secrets)))
        except RecursionError:
            raise MalformedResponseError("response nested too deeply") from None
