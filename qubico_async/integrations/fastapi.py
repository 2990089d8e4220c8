"""FastAPI/Starlette kit: one `QubicoClient` per app, a webhook route, and cancel-on-disconnect.

```python
from fastapi import FastAPI, Request
from qubico_async import FaceSwap, WebhookConfig
from qubico_async.integrations.fastapi import QubicoClientDep, cancel_on_disconnect, qubico_lifespan, webhook_router

app = FastAPI(lifespan=qubico_lifespan(webhook_secret=SECRET))   # + any QubicoClient(...) keyword
app.include_router(webhook_router())                             # POST /qubico/webhook

@app.post("/swap")
async def swap(request: Request, client: QubicoClientDep) -> dict[str, str | None]:
    task = await client.submit(FaceSwap(...), webhook=WebhookConfig(f"{PUBLIC_URL}/qubico/webhook", SECRET))
    done = await cancel_on_disconnect(request, client.wait(task, via="webhook"))
    return {"image_url": done.result_url}
```

Needs the `fastapi` extra (`pip install "qubico_async[fastapi]"`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse
from starlette.applications import Starlette

from ..client import QubicoClient
from ..webhooks import MAX_BODY_BYTES, WebhookHub, answer_delivery

__all__ = [
    "DEFAULT_PATH",
    "STATE_ATTR",
    "ClientDisconnected",
    "QubicoClientDep",
    "QubicoLifespan",
    "WebhookHubDep",
    "cancel_on_disconnect",
    "get_client",
    "get_hub",
    "qubico_lifespan",
    "webhook_router",
]

DEFAULT_PATH = "/qubico/webhook"
STATE_ATTR = "qubico"
"""The client lives at `app.state.qubico` while the app runs."""


T = TypeVar("T")

_NOT_INSTALLED = (
    "no QubicoClient on app.state.qubico: create the app with "
    "FastAPI(lifespan=qubico_lifespan(webhook_secret=...)) "
    "(or enter `qubico_lifespan(...)(app)` inside your own lifespan)"
)


class QubicoLifespan:
    """A FastAPI/Starlette `lifespan=`: opens one `QubicoClient` (with a `WebhookHub(webhook_secret)`
    attached) at startup, keeps it on `app.state.qubico`, and closes it at shutdown.

    `client_kwargs` go to `QubicoClient` (`api_key`, `base_url`, `poll`, `retry`, ...). An empty
    secret fails at startup. With `redis_url` (the `redis` extra), every worker of the app shares
    webhook results, the account's concurrency limit, 429 pauses and uploads through Redis
    (`RedisCoordination(redis_url)`; pass `coordination=` instead for its options). To combine
    it with a lifespan of your own::

        @asynccontextmanager
        async def lifespan(app):
            async with qubico_lifespan(webhook_secret=SECRET)(app):
                yield
    """

    def __init__(self, *, webhook_secret: str, redis_url: str | None = None, **client_kwargs: Any) -> None:
        if "webhooks" in client_kwargs:
            raise TypeError("qubico_lifespan() makes the WebhookHub from webhook_secret; do not pass webhooks=")
        if redis_url is not None and client_kwargs.get("coordination") is not None:
            raise TypeError("pass either redis_url= or coordination=, not both")
        self._secret = webhook_secret
        self._redis_url = redis_url
        self._client_kwargs = client_kwargs

    def __repr__(self) -> str:
        return f"<QubicoLifespan client_kwargs={sorted(self._client_kwargs)}>"  # never the secret or key

    @asynccontextmanager
    async def __call__(self, app: Starlette) -> AsyncIterator[None]:
        state = app.state
        if getattr(state, STATE_ATTR, None) is not None:
            raise RuntimeError("app.state.qubico is already set: install qubico_lifespan() once per app")
        hub = WebhookHub(self._secret)  # ValueError for an empty secret: at startup, not at the first delivery
        kwargs = dict(self._client_kwargs)
        if self._redis_url is not None:
            from ..coordination import RedisCoordination

            kwargs["coordination"] = RedisCoordination(self._redis_url)
        async with QubicoClient(webhooks=hub, **kwargs) as client:
            setattr(state, STATE_ATTR, client)
            try:
                yield
            finally:
                delattr(state, STATE_ATTR)


def qubico_lifespan(*, webhook_secret: str, redis_url: str | None = None, **client_kwargs: Any) -> QubicoLifespan:
    """`FastAPI(lifespan=qubico_lifespan(webhook_secret=..., redis_url=..., **QubicoClient_kwargs))`;
    see `QubicoLifespan`."""
    return QubicoLifespan(webhook_secret=webhook_secret, redis_url=redis_url, **client_kwargs)


def get_client(conn: HTTPConnection) -> QubicoClient:
    """Dependency: the app's `QubicoClient` (HTTP and WebSocket endpoints alike).

    RuntimeError if `qubico_lifespan` is not installed.
    """
    client = getattr(conn.app.state, STATE_ATTR, None)
    if not isinstance(client, QubicoClient):
        raise RuntimeError(_NOT_INSTALLED)
    return client


def get_hub(conn: HTTPConnection) -> WebhookHub:
    """Dependency: the app's `WebhookHub` (`hub.latest(task_id)`, `hub.waiting`)."""
    hub = get_client(conn).webhooks
    if hub is None:
        raise RuntimeError(_NOT_INSTALLED)
    return hub


