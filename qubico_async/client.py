"""QubicoClient: owns the HTTP session and composes transport, requests, media and polling."""

from __future__ import annotations

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
from ._batch_runner import BatchRun, BatchServices
from ._convert import structure_account, structure_task
from ._payloads import MediaSender, coerce_media, encode_json
from ._transport import Secret, Timeouts, Transport
from ._uploads import UploadPolicy
from .batch import JobLike, Prices, Progress
from .errors import (
    ClientClosedError,
    InsufficientCreditError,
    InvalidInputError,
    MalformedResponseError,
    MissingApiKeyError,
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

DEFAULT_BASE_URL = "https://api.piapi.ai"
DEFAULT_UPLOAD_URL = "https://upload.theapi.app"
DEFAULT_MAX_CONNECTIONS = 64
WEBHOOK_FALLBACK_POLL = PollPolicy(initial=10.0, factor=1.5, max_interval=60.0, jitter=0.2)
"""With webhooks the poll is only a safety net for lost deliveries: slow and cheap."""
logger = logging.getLogger("qubico_async")
_ENV_KEYS = ("QUBICO_API_KEY", "PIAPI_API_KEY")

_State = Literal["new", "open", "closed"]


class QubicoClient:
    """An async client for PiAPI's Qubico face-swap API. Use one per application::

        async with QubicoClient() as client:
            task = await client.face_swap("target.jpg", "face.png")

    `base_url` and `upload_url` default to `QUBICO_BASE_URL` / `QUBICO_UPLOAD_URL` when set (an
    explicit argument wins), else the real service.
    The API key comes from `api_key`, else `QUBICO_API_KEY`, else `PIAPI_API_KEY`; a missing key
    is reported at the first request. Inside `async with`, the client owns an
    `aiohttp.ClientSession` limited to `max_connections`. A `session` you pass in is borrowed:
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
    ) -> None:
        if max_connections < 1:
            raise InvalidInputError("max_connections must be at least 1 (aiohttp's 0 means unlimited)")
        key = api_key if api_key is not None else next(filter(None, map(os.environ.get, _ENV_KEYS)), None)
        self._api_key = Secret(key) if key else None
        if base_url is None:
            base_url = os.environ.get("QUBICO_BASE_URL") or DEFAULT_BASE_URL
        if upload_url is None:
            upload_url = os.environ.get("QUBICO_UPLOAD_URL") or None
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
        self._transport = Transport(api_key=self._api_key, retry=self.retry, timeouts=timeouts)
        self._borrowed = session
        self._session: aiohttp.ClientSession | None = session
        self._state: _State = "new"
        self._rng = random.Random()
        self.webhooks = webhooks
        if webhooks is not None:
            self._transport.add_secret(webhooks.secret)
        """The app's `WebhookHub`: lets `wait(via="webhook")` resolve from deliveries."""
        self._media = MediaSender(self._post_upload if self.upload_url is not None else None)

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
        session = self._http()
        self._require_key()
        return await self._transport.request(session, method, self.base_url + path, **kwargs)

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

    async def _create(self, prepared: Prepared, resubmit_uncertain: bool = False) -> Task:
        """The paid POST: sent once unless the failure proves no task was created."""
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
        return structure_task(_data(await self._request("GET", path), "get task"))

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

    async def download_bytes(self, task: Task | str, *, max_bytes: int = _download.DEFAULT_MAX_BYTES) -> bytes:
        """The result file's content (streamed, capped at `max_bytes`)."""
        url = _result_url(task)
        return await _download.fetch_bytes(
            self._http(), url, retry=self.retry, max_bytes=max_bytes, timeouts=self._transport.timeouts
        )

    async def download(
        self,
        task: Task | str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        max_bytes: int = _download.DEFAULT_MAX_BYTES,
    ) -> Path:
        """Save the result to `dest` and return the path.

        `dest` is a folder when it exists as one or ends in `/` (created if missing); the file
        is then named after the task. Otherwise it is the file's path. Written to a temporary
        file beside it and renamed into place, so it never holds a partial file. An existing
        file is kept unless `overwrite` (`OutputExistsError`, also a `FileExistsError`); other
        local failures raise `DownloadError`. Results expire about 3 days after the task finished.
        """
        url = _result_url(task)
        name = task.task_id if isinstance(task, Task) else None
        raw = os.fspath(dest)
        as_folder = raw.endswith(("/", os.sep) + ((os.altsep,) if os.altsep else ()))
        return await _download.fetch_to_file(
            self._http(),
            url,
            Path(raw),
            as_folder=as_folder,
            name_hint=name,
            overwrite=overwrite,
            retry=self.retry,
            max_bytes=max_bytes,
            timeouts=self._transport.timeouts,
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
        session = self._http()
        self._require_key()
        assert self.upload_url is not None
        # Uploads are free and idempotent enough: retried like reads.
        return await self._transport.request(session, "POST", self.upload_url + "/api/ephemeral_resource", body=body)


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
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
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


def _result_url(task: Task | str) -> str:
    if isinstance(task, Task):
        url = task.result_url
        if url is None:
            raise InvalidInputError(f"task {task.task_id} has no result URL (status: {task.status.value})")
        return url
    return task
