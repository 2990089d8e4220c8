"""Reading answers: a response's envelope decoded, and an error status mapped to its exception.

One place says what each status means: for API calls (`error_for_status`, the envelope and a task
carried by an error status) and for result downloads (`download_error`: 404/410 is an expired
result, 5xx the storage's fault, another 4xx its refusal).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
)
from .retry import parse_retry_after

__all__ = [
    "decode_envelope",
    "envelope_data",
    "download_error",
    "error_for_status",
    "short_url",
    "task_envelope",
    "warn_task_with_error",
]

logger = logging.getLogger("qubico_async")

_NOT_JSON = object()

_STATUS_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}

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


def error_for_status(
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


def decode_envelope(
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
            warn_task_with_error(method, path, f"envelope code {code}", parsed, redact)
            return parsed
        # A 2xx carrying an error envelope without a task: trust the envelope.
        raise error_for_status(code, raw, reason, headers, method, path, redact)
    return parsed


def envelope_data(envelope: dict[str, Any], what: str) -> Any:
    """The envelope's `data`; `MalformedResponseError` (naming `what` was asked) when it has none."""
    data = envelope.get("data")
    if data is None:
        raise MalformedResponseError(f"{what}: response has no data ({str(envelope.get('message'))[:200]!r})")
    return data


def _carries_task(envelope: Mapping[str, Any]) -> bool:
    """Does the envelope's `data` hold a task (a `task_id`)? Then it IS that task, whatever the code."""
    data = envelope.get("data")
    if not isinstance(data, Mapping):
        return False
    task_id = data.get("task_id")
    return isinstance(task_id, (str, int)) and not isinstance(task_id, bool) and task_id != ""


def task_envelope(raw: bytes) -> dict[str, Any] | None:
    """The envelope of an error-status answer when it carries a task, else None."""
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) and _carries_task(parsed) else None


def warn_task_with_error(
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


_EXPIRED = "the result at {url} is gone ({status}): results are kept about 3 days after the task finished"


def download_error(status: int, headers: Mapping[str, str], url: str) -> APIError:
    """The error for a result host's answer `status` (not 2xx). Its body is not read: storage
    pages say nothing the status does not. The URL is shown without its query (a signature)."""
    where = short_url(url)
    if status in (404, 410):
        return ResultExpiredError(_EXPIRED.format(url=where, status=status), status=status, url=where)
    if status >= 500:
        return ServerError(f"storage answered {status}", status=status, url=where)
    message = f"storage refused the download: HTTP {status}"
    if status == 429:
        return RateLimitError(message, retry_after=_retry_after(headers), status=status, url=where)
    return APIError(message, status=status, url=where)


def short_url(url: str) -> str:
    """`url` without query or fragment, at most 120 characters: safe and short enough for a message."""
    parsed = urllib.parse.urlsplit(url)
    text = f"{parsed.scheme}://{parsed.netloc}{parsed.path}"
    return text if len(text) <= 120 else text[:117] + "..."
