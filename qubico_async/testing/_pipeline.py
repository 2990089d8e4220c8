"""The emulator's HTTP request pipeline, shared by its task site and its upload site.

For an API route: count -> take a scripted response (if one is queued) -> latency -> the scripted
response, else: random 5xx (`error_rate`) -> auth -> rate limit (not for uploads) -> handler. The
middleware turns aiohttp's own errors (unknown route, wrong method, body too large) into envelopes and
counts every response sent by HTTP status. Answers are `{"code", "data", "message"}` envelopes.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
from aiohttp import web

from ._faults import Faults, Route, ScriptedResponse, TokenBucket, retry_after_header
from ._state import Clock, Stats

__all__ = ["Handler", "Pipeline", "raw"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SERVER_ERRORS: Final = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class Pipeline:
    """Fault injection, auth, rate limiting, envelopes and connection drops for API routes."""

    def __init__(self, *, api_key: str, stats: Stats, clock: Clock, faults: Callable[[], Faults], seed: int) -> None:
        self._api_key = api_key
        self._stats = stats
        self._clock = clock
        self._faults = faults
        self._rng = random.Random(f"faults:{seed}")
        self._bucket = TokenBucket()
        self._closing: anyio.Event | None = None
        self._dropped: set[int] = set()  # ids of requests answered by closing the connection

    def open(self) -> None:
        """Call on the event loop before serving."""
        self._closing = anyio.Event()

    def close(self) -> None:
        """Wake every pause: stalled requests are dropped."""
        if self._closing is not None:
            self._closing.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # unknown route, wrong method, body too large, ...
            response = self.envelope(exc.status, None, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        if id(request) in self._dropped:
            self._dropped.discard(id(request))
        else:
            self._stats.count_response(response.status)
        return response

    def api(self, route: Route, handler: Handler) -> Handler:
        """Wrap `handler` in the API pipeline for `route`."""

        async def api_request(request: web.Request) -> web.StreamResponse:
            self._count(route)
            faults = self._faults()
            scripted = faults.take_script(route)
            if faults.latency > 0 and await self.pause(faults.latency):
                return self.drop(request)
            if scripted is not None:
                return raw(scripted)
            if faults.error_rate > 0 and self._rng.random() < faults.error_rate:
                status = self._rng.choice(list(_SERVER_ERRORS))
                return self.error(status, _SERVER_ERRORS[status])
            if not self._authorized(request):
                return self.error(401, "Invalid API key")
            wait = None if route == "upload" else self._bucket.take(faults.rate_limit, self._clock.now())
            if wait is not None:
                response = self.error(429, "Too many requests: rate limit exceeded")
                response.headers["Retry-After"] = retry_after_header(wait, faults.retry_after)
                return response
            return await handler(request)

        return api_request

    def _count(self, route: Route) -> None:
        if route == "create":
            self._stats.create_requests += 1
        elif route == "get":
            self._stats.gets += 1
        elif route == "upload":
            self._stats.upload_requests += 1
        else:
            self._stats.account_requests += 1

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("x-api-key", "")
        return hmac.compare_digest(given.encode(), self._api_key.encode())

    def envelope(self, status: int, data: Any, message: str, *, code: int | None = None) -> web.Response:
        """`{"code", "data", "message"}` with HTTP `status`; `code` defaults to `self.code(status)`."""
        body = {"code": self.code(status) if code is None else code, "data": data, "message": message}
        return web.json_response(body, status=status)

    def code(self, status: int) -> int:
        """The envelope `code` for an HTTP status (`Faults.envelope_code` on success, if set)."""
        override = self._faults().envelope_code
        return override if 200 <= status < 300 and override is not None else status

    def error(self, status: int, message: str) -> web.Response:
        return self.envelope(status, None, message)

    async def pause(self, seconds: float) -> bool:
        """Sleep `seconds` of real time; True if the emulator started closing meanwhile."""
        assert self._closing is not None
        with anyio.move_on_after(seconds):
            await self._closing.wait()
        return self._closing.is_set()

    def drop(self, request: web.Request) -> web.StreamResponse:
        """Close the connection without answering (the client sees a disconnect)."""
        self._dropped.add(id(request))
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never reaches the wire, never counted


def raw(scripted: ScriptedResponse) -> web.Response:
    return web.Response(status=scripted.status, body=scripted.body, headers=scripted.headers)
