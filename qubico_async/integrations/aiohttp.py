"""Receive PiAPI webhooks in an aiohttp app::

    from aiohttp import web
    from qubico_async import QubicoClient
    from qubico_async.webhooks import WebhookHub
    from qubico_async.integrations.aiohttp import webhook_route

    hub = WebhookHub(secret)
    app = web.Application()
    app.add_routes([webhook_route(hub)])                  # POST /qubico/webhook
    ...
    async with QubicoClient(webhooks=hub) as client:      # wait(task, via="webhook") resolves from it

The endpoint refuses a body over `max_body` bytes with 413 (never reading more than that), checks
`x-webhook-secret` before parsing anything (401 if wrong or missing), answers 400 to a body that
is not a delivery, and 200 `{"ok": true}` to a delivery, a duplicate included. Never a 500: the
sender would only retry it. Neither the secret nor the body is logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..webhooks import MAX_BODY_BYTES, WebhookHub, answer_delivery

__all__ = ["DEFAULT_PATH", "webhook_handler", "webhook_route"]

DEFAULT_PATH = "/qubico/webhook"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def webhook_handler(hub: WebhookHub, *, max_body: int = MAX_BODY_BYTES) -> Handler:
    """An aiohttp handler that feeds deliveries to `hub`; mount it on a POST route."""
    if max_body < 1:
        raise ValueError(f"max_body must be at least 1, got {max_body}")

    async def qubico_webhook(request: web.Request) -> web.StreamResponse:
        status, payload = answer_delivery(hub, request.headers, await _read_capped(request, max_body))
        return web.json_response(payload, status=status)

    return qubico_webhook


def webhook_route(hub: WebhookHub, path: str = DEFAULT_PATH, *, max_body: int = MAX_BODY_BYTES) -> web.RouteDef:
    """`POST path` -> `webhook_handler(hub)`, for `app.add_routes([...])`."""
    return web.post(path, webhook_handler(hub, max_body=max_body))


async def _read_capped(request: web.Request, cap: int) -> bytes | None:
    """The raw body, or None when it is over `cap` bytes (at most `cap + 1` bytes are read)."""
    if request.content_length is not None and request.content_length > cap:
        return None
    body = bytearray()
    while True:
        chunk = await request.content.read(cap + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > cap:
            return None
