"""The one request path: auth header, envelope decoding, error mapping and retries.

Every HTTP call to the task API goes through `Transport.request`. It knows whether the
request is a read (retry freely) or the paid create (retry only when provably not created).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import aiohttp
import aiohttp.payload
import anyio

from ._config import Timeouts
from ._http import AiohttpTransport, Body, HTTPRequest, HTTPTransport
from ._http import path as _path
from ._rate import RateController
from ._redaction import redact_tree
from ._version import __version__
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    QubicoError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    TransportError,
)
from .retry import (
    RetryPolicy,
    is_retryable_create,
    is_retryable_read,
    is_uncertain_create,
    parse_retry_after,
    retry_after_of,
)

__all__ = ["Secret", "Transport"]

logger = logging.getLogger("qubico_async")

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""API responses are small JSON; anything bigger is a broken or hostile server."""

_ERROR_BODY_BYTES = 1024 * 1024
"""Of an error response only the start is read: enough for a task the service sends with an error
status (it is that task), while its message is cut to a few hundred characters anyway."""

_MAX_SECRETS = 64
"""Webhook secrets remembered per client for redaction (an app normally uses one)."""
_NOT_JSON = object()

RequestKind = Literal["read", "create"]

_STATUS_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


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


_TAGS = re.compile(r"<[^>]+>")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def _describe_body(full: str, reason: str, redact: Callable[[str], str]) -> tuple[str, int | None]:
    """(message, envelope code) from an (already redacted) error body: JSON envelope, empty, HTML or text.

    Decoded JSON is redacted again (an escaped echo), always before cutting: a secret cut in half
    would no longer match.
    """
    text = full[:4096].strip()
    if not text:
        return (reason or "empty response body"), None
    try:
        parsed = json.loads(full)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        code = parsed.get("code")
        msg = parsed.get("message") or parsed.get("error") or parsed.get("detail") or reason
        if isinstance(msg, dict):
            msg = msg.get("message") or redact(json.dumps(msg))[:200]
        return redact(str(msg))[:500], code if isinstance(code, int) and not isinstance(code, bool) else None
    if text.startswith("<") or "<html" in text[:200].lower():
        title = _TITLE.search(text)
        words = title.group(1) if title else _TAGS.sub(" ", text)
        summary = _SPACE.sub(" ", words).strip()[:200]
        return f"{reason or 'error'} (HTML page, probably from a proxy: {summary!r})", None
    return _SPACE.sub(" ", text)[:300], None


def _error_for_status(
    status: int,
    raw: bytes,
    reason: str,
    headers: Mapping[str, str],
    method: str,
    url: str,
    redact: Callable[[str], str],
) -> APIError:
    # Redacted whole, before any cut. At most 64 KiB (an error status) or 8 MB (an error envelope in a 2xx).
    full = redact(raw.decode("utf-8", "replace"))
    message, code = _describe_body(full, reason, redact)
    cls = _STATUS_CLASSES.get(status) or (ServerError if status >= 500 else APIError)
    body = full[:1000]
    kwargs: dict[str, Any] = {"status": status, "code": code, "method": method, "url": url, "body": body}
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=_retry_after(headers), **kwargs)
    return cls(message, **kwargs)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """`parse_retry_after`, but a hostile HTTP-date (a year or UTC offset beyond a C int) is no hint."""
    try:
        return parse_retry_after(headers)
    except (OverflowError, ValueError, TypeError, IndexError):
        return None


class Transport:
    """Sends requests for one client. Holds no session: the client passes its own each time."""

    def __init__(
        self,
        *,
        api_key: Secret | None,
        retry: RetryPolicy,
        timeouts: Timeouts,
        limiter: RateController | None = None,
        http: HTTPTransport | None = None,
        session: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        """`http` sends each request; by default an `AiohttpTransport` over `session()`."""
        self._api_key = api_key
        self._secrets: dict[str, None] = {}  # webhook secrets sent in creates, newest last
        self.retry = retry
        self.timeouts = timeouts
        self.limiter = limiter or RateController()
        self.requests_sent: dict[RequestKind, int] = {"read": 0, "create": 0}
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
        attempt = 0
        while True:
            attempt += 1
            await self.limiter.acquire("create" if kind == "create" else "poll", max_wait=self.retry.cap)
            sent_at = time.time()
            self.requests_sent[kind] += 1
            try:
                return await self._send_once(method, url, body)
            except (TransportError, APIError, MalformedResponseError) as exc:
                if isinstance(exc, RateLimitError):
                    pause = exc.retry_after if self.retry.respect_retry_after else None
                    cap = self.retry.max_retry_after
                    self.limiter.on_rate_limited(None if pause is None else min(pause, cap))
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
            carried = _task_envelope(raw)
            if carried is None:
                raise _error_for_status(status, raw, reason, headers, method, _path(url), self._redact)
            _warn_task_with_error(method, _path(url), f"HTTP {status}", carried, self._redact)
            return self._redact_tree(carried, raw)
        return self._redact_tree(_decode_envelope(raw, reason, headers, method, _path(url), self._redact), raw)

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


def _decode_envelope(
    raw: bytes, reason: str, headers: Mapping[str, str], method: str, path: str, redact: Callable[[str], str]
) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        parsed = _NOT_JSON  # raised below, not here: the decode error's `.doc` is the whole body
    if parsed is _NOT_JSON:
        snippet = redact(raw.decode("utf-8", "replace"))[:80]
        raise MalformedResponseError(f"{method} {path}: response is not JSON ({snippet!r})")
    if not isinstance(parsed, dict):
        raise MalformedResponseError(f"{method} {path}: response is not a JSON object")
    code = parsed.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and code not in (0, 200) and 400 <= code < 600:
        if _carries_task(parsed):  # e.g. a create refused for credit: the task exists, failed
            _warn_task_with_error(method, path, f"envelope code {code}", parsed, redact)
            return parsed
        # A 2xx carrying an error envelope without a task: trust the envelope.
        raise _error_for_status(code, raw, reason, headers, method, path, redact)
    return parsed


def _carries_task(envelope: Mapping[str, Any]) -> bool:
    """Does the envelope's `data` hold a task (a `task_id`)? Then it IS that task, whatever the code."""
    data = envelope.get("data")
    if not isinstance(data, Mapping):
        return False
    task_id = data.get("task_id")
    return isinstance(task_id, (str, int)) and not isinstance(task_id, bool) and task_id != ""


def _task_envelope(raw: bytes) -> dict[str, Any] | None:
    """The envelope of an error-status answer when it carries a task, else None."""
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) and _carries_task(parsed) else None


def _warn_task_with_error(
    method: str, path: str, what: str, envelope: Mapping[str, Any], redact: Callable[[str], str]
) -> None:
    data = envelope["data"]
    logger.warning(
        "%s %s answered %s with task %s (status %r): taking it as that task",
        method,
        path,
        what,
        redact(str(data.get("task_id")))[:64],
        redact(str(data.get("status")))[:32],
    )