QubicoClientDep = Annotated[QubicoClient, Depends(get_client)]
"""`client: QubicoClientDep` in an endpoint's parameters."""
WebhookHubDep = Annotated[WebhookHub, Depends(get_hub)]


@asynccontextmanager
async def _require_lifespan(app: Starlette) -> AsyncIterator[None]:
    # Runs inside the app's own lifespan (FastAPI versions that merge an included router's lifespan
    # into the app's), so a missing qubico_lifespan fails the startup, not the first delivery.
    if not isinstance(getattr(app.state, STATE_ATTR, None), QubicoClient):
        raise RuntimeError("webhook_router() is mounted but " + _NOT_INSTALLED)
    yield


def webhook_router(
    path: str = DEFAULT_PATH, *, max_body: int = MAX_BODY_BYTES, include_in_schema: bool = False
) -> APIRouter:
    """An `APIRouter` with `POST path` feeding deliveries to the app's `WebhookHub`.

    413 for a body over `max_body` bytes (never read further), 401 for a missing or wrong
    `x-webhook-secret` (checked before parsing), 400 for a body that is not a delivery, 200
    `{"ok": true}` otherwise, duplicates included. Never a 500. Needs `qubico_lifespan`.
    """
    if max_body < 1:
        raise ValueError(f"max_body must be at least 1, got {max_body}")
    router = APIRouter(lifespan=_require_lifespan)

    @router.post(path, include_in_schema=include_in_schema, response_model=None)
    async def qubico_webhook(request: Request) -> JSONResponse:
        hub = get_hub(request)
        status, payload = answer_delivery(hub, request.headers, await _read_capped(request, max_body))
        return JSONResponse(payload, status_code=status)

    return router


class ClientDisconnected(HTTPException):
    """Raised by `cancel_on_disconnect` when the client went away; FastAPI answers it with a 499
    that nobody receives (no traceback in the logs)."""

    def __init__(self) -> None:
        super().__init__(status_code=499, detail="client closed the request")


async def cancel_on_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` (e.g. `client.wait(task, via="webhook")`) unless the client disconnects
    first: then it is cancelled at once and `ClientDisconnected` is raised.

    ASGI servers do not cancel a handler whose client went away; without this a long wait would
    run to its deadline for nobody. Call it after the request body has been read (FastAPI has
    done so for `UploadFile`/`Form`/body parameters).
    """
    scope = anyio.CancelScope()
    result: list[T] = []
    error: Exception | None = None

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # unread body chunks: nobody needs them any more
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        with scope:
            try:
                result.append(await awaitable)
            except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
                error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    if not result:
        raise ClientDisconnected
    return result[0]


async def _read_capped(request: Request, cap: int) -> bytes | None:
    """The raw body, or None when it is over `cap` bytes (reading stops there)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)
