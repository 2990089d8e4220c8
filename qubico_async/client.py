"""QubicoClient: owns the HTTP session and composes transport, requests, media and polling."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import re
import time
import urllib.parse
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import attrs

from . import _download
from ._batch_job import BatchServices
from ._batch_runner import DEFAULT_CONCURRENCY, BatchRun
from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_UPLOAD_URL,
    Timeouts,
    env_api_key,
    env_base_url,
    env_upload_url,
    is_http_url,
)
from ._convert import structure_account, structure_task
from ._download import ExtensionPolicy
from ._http import HTTPTransport
from ._naming import safe_filename
from ._payloads import MediaSender, coerce_media, encode_json
from ._rate import Pacing
from ._transport import Secret, Transport
from ._uploads import UploadPolicy
from .batch import JobLike, Outcome, Prices, Progress
from .coordination import Coordination, Lease, LocalCoordination
from .errors import (
    ClientClosedError,
    InsufficientCreditError,
    InvalidInputError,
    MalformedResponseError,
    MissingApiKeyError,
    QubicoError,
    SubmissionUncertainError,
    TaskFailedError,
)
from .media import ImageInput, VideoInput
from .models import AccountInfo, Task, WebhookConfig
from .polling import PollPolicy
from .requests import FaceSwap, MultiFaceSwap, Prepared, RequestLike, VideoFaceSwap, coerce_request
from .retry import RetryPolicy
from .waiting import wait_for_task
from .webhooks import WebhookHub

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_UPLOAD_URL", "QubicoClient"]

DEFAULT_MAX_CONNECTIONS = 64
WEBHOOK_FALLBACK_POLL = PollPolicy(initial=10.0, factor=1.5, max_interval=60.0, jitter=0.2)
"""With webhooks the poll is only a safety net for lost deliveries: slow and cheap."""
logger = logging.getLogger("qubico_async")

_State = Literal["new", "open", "closed"]


class QubicoClient:
    """An async client for PiAPI's Qubico face-swap API. Use one per application::

        async with QubicoClient() as client:
            task = await client.face_swap("target.jpg", "face.png")

    `transport` replaces the HTTP layer of API calls and downloads (e.g. `MockTransport(handler)`
    in unit tests); retries, redaction and the create's safety rules still apply on top of it.
    `base_url` and `upload_url` default to `QUBICO_BASE_URL` / `QUBICO_UPLOAD_URL` when set (an
    explicit argument wins), else the real service.
    The API key comes from `api_key`, else `QUBICO_API_KEY`, else `PIAPI_API_KEY`; a missing key
    is reported at the first request. `pacing` bounds how API requests slow down after a 429
    (default `Pacing()`; `Pacing.off()` in tests that script 429 storms). Inside `async with`,
    the client owns an `aiohttp.ClientSession` limited to `max_connections`. A `session` you pass in is borrowed:
    the client uses it (no `async with` needed) and never closes it.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        upload_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        timeout: float | Timeouts | None = None,
        webhooks: WebhookHub | None = None,
        transport: HTTPTransport | None = None,
        coordination: Coordination | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        if max_connections < 1:
            raise InvalidInputError("max_connections must be at least 1 (aiohttp's 0 means unlimited)")
        key = api_key if api_key is not None else env_api_key()
        self._api_key = Secret(key) if key else None
        if base_url is None:
            base_url = env_base_url()
        if upload_url is None:
            upload_url = env_upload_url()
        self.base_url = _check_base_url(base_url, "base_url")
        if upload_url is None and self.base_url == DEFAULT_BASE_URL:
            upload_url = DEFAULT_UPLOAD_URL
        # With a custom base_url (an emulator, a proxy) uploads go nowhere unless asked for.
        self.upload_url = _check_base_url(upload_url, "upload_url") if upload_url is not None else None
        self.max_connections = max_connections
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        if isinstance(timeout, Timeouts):
            timeouts = timeout
        else:
            timeouts = Timeouts(read=timeout or 60.0, total=max(120.0, 2 * (timeout or 60.0)))
        self.pacing = pacing or Pacing()
        """How API requests are paced after a 429 (its own bounds: `RetryPolicy.instant()` still paces)."""
        self._transport = Transport(
            api_key=self._api_key,
            retry=self.retry,
            timeouts=timeouts,
            pacing=self.pacing,
            http=transport,
            session=self._http,
        )
        self._borrowed = session
        self._session: aiohttp.ClientSession | None = session
        self._state: _State = "new"
        self._rng = random.Random()
        self.webhooks = webhooks
        if webhooks is not None:
            self._transport.add_secret(webhooks.secret)
        """The app's `WebhookHub`: lets `wait(via="webhook")` resolve from deliveries."""
        self._media = MediaSender(self._post_upload if self.upload_url is not None else None)
        # coordination hook (issue 14): one place wires the shared limit, hub, 429 pause and uploads.
        self.coordination: Coordination = coordination if coordination is not None else LocalCoordination()
        """Shares the account limit, webhook results, 429 pauses and uploads between processes."""
        self.coordination.bind(key)
        self._transport.limiter.shared = self.coordination
        self._media._cache.shared = self.coordination.upload_cache
        self._limit: int | None = None
        self._limit_lock = asyncio.Lock()
        self._leases: dict[str, tuple[Lease, asyncio.TimerHandle | None]] = {}
        if webhooks is not None:
            webhooks.coordinate(self.coordination)
            webhooks.on_terminal(self._seen_terminal)

    def __repr__(self) -> str:
        state = "closed" if self._state == "closed" else ("open" if self._session is not None else "new")
        key = "set" if self._api_key is not None else "missing"
        return f"<QubicoClient base_url={self.base_url!r} api_key={key} state={state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> QubicoClient:
        if self._state == "closed":
            raise ClientClosedError("this QubicoClient was closed; create a new one")
        if self._state == "open":
            raise ClientClosedError("this QubicoClient is already open; enter it only once")
        if self._borrowed is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
            self._session = aiohttp.ClientSession(connector=connector)
        self._state = "open"
        await self.coordination.start()  # coordination hook (issue 14)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned session (a borrowed one stays open). Further use raises `ClientClosedError`."""
        if self._state == "closed":
            return
        self._state = "closed"
        session, self._session = self._session, None
        for lease, timer in self._leases.values():  # coordination hook (issue 14)
            lease.release()
            if timer is not None:
                timer.cancel()
        self._leases.clear()
        try:
            await self.coordination.aclose()
        finally:
            if session is not None and self._borrowed is None:
                await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._state == "closed":
            raise ClientClosedError("this QubicoClient is closed")
        session = self._session
        if session is None:
            raise ClientClosedError("QubicoClient is not open: use `async with QubicoClient(...) as client:`")
        if session.closed:
            raise ClientClosedError("the aiohttp session used by this QubicoClient is closed")
        return session

    def _require_key(self) -> None:
        if self._api_key is None:
            raise MissingApiKeyError(
                "no API key: pass QubicoClient(api_key=...) or set QUBICO_API_KEY (or PIAPI_API_KEY)"
            )

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        self._http()  # open, not closed
        self._require_key()
        return await self._transport.request(method, self.base_url + path, **kwargs)

    # -- tasks -------------------------------------------------------------------------------

    async def submit(
        self,
        request: RequestLike,
        *,
        webhook: WebhookConfig | None = None,
        upload: UploadPolicy = "auto",
        resubmit_uncertain: bool = False,
    ) -> Task:
        """Create a task and return it as created (usually `pending`). Validates inputs first.

        `request` is a `FaceSwap`, `MultiFaceSwap`, `VideoFaceSwap`, `RawTask` or a unified-API
        dict. Local media is sent inline as base64 (`upload="never"`), through the File Upload
        API (`"always"`), or, with `"auto"`, uploaded when it is over 2 MB or was already sent by
        this client, and inlined otherwise (and whenever the plan does not allow uploads).
        If the request was sent but no answer came back, raises `SubmissionUncertainError`
        instead of risking a second paid task, unless `resubmit_uncertain=True`.
        """
        if webhook is not None:
            request = attrs.evolve(coerce_request(request), webhook=webhook)
        prepared = await self._prepare(request, upload)
        return await self._create(prepared, resubmit_uncertain=resubmit_uncertain)

    async def _prepare(self, request: RequestLike, upload: UploadPolicy) -> Prepared:
        """Check and load the media (each file read once), then build the wire payload."""
        self._http()
        self._require_key()
        return await self._media.prepare(request, upload)

    async def _acquire_slot(self) -> Lease:
        """coordination hook (issue 14): one account-wide slot (no-op without a shared coordination)."""
        if isinstance(self.coordination, LocalCoordination):
            return await self.coordination.acquire(1)
        async with self._limit_lock:  # the account's limit, asked once
            if self._limit is None:
                limit = getattr(self.coordination, "limit", None)
                if limit is None:
                    try:
                        info = await self.account_info()
                        limit = info.max_image_toolkit_concurrency or info.max_concurrent_task_count
                    except QubicoError:
                        limit = None
                self._limit = limit or DEFAULT_CONCURRENCY
        return await self.coordination.acquire(self._limit)

    def _hold(self, task: Task | None, lease: Lease, hold_for: float) -> None:
        """Keep `lease` until the task is seen terminal, at most `hold_for` seconds."""
        if task is None:  # uncertain: it may run; the slot is held for its deadline
            asyncio.get_running_loop().call_later(hold_for, lease.release)
            return
        if task.status.is_terminal:
            lease.release()
            return
        timer = asyncio.get_running_loop().call_later(hold_for, self._seen_terminal, task)
        self._leases[task.task_id] = (lease, timer)

    def _seen_terminal(self, task: Task) -> None:
        held = self._leases.pop(task.task_id, None)
        if held is not None:
            held[0].release()
            if held[1] is not None:
                held[1].cancel()

    async def _create(self, prepared: Prepared, resubmit_uncertain: bool = False, lease: Lease | None = None) -> Task:
        """The paid POST: sent once unless the failure proves no task was created.

        With a shared coordination, the POST holds an account-wide slot (`lease`, else one is
        taken here) until the task is seen terminal.
        """
        if lease is None:
            lease = await self._acquire_slot()
        hold_for = self.poll.timeout_for(None, model=prepared.request.model) or 3600.0
        try:
            task = await self._create_unleased(prepared, resubmit_uncertain)
        except (SubmissionUncertainError, TaskFailedError) as exc:
            self._hold(exc.task if isinstance(exc, TaskFailedError) else None, lease, hold_for)
            raise
        except BaseException:
            lease.release()
            raise
        self._hold(task, lease, hold_for)
        return task

    async def _create_unleased(self, prepared: Prepared, resubmit_uncertain: bool) -> Task:
        body = await encode_json(prepared.payload)
        sent_at = time.time()
        envelope = await self._request(
            "POST",
            "/api/v1/task",
            body=body,
            kind="create",
            fingerprint=prepared.identity,
            request=prepared.request,
            resubmit_uncertain=resubmit_uncertain,
        )
        try:
            task = structure_task(_data(envelope, "create task"))
        except MalformedResponseError as exc:
            # The service said yes but we cannot read the task: it probably exists and is paid for.
            raise SubmissionUncertainError(
                f"the task was probably created but its id is unreadable ({exc})",
                fingerprint=prepared.identity,
                sent_at=sent_at,
                request=prepared.request,
                cause=exc,
            ) from exc
        if task.status.is_terminal and not task.status.is_success:  # failed at birth: never resent
            raise InsufficientCreditError(task) if _is_credit_refusal(task) else TaskFailedError(task)
        return task

    async def get_task(self, task_id: str) -> Task:
        """The task's current state (one GET, retried on transient failures).

        `task_id` must be 1-200 characters of `A-Z a-z 0-9 _ -` (the service's ids are UUIDs):
        anything else raises `InvalidInputError` and sends nothing, so an id such as `..` can
        never turn into a request for another path.
        """
        path = "/api/v1/task/" + urllib.parse.quote(_check_task_id(task_id), safe="")
        task = structure_task(_data(await self._request("GET", path), "get task"))
        if task.status.is_terminal:
            self._seen_terminal(task)  # coordination hook (issue 14): the slot is free again
        return task

    async def wait(
        self,
        task: Task | str,
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        via: Literal["poll", "webhook"] = "poll",
    ) -> Task:
        """Wait until the task is terminal and return it (failed tasks are returned, not raised).

        `via="poll"` polls with backoff. `via="webhook"` returns as soon as the attached
        `WebhookHub` receives a terminal delivery, polling slowly (`poll`, default every 10-60 s)
        as the fallback for lost deliveries; whichever comes first wins. Raises
        `WaitTimeoutError` after `timeout` seconds (default: the poll policy's); the remote task
        is not cancelled. Cancelling the caller stops waiting at once and leaves nothing behind.
        """
        last = task if isinstance(task, Task) else None
        if last is not None and last.status.is_terminal:
            return last
        task_id = _check_task_id(task.task_id if isinstance(task, Task) else task)  # before any wait
        if via not in ("poll", "webhook"):
            raise InvalidInputError(f"via must be 'poll' or 'webhook', got {via!r}")
        policy = poll or (WEBHOOK_FALLBACK_POLL if via == "webhook" else self.poll)
        if last is None and timeout is None and via == "poll":
            last = await self.get_task(task_id)  # the first poll, early: a video gets the video deadline
            if last.status.is_terminal:
                if self.webhooks is not None:
                    self.webhooks.resolve(last)
                return last
        if timeout is None:
            timeout = (poll if poll is not None else self.poll).timeout_for(last)
        hub = self.webhooks
        if via == "webhook":
            if last is not None and last.config.webhook is None:
                logger.warning(
                    "task %s was created without a webhook: only the slow fallback poll will see it", task_id
                )
            if hub is None:
                raise InvalidInputError("wait(via='webhook') needs QubicoClient(webhooks=WebhookHub(secret))")
        intervals = policy.intervals(self._rng)
        waits = intervals if last is not None or via == "webhook" else itertools.chain([0.0], intervals)

        def resolve_terminal(task: Task, _: float) -> None:
            if hub is not None and task.status.is_terminal:
                hub.resolve(task)  # other waiters on this task learn it too

        return await wait_for_task(
            task_id,
            self.get_task,
            waits,
            timeout=timeout,
            last=last,
            hub=hub if via == "webhook" else None,
            on_seen=resolve_terminal,
        )

    async def run(
        self,
        request: RequestLike,
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        upload: UploadPolicy = "auto",
        resubmit_uncertain: bool = False,
    ) -> Task:
        """Submit and wait; raise `TaskFailedError` unless the task completed."""
        created = await self.submit(request, upload=upload, resubmit_uncertain=resubmit_uncertain)
        hooked = self.webhooks is not None and created.config.webhook is not None
        done = await self.wait(created, timeout=timeout, poll=poll, via="webhook" if hooked else "poll")
        if not done.status.is_success:
            raise TaskFailedError(done)
        return done

    async def face_swap(
        self,
        target: ImageInput,
        swap: ImageInput,
        *,
        webhook: WebhookConfig | None = None,
        service_mode: str | None = None,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        upload: UploadPolicy = "auto",
    ) -> Task:
        """Swap the largest face in `target` for the largest face in `swap`; wait for the result."""
        request = FaceSwap(target, swap, webhook=webhook, service_mode=service_mode)
        return await self.run(request, timeout=timeout, poll=poll, upload=upload)

    async def multi_face_swap(
        self,
        target: ImageInput,
        swap: ImageInput,
        swap_faces: Iterable[int],
        target_faces: Iterable[int],
        *,
        webhook: WebhookConfig | None = None,
        service_mode: str | None = None,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        upload: UploadPolicy = "auto",
    ) -> Task:
        """Put face `swap_faces[i]` of `swap` on face `target_faces[i]` of `target`; wait for it."""
        request = MultiFaceSwap(target, swap, swap_faces, target_faces, webhook=webhook, service_mode=service_mode)
        return await self.run(request, timeout=timeout, poll=poll, upload=upload)

    async def video_face_swap(
        self,
        target_video: VideoInput,
        swap: ImageInput,
        swap_faces: Iterable[int] = (),
        target_faces: Iterable[int] = (),
        *,
        webhook: WebhookConfig | None = None,
        service_mode: str | None = None,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        upload: UploadPolicy = "auto",
    ) -> Task:
        """Swap a face into every frame of an MP4; wait for the result (video deadline by default)."""
        request = VideoFaceSwap(
            target_video, swap, swap_faces, target_faces, webhook=webhook, service_mode=service_mode
        )
        return await self.run(request, timeout=timeout, poll=poll, upload=upload)

    async def account_info(self) -> AccountInfo:
        """Balance, plan and concurrency limit of the API key's account."""
        return structure_account(_data(await self._request("GET", "/account/info"), "account info"))

    @property
    def requests_sent(self) -> Mapping[str, int]:
        """Requests this client sent so far (every attempt), by kind: `create` (the paid POST),
        `read` (other API calls) and `download` (result files, from the storage host)."""
        return {str(kind): count for kind, count in self._transport.requests_sent.items()}

    def _requests_sent(self) -> Mapping[str, int]:
        return {
            "create": self._transport.requests_sent["create"],
            "other": self._transport.requests_sent["read"],
        }

    # -- batches -------------------------------------------------------------------------------

    def swap_many(
        self,
        jobs: Iterable[JobLike] | AsyncIterable[JobLike],
        *,
        concurrency: int | None = None,
        journal: str | os.PathLike[str] | None = None,
        budget_usd: float | None = None,
        ordered: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        upload: UploadPolicy = "auto",
        resubmit_uncertain: bool = False,
        prices: Prices | None = None,
        poll: PollPolicy | None = None,
    ) -> BatchRun:
        """Run many jobs; iterate the result for one `Outcome` per job, as each finishes::

            async with client.swap_many(jobs, concurrency=32, journal="run.sqlite", budget_usd=5) as batch:
                async for outcome in batch:
                    ...
            print(batch.report)

        `jobs` (`FaceSwap`/`MultiFaceSwap`/`VideoFaceSwap`/`RawTask`, or `Job(request, key=...)`)
        is consumed lazily. At most `concurrency` tasks are in flight (default: the account's
        `max_concurrent_task_count`, else 8). A failed job never stops the others; account
        errors and the budget stop submitting and the remaining jobs come out `skipped`. With a
        `journal`, a rerun skips finished jobs, polls submitted ones and never pays twice.
        """
        services = BatchServices(
            poll=self.poll,
            prepare=self._prepare,
            create=self._create,
            acquire_slot=self._acquire_slot,
            get_task=self.get_task,
            account_info=self.account_info,
            requests_sent=self._requests_sent,
            hub=self.webhooks,
        )
        return BatchRun(
            services,
            jobs,
            concurrency=concurrency,
            journal=os.fspath(journal) if journal is not None else None,
            budget_usd=budget_usd,
            ordered=ordered,
            on_progress=on_progress,
            upload=upload,
            resubmit_uncertain=resubmit_uncertain,
            prices=prices or Prices(),
            poll=poll,
        )

    # -- results -------------------------------------------------------------------------------

    async def download_bytes(
        self, task: Task | Outcome | str, *, max_bytes: int = _download.DEFAULT_MAX_BYTES
    ) -> bytes:
        """The result file's content (streamed, capped at `max_bytes`); `task` may be a batch `Outcome`."""
        url = _result_url(_outcome_task(task))
        self._http()  # open, not closed
        return await _download.fetch_bytes(self._transport, url, max_bytes=max_bytes)

    async def download(
        self,
        task: Task | Outcome | str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        max_bytes: int = _download.DEFAULT_MAX_BYTES,
        extension: ExtensionPolicy = "warn",
    ) -> Path:
        """Save the result to `dest` and return the path.

        `dest` is a folder when it exists as one or ends in `/` (created if missing); the file
        is then named after the task id (a batch `Outcome`: after its job's key, made file-name
        safe) with the extension its bytes show (JPEG, PNG, WebP, MP4). Otherwise `dest` is the
        file's path; when its extension disagrees with the bytes, `extension` says what happens:
        `"warn"` (default: a logged warning, the name is kept), `"fix"` (the right extension
        replaces it; the returned path says where it went) or `"strict"` (`DownloadError`,
        nothing written). Written to a temporary file beside it and renamed into place, so it
        never holds a partial file. An existing file is kept unless `overwrite`
        (`OutputExistsError`, also a `FileExistsError`); other local failures raise
        `DownloadError`. Results expire about 3 days after the task finished.
        """
        if isinstance(task, Outcome):
            name: str | None = safe_filename(task.key, fallback=f"job-{task.index}")
            task = _outcome_task(task)
        else:
            name = task.task_id if isinstance(task, Task) else None
        url = _result_url(task)
        raw = os.fspath(dest)
        as_folder = raw.endswith(("/", os.sep) + ((os.altsep,) if os.altsep else ()))
        self._http()  # open, not closed
        return await _download.fetch_to_file(
            self._transport,
            url,
            Path(raw),
            as_folder=as_folder,
            name_hint=name,
            overwrite=overwrite,
            max_bytes=max_bytes,
            extension=extension,
        )

    # -- media -------------------------------------------------------------------------------

    async def upload(self, source: ImageInput | VideoInput) -> str:
        """Upload local media with the File Upload API and return its URL (kept 24 h by the service).

        Checked like any input first. The same bytes are uploaded once per client; the URL is
        reused for 23 hours. Needs the Creator plan or higher (`InsufficientPlanError` otherwise).
        """
        media = coerce_media(source)
        if media.is_url:
            return media.url
        loaded = await media.load()
        return await self._media.upload(loaded, loaded.digest)

    async def _post_upload(self, body: bytes) -> dict[str, Any]:
        self._http()
        self._require_key()
        assert self.upload_url is not None
        # Uploads are free and idempotent enough: retried like reads.
        return await self._transport.request("POST", self.upload_url + "/api/ephemeral_resource", body=body)


