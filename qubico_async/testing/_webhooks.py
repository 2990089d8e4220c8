"""Webhook delivery, as PiAPI does it (docs §6): `POST {"timestamp": <unix s>, "data": <task>}`.

The emulator queues a delivery when a task with `config.webhook_config.endpoint` is created and when
it ends (`completed`/`failed`). Each delivery runs in a background asyncio task owned by the
`WebhookDispatcher`, over one aiohttp session; all are cancelled by `aclose()`. Only loopback
endpoints (127.0.0.0/8, ::1, localhost) are ever contacted: anything else is logged and skipped.

Per task, deliveries go out in the order they were queued (the terminal one waits until the creation
one is done, retries included), except with `WebhookFaults.out_of_order`, which holds the creation
delivery back until the terminal one has been sent. `retries`, `duplicate`, `drop` and their rates
are read from the live `WebhookFaults`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import anyio
from attrs import frozen

from ._faults import WebhookFaults
from ._state import Stats

__all__ = ["WebhookDelivery", "WebhookDispatcher", "is_loopback_url"]

logger = logging.getLogger("qubico_async.testing")

_POST_TIMEOUT = aiohttp.ClientTimeout(total=10.0)


class WebhookDelivery(NamedTuple):
    """One POST the emulator made: where, the HTTP status answered (None: connection error or
    timeout), and the task's status in the body, lowercased (the realistic wire may spell it
    `Completed`). Retries are separate records."""

    endpoint: str
    status_code: int | None
    status: str


@frozen
class _Job:
    endpoint: str
    secret: str
    task_id: str
    status: str
    body: bytes
    copies: int


def is_loopback_url(url: str) -> bool:
    """True for an http(s) URL whose host is on loopback (127.0.0.0/8, ::1 or localhost)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # a malformed port is a malformed URL
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookDispatcher:
    """Sends webhook deliveries in background tasks; see the module docstring."""

    def __init__(self, *, stats: Stats, faults: Callable[[], WebhookFaults], rng: random.Random) -> None:
        self._stats = stats
        self._faults = faults
        self._rng = rng
        self._session: aiohttp.ClientSession | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._tails: dict[str, asyncio.Event] = {}  # task id -> done-event of its last queued job
        self._held: dict[str, _Job] = {}  # task id -> creation delivery held back by out_of_order
        self._closed = False
        self.deliveries: list[WebhookDelivery] = []

    @property
    def pending(self) -> int:
        """Deliveries queued or in flight (held ones not included)."""
        return len(self._jobs)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=_POST_TIMEOUT)

    async def aclose(self) -> None:
        """Cancel every queued and running delivery, then close the session. Idempotent."""
        self._closed = True
        self._held.clear()
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
        self._jobs.clear()
        self._tails.clear()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def drain(self) -> None:
        """Wait until every queued delivery has been sent or given up on."""
        while self._jobs:
            await asyncio.wait(list(self._jobs))

    def deliver(self, endpoint: str, secret: str, payload: dict[str, Any], *, terminal: bool) -> None:
        """Queue one delivery of `payload` (a `{"timestamp", "data"}` dict) to `endpoint`."""
        if self._closed or self._session is None:
            return
        data = payload["data"]
        task_id, status = str(data.get("task_id", "")), str(data.get("status", "")).lower()
        if not is_loopback_url(endpoint):
            self._stats.webhooks_refused += 1
            logger.warning(
                "emulator: webhook for task %s not delivered: endpoint host %r is not on loopback "
                "(the emulator only calls 127.0.0.1/localhost)",
                task_id,
                _host(endpoint),
            )
            return
        held = self._held.pop(task_id, None) if terminal else None
        faults = self._faults()
        job = self._job(endpoint, secret, task_id, status, payload, faults)
        if job is not None and not terminal and faults.out_of_order:
            self._held[task_id] = job
            return
        for queued in (job, held):
            if queued is not None:
                self._start(queued)

    def _job(
        self,
        endpoint: str,
        secret: str,
        task_id: str,
        status: str,
        payload: dict[str, Any],
        faults: WebhookFaults,
    ) -> _Job | None:
        """The job for a delivery, or None when the drop knobs eat it."""
        if faults.drop > 0 or (faults.drop_rate > 0 and self._rng.random() < faults.drop_rate):
            faults.drop = max(0, faults.drop - 1)
            self._stats.webhooks_dropped += 1
            logger.debug("emulator: webhook for task %s (%s) dropped by the drop fault", task_id, status)
            return None
        copies = 1
        if faults.duplicate > 0 or (faults.duplicate_rate > 0 and self._rng.random() < faults.duplicate_rate):
            faults.duplicate = max(0, faults.duplicate - 1)
            copies = 2
        body = json.dumps(payload).encode()
        return _Job(endpoint, secret, task_id, status, body, copies)

    def _start(self, job: _Job) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a task changed outside the event loop: nothing can be sent from here
            logger.debug("emulator: webhook for task %s skipped: no running event loop", job.task_id)
            return
        previous = self._tails.get(job.task_id)
        done = asyncio.Event()
        self._tails[job.task_id] = done
        task = loop.create_task(self._run(job, previous, done))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _run(self, job: _Job, previous: asyncio.Event | None, done: asyncio.Event) -> None:
        try:
            if previous is not None:
                await previous.wait()
            for _ in range(job.copies):
                await self._send(job)
        finally:
            done.set()
            if self._tails.get(job.task_id) is done:
                del self._tails[job.task_id]

    async def _send(self, job: _Job) -> None:
        """One copy of a delivery, with the retries."""
        headers = {"Content-Type": "application/json"}
        if job.secret:
            headers["x-webhook-secret"] = job.secret
        attempt = 0
        while True:
            status_code = await self._post(job.endpoint, job.body, headers)
            self._stats.webhook_attempts += 1
            self.deliveries.append(WebhookDelivery(job.endpoint, status_code, job.status))
            if status_code is not None and 200 <= status_code < 300:
                self._stats.webhooks_sent += 1
                return
            faults = self._faults()
            if attempt >= faults.retries:
                break
            attempt += 1
            await anyio.sleep(faults.retry_delay)
        self._stats.webhooks_failed += 1
        logger.warning(
            "emulator: webhook for task %s (%s) failed after %d attempt(s): last answer %s",
            job.task_id,
            job.status,
            attempt + 1,
            "no response" if status_code is None else f"HTTP {status_code}",
        )

    async def _post(self, endpoint: str, body: bytes, headers: dict[str, str]) -> int | None:
        session = self._session
        if session is None:
            return None
        try:
            async with session.post(endpoint, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""
