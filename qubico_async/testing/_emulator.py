"""The emulator: an aiohttp web server on 127.0.0.1 that speaks PiAPI's task API.

Routes (paths as on api.piapi.ai): `POST /api/v1/task`, `GET /api/v1/task/{task_id}`,
`GET /account/info` (all need `x-api-key`), and key-less file downloads `GET /results/{name}` (task
outputs) and `GET /files/{name}` (inputs hosted with `Emulator.host_file`). Every API answer is the
`{"code", "data", "message"}` envelope unless a scripted response says otherwise.

Request pipeline for an API route: count -> take a scripted response (if one is queued) -> latency
-> the scripted response, else: random 5xx (`error_rate`) -> auth -> rate limit -> handler.
"""

from __future__ import annotations

import collections
import hmac
import random
import types
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio
from aiohttp import web

from .._mediainfo import probe_image, probe_video
from ..errors import InvalidInputError
from ._faults import Faults, Route, ScriptedResponse, TokenBucket, retry_after_header
from ._processing import Processor, TaskRunner, own_path
from ._state import (
    DEFAULT_FAILURE_MESSAGE,
    Clock,
    FileStore,
    Stats,
    StoredTask,
    TaskStore,
    new_task_id,
    task_to_wire,
)
from ._validation import ValidationError, validate_create

__all__ = ["Emulator", "TaskTransform"]