_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _check_task_id(task_id: object) -> str:
    """`task_id` if it is safe to put in a URL path, else `InvalidInputError` (nothing is sent)."""
    if not isinstance(task_id, str) or _TASK_ID.fullmatch(task_id) is None:
        shown = repr(task_id)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise InvalidInputError(
            f"invalid task id {shown}: expected 1-200 characters of letters, digits, '_' and '-' "
            "(the service's ids are UUIDs)"
        )
    return task_id


def _check_base_url(url: str, what: str) -> str:
    if not is_http_url(url):
        raise InvalidInputError(f"{what} must be an http(s) URL, got {url!r}")
    return url.rstrip("/")


def _data(envelope: dict[str, Any], what: str) -> Any:
    data = envelope.get("data")
    if data is None:
        raise MalformedResponseError(f"{what}: response has no data ({str(envelope.get('message'))[:200]!r})")
    return data


_CREDIT_CAUSE = re.compile(r"credit|quota|balance", re.IGNORECASE)


def _is_credit_refusal(task: Task) -> bool:
    """A task failed at birth because the account cannot pay for it (piapi-api.md §18)."""
    err = task.error
    return err is not None and bool(_CREDIT_CAUSE.search(f"{err.message} {err.raw_message}"))


def _outcome_task(task: Task | Outcome | str) -> Task | str:
    """The task behind a batch `Outcome` (`InvalidInputError` when the job made none)."""
    if not isinstance(task, Outcome):
        return task
    if task.task is None:
        raise InvalidInputError(f"job {task.key!r} has no task to download (status: {task.status})")
    return task.task


def _result_url(task: Task | str) -> str:
    if isinstance(task, Task):
        url = task.result_url
        if url is None:
            raise InvalidInputError(f"task {task.task_id} has no result URL (status: {task.status.value})")
        return url
    return task
