"""A hand-scripted PiAPI task service for tests: the exact answer shapes real clients recorded.

Not the emulator: it shares no code with the SDK or the emulator, and each test decides how it
answers (`on_create`, `on_get`). It counts what the SDK sent, so tests assert on requests, not time.
Shapes follow piapi-api.md §18: envelope `code` 200 or 0, status `Completed`/`completed`, Go's
zero time before start, all-empty `error` on success, usage in points, extra keys everywhere.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from ._helpers import serve

ZERO_TIME = "0001-01-01T00:00:00Z"
CREDIT_RAW = "failed to freeze account point quota: account point quota not enough; account credit not enough"
Answer = tuple[int, Any]
"""(HTTP status, JSON body)."""


def real_task(
    task_id: str,
    status: str = "pending",
    *,
    image_url: str | None = None,
    consume: int = 0,
    frozen: int = 0,
    unit: str = "point",
    error: dict[str, Any] | None = None,
    variant: int = 0,
) -> dict[str, Any]:
    """A task as the service sends it; `variant` picks among the shapes seen for the same state."""
    started = status.lower() not in ("pending", "staged")
    ended = status.lower() in ("completed", "failed")
    output: Any = None if variant % 2 else {}
    if image_url is not None:
        output = {"image_url": image_url, "image_base64": ""}
    return {
        "task_id": task_id,
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "status": status,
        "config": {"service_mode": "", "webhook_config": {"endpoint": "", "secret": ""}},
        "input": {} if variant % 2 else None,
        "output": output,
        "meta": {
            "created_at": "2026-12-01T10:00:00.123456789Z",
            "started_at": "2026-12-01T18:00:01+08:00" if started else ZERO_TIME,
            "ended_at": "2026-12-01T10:00:05.5Z" if ended else ZERO_TIME,
            "usage": {"type": unit, "frozen": frozen, "consume": consume},
            "is_using_private_pool": False,
            "model_version": "",
            "process_mode": "",
            "failover_triggered": False,
        },
        "detail": None,
        "logs": [] if variant % 2 else None,
        "error": error or {"code": 0, "raw_message": "", "message": "", "detail": None},
    }


def envelope(data: Any, code: int = 200, message: str = "success") -> dict[str, Any]:
    return {"code": code, "data": data, "message": message}


def credit_refusal(task_id: str) -> Answer:
    """The create answer when the account cannot pay: HTTP 200, envelope 500, a failed task."""
    task = real_task(
        task_id,
        "failed",
        frozen=500000,
        error={
            "code": 10000,
            "message": "failed to pre-process task runtime",
            "raw_message": CREDIT_RAW,
            "detail": None,
        },
    )
    return 200, envelope(task, code=500, message="failed to pre-process task runtime")


class ScriptedService:
    """Counts requests; answers creates and GETs through replaceable callables."""

    def __init__(self) -> None:
        self.creates = 0
        self.gets = 0
        self.polls: dict[str, int] = {}
        self.payloads: list[dict[str, Any]] = []
        self.account: dict[str, Any] = {"max_concurrent_task_count": 8}
        self.base_url = ""
        self._ids = itertools.count()
        self.on_create: Callable[[ScriptedService, dict[str, Any]], Answer] = ScriptedService.accept
        self.on_get: Callable[[ScriptedService, str, int], Answer] = ScriptedService.complete_on_second_poll

    def new_id(self) -> str:
        return str(uuid.UUID(int=next(self._ids) + 1))

    def result_url(self, task_id: str) -> str:
        return f"{self.base_url}/results/{task_id}.png"

    # default behaviours
    def accept(self, payload: dict[str, Any]) -> Answer:
        variant = self.creates
        return 200, envelope(real_task(self.new_id(), variant=variant), code=(200, 0)[variant % 2])

    def complete_on_second_poll(self, task_id: str, poll: int) -> Answer:
        variant = int(task_id[-4:], 16)
        if poll < 2:
            return 200, envelope(real_task(task_id, "processing", frozen=2000000, variant=variant))
        status = ("Completed", "completed")[variant % 2]
        done = real_task(task_id, status, image_url=self.result_url(task_id), consume=2000000, variant=variant)
        return 200, envelope(done, code=(200, 0)[variant % 2])

    # aiohttp handlers
    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.creates += 1
        payload = await request.json()
        self.payloads.append(payload)
        return _answer(self.on_create(self, payload))

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.gets += 1
        task_id = request.match_info["task_id"]
        self.polls[task_id] = self.polls.get(task_id, 0) + 1
        return _answer(self.on_get(self, task_id, self.polls[task_id]))

    async def _account(self, request: web.Request) -> web.StreamResponse:
        return _answer((200, envelope(self.account)))

    async def _result(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\x89PNG\r\n\x1a\nresult", content_type="image/png")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedService]:
        app = web.Application()
        app.router.add_post("/api/v1/task", self._create)
        app.router.add_get("/api/v1/task/{task_id}", self._get)
        app.router.add_get("/account/info", self._account)
        app.router.add_get("/results/{name}", self._result)
        async with serve(app) as base:
            self.base_url = base
            yield self


def _answer(answer: Answer) -> web.StreamResponse:
    status, body = answer
    text = body if isinstance(body, str) else json.dumps(body)
    return web.Response(status=status, text=text, content_type="application/json")