TaskTransform = Callable[[dict[str, Any]], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_MAX_BODY: Final = 64 * 1024 * 1024
"""Largest request body accepted: two 10 MiB files in base64 fit with room to spare."""
_SERVER_ERRORS: Final = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class Emulator:
    """In-process fake of PiAPI's Qubico face-swap API, for tests, demos and benchmarks.

    ```python
    async with Emulator(api_key="emu-key") as emu:
        client = QubicoClient(emu.api_key, base_url=emu.base_url)
        ...
        emu.advance(5)          # move the emulator clock instead of sleeping
    ```

    Tasks stay `pending` for `pending_seconds`, `processing` for `processing_seconds`, then end
    `completed` (result = `processor`'s output; by default the target unchanged) or `failed` (drawn
    at create with probability `failure_rate`, seeded by `seed`, or forced with `fail_next()`).
    """

    def __init__(
        self,
        *,
        api_key: str = "emu-key",
        host: str = "127.0.0.1",
        port: int = 0,
        pending_seconds: float = 0.0,
        processing_seconds: float = 0.0,
        failure_rate: float = 0.0,
        failure_message: str = DEFAULT_FAILURE_MESSAGE,
        seed: int = 0,
        faults: Faults | None = None,
        processor: Processor | None = None,
        max_workers: int = 4,
        task_transform: TaskTransform | None = None,
        max_concurrent_task_count: int = 10,
        balance_usd: float = 100.0,
    ) -> None:
        if pending_seconds < 0 or processing_seconds < 0:
            raise ValueError("pending_seconds and processing_seconds must not be negative")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate!r}")
        self._api_key = api_key
        self._host = host
        self._port = port
        self.pending_seconds = pending_seconds
        self.processing_seconds = processing_seconds
        self.failure_rate = failure_rate
        self.failure_message = failure_message
        self.faults = faults if faults is not None else Faults()
        self.task_transform = task_transform
        """Applied to every task dict just before it is sent by create and get."""
        self.max_concurrent_task_count = max_concurrent_task_count
        self.balance_usd = balance_usd

        self._failure_rng = random.Random(seed)
        self._fault_rng = random.Random(f"faults:{seed}")
        self._forced_failures: collections.deque[str] = collections.deque()
        self._clock = Clock()
        self._stats = Stats()
        self._store = TaskStore(self._stats)
        self._store.on_change = self._task_changed
        self._files = FileStore()
        self._bucket = TokenBucket()
        self._tasks = TaskRunner(
            store=self._store,
            files=self._files,
            clock=self._clock,
            processor=processor,
            max_workers=max_workers,
            is_own_url=self._own_path,
        )
        self._runner: web.AppRunner | None = None
        self._closing: anyio.Event | None = None
        self._closed = False
        self._dropped: set[int] = set()  # ids of requests answered by closing the connection

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving. The port is chosen by the OS unless one was given."""
        if self._runner is not None or self._closed:
            raise RuntimeError("an Emulator can be started only once")
        self._closing = anyio.Event()
        runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def aclose(self) -> None:
        """Stop serving: stalled requests are dropped, processor jobs cancelled. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        await self._tasks.aclose()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- public surface --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`, once started."""
        if self._runner is None:
            raise RuntimeError("the emulator is not running: use `async with Emulator()` or `await start()`")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def port(self) -> int:
        return self._port

    @property
    def stats(self) -> Stats:
        """Live counters (`tasks_by_status` is brought up to date with the clock on access)."""
        self._tasks.refresh_all()
        return self._stats

    @property
    def tasks(self) -> Mapping[str, StoredTask]:
        """Read-only view of the stored tasks by id, statuses up to date with the clock."""
        self._tasks.refresh_all()
        return types.MappingProxyType(self._store.view())

    def now(self) -> float:
        """The emulator clock (monotonic seconds plus everything passed to `advance`)."""
        return self._clock.now()

    def advance(self, seconds: float) -> None:
        """Move the emulator clock forward, so tasks progress without anyone sleeping."""
        self._clock.advance(seconds)

    def fail_next(self, n: int = 1, message: str = DEFAULT_FAILURE_MESSAGE) -> None:
        """Make the next `n` created tasks end `failed` with `message`."""
        if n < 0:
            raise ValueError(f"n must not be negative, got {n!r}")
        self._forced_failures.extend([message] * n)

    def host_file(self, data: bytes, name: str | None = None, content_type: str | None = None) -> str:
        """Serve `data` at `/files/<name>` and return its URL, for URL inputs in tests."""
        guessed_ext, guessed_type = _sniff(data)
        name = name or f"{uuid.uuid4().hex}.{guessed_ext}"
        if "/" in name:
            raise ValueError(f"file name must not contain '/': {name!r}")
        self._files.put(f"/files/{name}", data, content_type or guessed_type)
        return f"{self.base_url}/files/{name}"

    async def drain(self) -> None:
        """Wait for processor jobs already running (a plugged-in processor runs in threads)."""
        await self._tasks.drain()

    # -- server ----------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=_MAX_BODY)
        app.router.add_post("/api/v1/task", self._api("create", self._create))
        app.router.add_get("/api/v1/task/{task_id}", self._api("get", self._get))
        app.router.add_get("/account/info", self._api("account", self._account))
        app.router.add_get("/results/{name}", self._result)
        app.router.add_get("/files/{name}", self._file)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # unknown route, wrong method, body too large, ...
            response = self._envelope(exc.status, None, exc.reason)
            for name in ("Allow",):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
        if id(request) in self._dropped:
            self._dropped.discard(id(request))
        else:
            self._stats.count_response(response.status)
        return response

    def _api(self, route: Route, handler: Handler) -> Handler:
        async def api_request(request: web.Request) -> web.StreamResponse:
            if route == "create":
                self._stats.create_requests += 1
            elif route == "get":
                self._stats.gets += 1
            else:
                self._stats.account_requests += 1
            faults = self.faults
            scripted = faults.take_script(route)
            if faults.latency > 0 and await self._pause(faults.latency):
                return self._drop(request)
            if scripted is not None:
                return _raw(scripted)
            if faults.error_rate > 0 and self._fault_rng.random() < faults.error_rate:
                status = self._fault_rng.choice(list(_SERVER_ERRORS))
                return self._error(status, _SERVER_ERRORS[status])
            if not self._authorized(request):
                return self._error(401, "Invalid API key")
            wait = self._bucket.take(faults.rate_limit, self._clock.now())
            if wait is not None:
                response = self._error(429, "Too many requests: rate limit exceeded")
                response.headers["Retry-After"] = retry_after_header(wait, faults.retry_after)
                return response
            return await handler(request)

        return api_request

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("x-api-key", "")
        return hmac.compare_digest(given.encode(), self._api_key.encode())

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            req = await validate_create(body)
        except ValidationError as exc:
            return self._error(400, exc.message)
        task = StoredTask(
            task_id=new_task_id(),
            model=req.model,
            task_type=req.task_type,
            input=req.input,
            config=req.config,
            created_at=self._clock.now(),
            pending_seconds=self.pending_seconds,
            processing_seconds=self.processing_seconds,
            media=req.media,
            swap_faces_index=req.swap_faces_index,
            target_faces_index=req.target_faces_index,
            frames=req.frames,
        )
        roll = self._failure_rng.random()  # drawn for every task, so fail_next keeps the sequence
        if self._forced_failures:
            task.forced_failure = self._forced_failures.popleft()
        elif roll < self.failure_rate:
            task.forced_failure = self.failure_message
        self._store.add(task)
        response = self._task_response(task)  # as created: pending, even when due at once

        faults = self.faults
        if faults.create_then_drop > 0:
            faults.create_then_drop -= 1
            return self._drop(request)
        if faults.create_then_stall > 0:
            faults.create_then_stall -= 1
            if await self._pause(faults.stall_seconds):
                return self._drop(request)
        return response

    async def _get(self, request: web.Request) -> web.StreamResponse:
        task = self._store.get(request.match_info["task_id"])
        if task is None:
            return self._error(404, "task not found")
        self._tasks.refresh(task)
        return self._task_response(task)

    async def _account(self, request: web.Request) -> web.StreamResponse:
        self._tasks.refresh_all()
        spent = round(sum(t.cost_usd for t in self._store if t.status == "completed"), 6)
        remaining = round(max(0.0, self.balance_usd - spent), 6)
        data = {
            "equivalent_in_usd": remaining,
            "id": 1,
            "name": "emulator",
            "plan": "creator",
            "is_enable": True,
            "max_concurrent_task_count": self.max_concurrent_task_count,
            "wallet": {"point_remain": remaining, "mj_remain": 0},
            "credit_pack_info": {
                "total_credits": self.balance_usd,
                "used_credits": spent,
                "available_credits": remaining,
            },
        }
        return self._envelope(200, data, "success")

    async def _result(self, request: web.Request) -> web.StreamResponse:
        self._stats.downloads += 1
        scripted = self.faults.take_script("result")
        if scripted is not None:
            return _raw(scripted)
        return self._serve_file(f"/results/{request.match_info['name']}")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        return self._serve_file(f"/files/{request.match_info['name']}")

    def _serve_file(self, path: str) -> web.StreamResponse:
        stored = self._files.get(path)
        if stored is None:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(body=stored.data, content_type=stored.content_type)

    # -- helpers ---------------------------------------------------------------------------------

    def _task_response(self, task: StoredTask) -> web.Response:
        data = task_to_wire(task, self.base_url, self._clock)
        if self.task_transform is not None:
            data = self.task_transform(data)
        return self._envelope(200, data, "success")

    def _envelope(self, status: int, data: Any, message: str) -> web.Response:
        code = status
        if 200 <= status < 300 and self.faults.envelope_code is not None:
            code = self.faults.envelope_code
        return web.json_response({"code": code, "data": data, "message": message}, status=status)

    def _error(self, status: int, message: str) -> web.Response:
        return self._envelope(status, None, message)

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds` of real time; True if the emulator started closing meanwhile."""
        assert self._closing is not None
        with anyio.move_on_after(seconds):
            await self._closing.wait()
        return self._closing.is_set()

    def _drop(self, request: web.Request) -> web.StreamResponse:
        """Close the connection without answering (the client sees a disconnect)."""
        self._dropped.add(id(request))
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never reaches the wire, never counted

    def _own_path(self, url: str) -> str | None:
        return own_path(url, (self._port,), frozenset({self._host.lower()}))

    def _task_changed(self, task: StoredTask) -> None:
        """Called on every status change of a task (its creation included).

        Seam for webhook delivery: when it lands, a task whose `config.webhook_config.endpoint` is
        set gets `{"timestamp": <unix s>, "data": <task_to_wire(task)>}` POSTed there with the
        `x-webhook-secret` header. Statuses advance lazily (on requests), so delivery will also need
        a ticker that refreshes tasks as the clock passes their deadlines.
        """


def _raw(scripted: ScriptedResponse) -> web.Response:
    return web.Response(status=scripted.status, body=scripted.body, headers=scripted.headers)


def _sniff(data: bytes) -> tuple[str, str]:
    """(extension, content type) of a file to host."""
    try:
        fmt = probe_image(data).format
    except InvalidInputError:
        pass
    else:
        return ("jpg" if fmt == "jpeg" else fmt), f"image/{fmt}"
    try:
        probe_video(data)
    except InvalidInputError:
        return "bin", "application/octet-stream"
    return "mp4", "video/mp4"
