"""Receiving PiAPI webhooks: verify the secret, parse the body, drop duplicates, wake waiters.

PiAPI POSTs `{"timestamp": <unix seconds>, "data": <the Get Task data object>}` several times per
task (non-terminal updates too, plus retries), with the configured secret verbatim in the
`x-webhook-secret` header (no HMAC). One `WebhookHub` per app; in any framework's handler:

    try:
        hub.handle(request.headers, await request.body())
    except WebhookVerificationError:
        return Response(status_code=401)
    except MalformedWebhookError:
        return Response(status_code=400)   # never a 500: the sender would only retry it
    return Response(status_code=204)

and wherever a result is awaited: `await wait_first(hub, task_id, poll, interval, timeout)`, or
`with hub.subscribe(task_id) as sub: task = await sub.terminal()`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from ._convert import structure_task
from ._redaction import redact_tree
from ._webhook_hub import TaskRouter, TaskSubscription
from .errors import MalformedResponseError, MalformedWebhookError, WebhookVerificationError
from .models import Task
from .waiting import wait_first

logger = logging.getLogger("qubico_async")

__all__ = [
    "answer_delivery",
    "MAX_BODY_BYTES",
    "SECRET_HEADER",
    "Deduplicator",
    "MalformedWebhookError",
    "TaskSubscription",
    "WebhookEvent",
    "WebhookHub",
    "parse",
    "verify",
    "wait_first",
]

SECRET_HEADER = "x-webhook-secret"  # noqa: S105 (a header name, not a password)
#: Bodies above this are rejected unparsed (a task object is a few KiB).
MAX_BODY_BYTES = 1 << 20

_MAX_TIMESTAMP = 2**63 - 1
_DIGITS = re.compile(r"[ \t]*[0-9]{1,19}[ \t]*")  # ASCII only: `\d` and `\s` are Unicode-wide


@frozen
class WebhookEvent:
    """One delivery: when PiAPI sent it (unix seconds) and the task as it was then."""

    timestamp: int
    task: Task

    @property
    def key(self) -> tuple[str, str, int]:
        """`(task_id, status, timestamp)`: a delivery with the same key is a duplicate."""
        return (self.task.task_id, self.task.status.value.lower(), self.timestamp)


def _check_secret(secret: str) -> None:
    if not isinstance(secret, str) or not secret:
        raise ValueError(
            "the webhook secret is empty: that would accept forged deliveries from anyone. "
            "Set WebhookConfig(endpoint, secret=<a long random string>) on submit and pass that secret here"
        )


def _header(headers: Mapping[str, str], name: str) -> object:
    value: object = headers.get(name)  # case-insensitive for aiohttp and Starlette headers
    if value is None:
        for key, candidate in headers.items():  # a plain dict with other-case keys
            if isinstance(key, str) and key.lower() == name:
                return candidate
    return value


def verify(headers: Mapping[str, str], secret: str) -> None:
    """Check `x-webhook-secret` against `secret` in constant time; `WebhookVerificationError` if not equal.

    `headers` may be a dict (any key case), aiohttp's `CIMultiDictProxy` or Starlette's `Headers`.
    An empty `secret` raises `ValueError`: unauthenticated webhooks are refused, not allowed.
    """
    _check_secret(secret)
    value = _header(headers, SECRET_HEADER)
    if value is None:
        raise WebhookVerificationError(f"webhook delivery has no {SECRET_HEADER} header")
    given = b""
    if isinstance(value, (bytes, bytearray)):
        given = bytes(value)
    elif isinstance(value, str):
        with contextlib.suppress(UnicodeError):  # a lone surrogate cannot be the secret
            given = value.encode("utf-8")
    if not hmac.compare_digest(given, secret.encode("utf-8")):
        raise WebhookVerificationError(f"webhook delivery's {SECRET_HEADER} header does not match the secret")


def _timestamp(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    else:
        raise MalformedWebhookError(f"webhook `timestamp` must be integer unix seconds, got {type(value).__name__}")
    if not 0 <= number <= _MAX_TIMESTAMP:
        raise MalformedWebhookError("webhook `timestamp` is out of range")
    return number


def parse(
    body: bytes | bytearray | str | Mapping[str, Any],
    *,
    max_bytes: int = MAX_BODY_BYTES,
    redact: Sequence[str] = (),
) -> WebhookEvent:
    """A `WebhookEvent` from a delivery body (raw JSON or already decoded), or `MalformedWebhookError`.

    `data` accepts every task variant the client accepts (any status case, null logs/output, `{}` meta).
    Each secret in `redact` (e.g. the webhook secret the service echoes in `config`) is replaced in
    every string of the task.
    """
    if isinstance(body, Mapping):
        doc: object = body
    elif isinstance(body, (bytes, bytearray, str)):
        size = len(body) if not isinstance(body, str) else len(body.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise MalformedWebhookError(f"webhook body is {size} bytes, over the {max_bytes}-byte limit")
        try:
            doc = json.loads(body)
        except RecursionError:
            raise MalformedWebhookError("webhook body is nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, huge integers
            raise MalformedWebhookError(f"webhook body is not valid JSON: {exc}") from None
    else:
        raise MalformedWebhookError(f"webhook body must be bytes, str or a mapping, got {type(body).__name__}")

    if not isinstance(doc, Mapping):
        raise MalformedWebhookError(
            f"webhook body must be a JSON object with `timestamp` and `data`, got {type(doc).__name__}"
        )
    if "timestamp" not in doc:
        raise MalformedWebhookError("webhook body has no `timestamp`")
    if "data" not in doc:
        raise MalformedWebhookError("webhook body has no `data`")
    timestamp = _timestamp(doc["timestamp"])
    try:
        task = structure_task(redact_tree(doc["data"], redact))
    except RecursionError:
        raise MalformedWebhookError("webhook body is nested too deeply") from None
    except MalformedResponseError as exc:
        raise MalformedWebhookError(f"webhook `data` is not a task: {exc}") from None
    return WebhookEvent(timestamp=timestamp, task=task)


class Deduplicator:
    """Remembers the last `maxsize` event keys; `seen(event)` is True for a repeat delivery."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._maxsize = maxsize
        self._keys: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    def seen(self, event: WebhookEvent) -> bool:
        """True if an event with the same key was seen recently; records it either way."""
        key = event.key
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        self._keys[key] = None
        if len(self._keys) > self._maxsize:
            self._keys.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._keys)


