"""A face-swap web service on FastAPI: webhook first, polling as the fallback.

    export QUBICO_API_KEY=...  QUBICO_WEBHOOK_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    export PUBLIC_URL=https://swap.example.com      # where PiAPI can reach this app
    uvicorn examples.fastapi_app:app

    curl -F target=@target.jpg -F face=@face.png $PUBLIC_URL/swap          # waits, returns the result URL
    curl -F target=@target.jpg -F face=@face.png $PUBLIC_URL/swap/async    # 202 {"task_id": ...} at once
    curl $PUBLIC_URL/swap/<task_id>                                         # its current status

Several workers (`uvicorn --workers 4`, gunicorn, replicas): set QUBICO_REDIS_URL=redis://host:6379/0
(the `redis` extra) and every worker shares webhook results, the account's limit, 429 pauses and uploads.

Offline: `python -m qubico_async emulator --port 8787`, then QUBICO_BASE_URL=http://127.0.0.1:8787
QUBICO_API_KEY=emu-key PUBLIC_URL=http://127.0.0.1:8000 (the emulator only calls loopback).
Needs the `fastapi` extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import JSONResponse

from qubico_async import (
    FaceSwap,
    InvalidInputError,
    NotFoundError,
    QubicoError,
    Task,
    TaskFailedError,
    WaitTimeoutError,
    WebhookConfig,
)
from qubico_async.client import DEFAULT_BASE_URL
from qubico_async.integrations.fastapi import (
    QubicoClientDep,
    WebhookHubDep,
    cancel_on_disconnect,
    qubico_lifespan,
    webhook_router,
)

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # the service's limit; the SDK says so precisely when it is exceeded
WEBHOOK_PATH = "/qubico/webhook"


@dataclass(frozen=True)
class Settings:
    webhook_secret: str = field(repr=False)
    public_url: str = "http://127.0.0.1:8000"
    api_key: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    redis_url: str | None = field(default=None, repr=False)  # may hold a password

    @classmethod
    def from_env(cls) -> Settings:
        """Read from the environment; a missing secret fails at startup, not at import."""
        return cls(
            webhook_secret=os.environ.get("QUBICO_WEBHOOK_SECRET", ""),
            public_url=os.environ.get("PUBLIC_URL", cls.public_url),
            api_key=os.environ.get("QUBICO_API_KEY") or None,
            base_url=os.environ.get("QUBICO_BASE_URL", DEFAULT_BASE_URL),
            redis_url=os.environ.get("QUBICO_REDIS_URL") or None,
        )


def task_json(task: Task) -> dict[str, str | None]:
    error = (task.error.message or task.error.raw_message or None) if task.error is not None else None
    return {"task_id": task.task_id, "status": task.status.value, "image_url": task.result_url, "error": error}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    hook = WebhookConfig(settings.public_url.rstrip("/") + WEBHOOK_PATH, settings.webhook_secret)
    app = FastAPI(
        title="face swap",
        lifespan=qubico_lifespan(
            webhook_secret=settings.webhook_secret,
            api_key=settings.api_key,
            base_url=settings.base_url,
            redis_url=settings.redis_url,
        ),
    )
    app.include_router(webhook_router(WEBHOOK_PATH))

    async def face_swap(target: UploadFile, face: UploadFile) -> FaceSwap:
        # Read at most one byte over the limit: a bigger file is refused without holding it all.
        return FaceSwap(await target.read(MAX_IMAGE_BYTES + 1), await face.read(MAX_IMAGE_BYTES + 1))

    @app.post("/swap")
    async def swap(
        request: Request, target: UploadFile, face: UploadFile, client: QubicoClientDep
    ) -> dict[str, str | None]:
        """Submit, then wait for the webhook (slow polling as the fallback); the result URL."""
        task = await client.submit(await face_swap(target, face), webhook=hook)
        done = await cancel_on_disconnect(request, client.wait(task, via="webhook"))
        if not done.status.is_success:
            raise TaskFailedError(done)
        return task_json(done)

    @app.post("/swap/async", status_code=202)
    async def swap_async(target: UploadFile, face: UploadFile, client: QubicoClientDep) -> dict[str, str]:
        """Submit and answer at once; the webhook lands in the hub, `GET /swap/{task_id}` reads it."""
        task = await client.submit(await face_swap(target, face), webhook=hook)
        return {"task_id": task.task_id}

    @app.get("/swap/{task_id}")
    async def swap_status(task_id: str, client: QubicoClientDep, hub: WebhookHubDep) -> dict[str, str | None]:
        """A finished task straight from the webhook hub; anything else asks the service."""
        task = hub.latest(task_id)
        if task is None or not task.status.is_terminal:
            task = await client.get_task(task_id)
        return task_json(task)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(QubicoError)
    async def qubico_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, InvalidInputError):  # not an image, too big, ... (nothing was paid)
            return error(400, str(exc))
        if isinstance(exc, NotFoundError):
            return error(404, "no such task")
        if isinstance(exc, TaskFailedError):
            return JSONResponse(task_json(exc.task), status_code=502)
        if isinstance(exc, WaitTimeoutError):  # the task goes on: GET /swap/{task_id} later
            return JSONResponse({"task_id": exc.task_id, "status": "running"}, status_code=504)
        return error(502, f"upstream error: {exc}")  # SDK messages never contain the key or secret

    return app


app = create_app()
