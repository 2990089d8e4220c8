"""Fault injection knobs for the emulator: latency, random 5xx, rate limiting, stalls, drops, scripts,
the upload API's variants, and webhook delivery faults (`WebhookFaults`, as `Faults.webhooks`).

`Faults` is a mutable attrs class: tests flip its knobs while the emulator is running and the next
request sees the new value. Validators run on assignment too, so a bad value fails where it is set.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from attrs import define, field, frozen, validators

__all__ = ["Faults", "Route", "ScriptedResponse", "TokenBucket", "UploadUrlStyle", "WebhookFaults"]

Route = Literal["create", "get", "account", "upload", "result", "any"]
"""Which requests a scripted response answers. "any" matches every request to the task API (create,
get, account); not uploads (another host: script "upload") nor result downloads (script "result")."""

UploadUrlStyle = Literal["data", "top-level"]
"""Where a successful upload answer puts the URL: `data.url` (the docs) or a top-level `url`."""

_API_ROUTES = frozenset({"create", "get", "account"})
_ROUTES = frozenset({"create", "get", "account", "upload", "result", "any"})

_non_negative = validators.ge(0.0)
_non_negative_int = validators.ge(0)


def _probability(instance: object, attribute: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a probability must be between 0 and 1, got {value!r}")


def _positive_or_none(instance: object, attribute: object, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"rate_limit must be positive (requests per second) or None, got {value!r}")


def _url_style(instance: object, attribute: object, value: str) -> None:
    if value not in ("data", "top-level"):
        raise ValueError(f'upload_url_style must be "data" or "top-level", got {value!r}')


@define
class WebhookFaults:
    """Webhook delivery knobs (`Faults.webhooks`); changes apply to deliveries queued afterwards.

    - `retries`: re-sends of a delivery answered with a non-2xx status or a connection error.
    - `retry_delay`: seconds (real time) between those attempts.
    - `duplicate`: the next N deliveries are sent twice (same body, same timestamp).
    - `duplicate_rate`: probability that a delivery is sent twice (seeded by the emulator's `seed`).
    - `out_of_order`: while True, a new task's creation delivery is held back and sent only after its
      terminal delivery (the receiver sees `completed`/`failed` before `pending`).
    - `drop`: the next N deliveries are never sent (to prove a polling fallback).
    - `drop_rate`: probability that a delivery is never sent.
    """

    retries: int = field(default=3, validator=_non_negative_int)
    retry_delay: float = field(default=0.0, validator=_non_negative)
    duplicate: int = field(default=0, validator=_non_negative_int)
    duplicate_rate: float = field(default=0.0, validator=_probability)
    out_of_order: bool = False
    drop: int = field(default=0, validator=_non_negative_int)
    drop_rate: float = field(default=0.0, validator=_probability)


@frozen
class ScriptedResponse:
    """One raw HTTP response, sent exactly as given (no envelope is added)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(factory=dict)


@define
class _Script:
    route: Route
    response: ScriptedResponse
    remaining: int


def _default_content_type(body: bytes) -> str | None:
    if not body:
        return None
    stripped = body.lstrip()
    if stripped[:1] == b"<":
        return "text/html; charset=utf-8"
    try:
        json.loads(body)
    except ValueError:
        return "text/plain; charset=utf-8"
    return "application/json; charset=utf-8"


@define
class Faults:
    """Fault knobs. All of them may be changed while the emulator is running.

    - `latency`: seconds (real time) added before every API response.
    - `error_rate`: probability that an API request gets a random 500/502/503 envelope before it is
      handled (a create hit this way stores no task). Seeded by the emulator's `seed`.
    - `rate_limit`: requests per second accepted by the API (token bucket on the emulator clock, burst
      of one second's worth); over it the answer is a 429 envelope with `Retry-After`.
    - `retry_after`: the `Retry-After` value to send with those 429s instead of the computed one (whole
      seconds, at least 1); e.g. 0 for fast tests.
    - `create_then_stall`: the next N valid creates store the task, then hold the response for
      `stall_seconds` (real time), so the client's timeout fires after the task exists.
    - `create_then_drop`: the next N valid creates store the task, then close the connection without
      any response.
    - `envelope_code`: the envelope `code` on success responses (None mirrors the HTTP status; 0
      emulates the "code 0" variant).
    - `upload_plan_error`: the upload API answers 403 "Insufficient plan level" (a Free plan).
    - `upload_url_style`: "data" answers uploads with `data.url` (as documented); "top-level" with a
      top-level `url` (the variant one public client reads).
    - `webhooks`: webhook delivery faults, see `WebhookFaults`.
    - `script()`: queue raw responses that take precedence over everything else.

    `latency` and `error_rate` apply to uploads too; `rate_limit` does not (another host).
    """

    latency: float = field(default=0.0, validator=_non_negative)
    error_rate: float = field(default=0.0, validator=_probability)
    rate_limit: float | None = field(default=None, validator=_positive_or_none)
    retry_after: float | None = field(default=None, validator=validators.optional(_non_negative))
    create_then_stall: int = field(default=0, validator=_non_negative_int)
    create_then_drop: int = field(default=0, validator=_non_negative_int)
    stall_seconds: float = field(default=3600.0, validator=_non_negative)
    envelope_code: int | None = None
    upload_plan_error: bool = False
    upload_url_style: UploadUrlStyle = field(default="data", validator=_url_style)
    webhooks: WebhookFaults = field(factory=WebhookFaults)
    _scripts: list[_Script] = field(factory=list, init=False, repr=False, eq=False)

    def script(
        self,
        route: Route,
        status: int,
        body: str | bytes = b"",
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests to `route` with exactly this response.

        A `str` body is sent as UTF-8. Without a Content-Type header one is guessed from the body
        (JSON, HTML or plain text; none for an empty body). Scripts are consumed in the order they
        were added; they count in the emulator's stats like any other response.
        """
        if route not in _ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {sorted(_ROUTES)}")
        if not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status!r}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times!r}")
        raw = body.encode() if isinstance(body, str) else bytes(body)
        hdrs = dict(headers or {})
        if not any(k.lower() == "content-type" for k in hdrs):
            content_type = _default_content_type(raw)
            if content_type is not None:
                hdrs["Content-Type"] = content_type
        self._scripts.append(_Script(route, ScriptedResponse(status, raw, hdrs), times))

    @property
    def scripted(self) -> int:
        """How many scripted responses are still queued."""
        return sum(s.remaining for s in self._scripts)

    def clear_scripts(self) -> None:
        self._scripts.clear()

    def take_script(self, route: Route) -> ScriptedResponse | None:
        """Pop the first queued response that answers a request to `route` (used by the emulator)."""
        for i, entry in enumerate(self._scripts):
            if entry.route == route or (entry.route == "any" and route in _API_ROUTES):
                entry.remaining -= 1
                if entry.remaining <= 0:
                    del self._scripts[i]
                return entry.response
        return None

    def reset(self) -> None:
        """Turn every fault off and drop queued scripts."""
        self.latency = 0.0
        self.error_rate = 0.0
        self.rate_limit = None
        self.retry_after = None
        self.create_then_stall = 0
        self.create_then_drop = 0
        self.stall_seconds = 3600.0
        self.envelope_code = None
        self.upload_plan_error = False
        self.upload_url_style = "data"
        self.webhooks = WebhookFaults()
        self._scripts.clear()


@define
class TokenBucket:
    """Token bucket for `Faults.rate_limit`, driven by the emulator clock.

    Capacity is one second's worth of requests (at least one). Changing the rate refills the bucket.
    """

    _rate: float | None = None
    _tokens: float = 0.0
    _updated: float = 0.0

    def take(self, rate: float | None, now: float) -> float | None:
        """Take one token. None when the request may proceed, else the seconds until a token is due."""
        if rate is None:
            self._rate = None
            return None
        capacity = max(1.0, rate)
        if rate != self._rate:
            self._rate, self._tokens, self._updated = rate, capacity, now
        self._tokens = min(capacity, self._tokens + max(0.0, now - self._updated) * rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / rate


def retry_after_header(wait: float, override: float | None) -> str:
    """The `Retry-After` value: the override as given, else whole seconds rounded up, at least 1."""
    if override is not None:
        return str(int(override)) if float(override).is_integer() else f"{override:g}"
    return str(max(1, math.ceil(wait)))