class WebhookHub(TaskRouter):
    """Routes webhook events to code waiting on a task: O(1) per delivery, however many waiters.

    `handle()` verifies, parses and dedupes a delivery, then records it: a terminal status wakes
    that task's subscribers, and is remembered (LRU of `remember` tasks) for subscribers that
    arrive later. `resolve()` feeds states from polling into the same waiters. Call it from
    the event loop's thread.
    """

    def __init__(self, secret: str, *, dedupe_size: int = 10_000, remember: int = 10_000) -> None:
        _check_secret(secret)
        super().__init__(remember=remember)
        self._secret = secret
        self._dedupe = Deduplicator(dedupe_size)

    @property
    def secret(self) -> str:
        """The expected `x-webhook-secret` (the client uses it to redact messages; never logged)."""
        return self._secret

    def handle(self, headers: Mapping[str, str], body: bytes | bytearray | str) -> WebhookEvent | None:
        """Process one delivery. Returns the event, or None for a duplicate (answer 2xx either way).

        Raises `WebhookVerificationError` (answer 401) or `MalformedWebhookError` (answer 400).
        """
        verify(headers, self._secret)
        event = parse(body, redact=(self._secret,))
        if self._dedupe.seen(event):
            return None
        self.resolve(event.task)
        return event


def answer_delivery(hub: WebhookHub, headers: Mapping[str, str], body: bytes | None) -> tuple[int, dict[str, Any]]:
    """The HTTP answer to one delivery, for framework handlers: (status, JSON body).

    `body` is None when it was over the handler's size cap (413). Then 401 for a wrong secret
    (checked before parsing), 400 for a malformed body, 200 otherwise, duplicates included.
    Never a 500: the sender would only retry. Neither the secret nor the body is logged.
    """
    if body is None:
        logger.warning("webhook rejected (413): body too large")
        return 413, {"ok": False, "error": "body too large"}
    try:
        event = hub.handle(headers, body)  # verifies the secret before parsing
    except WebhookVerificationError as exc:
        logger.warning("webhook rejected (401): %s", exc)
        return 401, {"ok": False, "error": "unauthorized"}
    except MalformedWebhookError as exc:
        logger.warning("webhook rejected (400): %s", exc)
        return 400, {"ok": False, "error": "malformed delivery"}
    if event is None:
        logger.debug("webhook duplicate ignored")
    else:
        logger.debug("webhook for task %s: %s", event.task.task_id, event.task.status.value)
    return 200, {"ok": True}
