"""What the emulator's two sites answer: their routes and request handlers.

Task site (`base_url`, paths as on api.piapi.ai): `POST /api/v1/task`, `GET /api/v1/task/{task_id}`,
`GET /account/info` (all need `x-api-key`), and key-less file downloads `GET /results/{name}` (task
outputs) and `GET /files/...` (inputs hosted with `Emulator.host_file`, and uploads). Upload site
(`upload_url`, as upload.theapi.app): `POST /api/ephemeral_resource` (needs `x-api-key`) and
`GET /files/...`. Every API answer is the `{"code", "data", "message"}` envelope unless a scripted
response says otherwise. API routes go through the request pipeline (`_pipeline`): scripts,
latency, random 5xx, auth, rate limit.

`Routes` is the part of `Emulator` that serves requests; the attributes it names are the
emulator's (set in `Emulator.__init__`).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web

from ._faults import Faults
from ._pipeline import Pipeline, raw
from ._processing import TaskRunner
from ._state import Clock, FileStore, Stats, StoredTask, TaskStore, account_info, new_task_id, points_available
from ._uploads import UPLOAD_PATH, store_upload, upload_answer, validate_upload
from ._validation import ValidationError, validate_create
from ._wire import PRE_PROCESS_FAILED, task_to_wire
from ._wireshape import WireName, shape_for

__all__ = ["OverLimit", "Routes", "TaskTransform"]

TaskTransform = Callable[[dict[str, Any]], dict[str, Any]]
OverLimit = Literal["queue", "reject"]
"""What a create beyond `max_concurrent_task_count` tasks in flight gets (None: not enforced)."""

_MAX_BODY: Final = 64 * 1024 * 1024
"""Largest request body accepted: two 10 MiB files in base64 fit with room to spare."""


class Routes:
    """The emulator's request handlers (mixed into `Emulator`, whose state they read and change)."""

    faults: Faults
    task_transform: TaskTransform | None
    wire: WireName
    pending_seconds: float
    processing_seconds: float
    failure_rate: float
    failure_message: str
    max_concurrent_task_count: int
    max_image_toolkit_concurrency: int | None
    balance_usd: float
    _seed: int
    _over_limit: OverLimit | None
    _failure_rng: random.Random
    _forced_failures: collections.deque[str]
    _clock: Clock
    _stats: Stats
    _store: TaskStore
    _files: FileStore
    _http: Pipeline
    _tasks: TaskRunner

    if TYPE_CHECKING:

        @property
        def base_url(self) -> str: ...

        @property
        def upload_url(self) -> str: ...

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._http.middleware], client_max_size=_MAX_BODY)
        app.router.add_post("/api/v1/task", self._http.api("create", self._create))
        app.router.add_get("/api/v1/task/{task_id}", self._http.api("get", self._get))
        app.router.add_get("/account/info", self._http.api("account", self._account))
        app.router.add_get("/results/{name}", self._result)
        app.router.add_get("/files/{path:.+}", self._file)
        return app

    def _build_upload_app(self) -> web.Application:
        app = web.Application(middlewares=[self._http.middleware], client_max_size=_MAX_BODY)
        app.router.add_post(UPLOAD_PATH, self._http.api("upload", self._upload))
        app.router.add_get("/files/{path:.+}", self._file)
        return app

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            req = await validate_create(body)
        except ValidationError as exc:
            return self._http.error(400, exc.message)
        self._tasks.settle()  # no await from here to the store: the slot count stays true
        if self._over_limit == "reject" and self._tasks.in_flight >= self.max_concurrent_task_count:
            self._stats.rejected_over_limit += 1
            limit = self.max_concurrent_task_count
            response = self._http.error(429, f"reached the account's concurrent task limit ({limit} tasks in flight)")
            response.headers["Retry-After"] = "1"
            return response
        task_id = new_task_id()
        task = StoredTask(
            task_id=task_id,
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
            shape=shape_for(self._seed, task_id, self.wire),
        )
        roll = self._failure_rng.random()  # drawn for every task, so fail_next keeps the sequence
        if task.cost_points > points_available(self._store, self.balance_usd):
            task.refused, task.status = True, "failed"
            task.error_message = PRE_PROCESS_FAILED
        elif self._forced_failures:
            task.forced_failure = self._forced_failures.popleft()
        elif roll < self.failure_rate:
            task.forced_failure = self.failure_message
        task.waiting = not task.refused and not self._tasks.has_free_slot()
        self._store.add(task)
        self._tasks.track(task)
        if task.refused:  # the service's credit refusal: HTTP 200, envelope code 500, the failed task
            response = self._task_response(task, code=500, message=PRE_PROCESS_FAILED)
        else:
            response = self._task_response(task)  # as created: pending, even when due at once

        faults = self.faults
        if faults.create_then_drop > 0:
            faults.create_then_drop -= 1
            return self._http.drop(request)
        if faults.create_then_stall > 0:
            faults.create_then_stall -= 1
            if await self._http.pause(faults.stall_seconds):
                return self._http.drop(request)
        return response

    async def _get(self, request: web.Request) -> web.StreamResponse:
        task = self._store.get(request.match_info["task_id"])
        if task is None:
            return self._http.error(404, "task not found")
        self._tasks.refresh(task)
        return self._task_response(task)

    async def _account(self, request: web.Request) -> web.StreamResponse:
        self._tasks.refresh_all()
        toolkit = self.max_image_toolkit_concurrency
        if toolkit is None and self.wire == "realistic":
            toolkit = self.max_concurrent_task_count
        data = account_info(self._store, self.balance_usd, self.max_concurrent_task_count, toolkit)
        return self._http.envelope(200, data, "success")

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        if self.faults.upload_plan_error:
            return self._http.error(403, "Insufficient plan level")
        try:
            upload = await validate_upload(await request.read())
        except ValidationError as exc:
            return self._http.error(400, exc.message)
        url = store_upload(self._files, upload, self.upload_url)
        self._stats.uploads += 1
        return web.json_response(upload_answer(url, self.faults.upload_url_style, self._http.code(200)))

    async def _result(self, request: web.Request) -> web.StreamResponse:
        self._stats.downloads += 1
        scripted = self.faults.take_script("result")
        if scripted is not None:
            return raw(scripted)
        return self._serve_file(f"/results/{request.match_info['name']}")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        return self._serve_file(f"/files/{request.match_info['path']}")

    def _serve_file(self, path: str) -> web.StreamResponse:
        stored = self._files.get(path)
        if stored is None:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(body=stored.data, content_type=stored.content_type)

    def _task_response(self, task: StoredTask, *, code: int | None = None, message: str = "success") -> web.Response:
        """HTTP 200 with the task; the envelope `code` is `code`, else `Faults.envelope_code` if
        set, else the task's wire shape's (200 or 0)."""
        data = task_to_wire(task, self.base_url, self._clock)
        if self.task_transform is not None:
            data = self.task_transform(data)
        if code is None:
            override = self.faults.envelope_code
            code = override if override is not None else task.shape.envelope_code
        return self._http.envelope(200, data, message, code=code)
