"""QubicoClient, a thin facade: it holds the settings and composes the modules that do the work.

Session life (`_session`), the request path (`_transport`), media and uploads (`_payloads`,
`_uploads`), the paid create and its account slot (`_submission`), waiting (`waiting`), batches
(`_batch_runner`) and downloads (`_download`). None of them imports the client.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import attrs

from ._batch_job import BatchServices
from ._batch_runner import BatchRun
from ._config import DEFAULT_BASE_URL, DEFAULT_UPLOAD_URL, Timeouts, env_api_key, resolve_timeouts, resolve_urls
from ._convert import structure_account, structure_task
from ._download import DEFAULT_MAX_BYTES, ExtensionPolicy, download_result, download_result_bytes
from ._http import HTTPTransport
from ._naming import check_task_id
from ._payloads import MediaSender
from ._rate import Pacing
from ._responses import envelope_data
from ._session import SessionLife
from ._submission import Submitter
from ._transport import Secret, Transport
from ._uploads import UploadPolicy, upload_poster
from .batch import JobLike, Outcome, Prices, Progress
from .coordination import Coordination, LocalCoordination
from .errors import MissingApiKeyError, TaskFailedError
from .media import ImageInput, VideoInput
from .models import AccountInfo, Task, WebhookConfig
from .polling import PollPolicy
from .requests import FaceSwap, MultiFaceSwap, Prepared, RequestLike, VideoFaceSwap, coerce_request
from .retry import RetryPolicy
from .waiting import wait_task
from .webhooks import WebhookHub

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_UPLOAD_URL", "QubicoClient"]

DEFAULT_MAX_CONNECTIONS = 64


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
    the client owns an `aiohttp.ClientSession` limited to `max_connections`. A `session` you
    pass in is borrowed: the client uses it (no `async with` needed) and never closes it.
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
        self._life = SessionLife(session, max_connections)
        key = api_key if api_key is not None else env_api_key()
        self._api_key = Secret(key) if key else None
        self.base_url, self.upload_url = resolve_urls(base_url, upload_url)
        self.max_connections = max_connections
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        self.pacing = pacing or Pacing()
        """How API requests are paced after a 429 (its own bounds: `RetryPolicy.instant()` still paces)."""
        self.coordination: Coordination = coordination if coordination is not None else LocalCoordination()
        """Shares the account limit, webhook results, 429 pauses and uploads between processes."""
        self.coordination.bind(key)
        self._transport = Transport(
            api_key=self._api_key,
            retry=self.retry,
            timeouts=resolve_timeouts(timeout),
            pacing=self.pacing,
            http=transport,
            session=self._http,
            coordination=self.coordination,
        )
        self.webhooks = webhooks
        """The app's `WebhookHub`: lets `wait(via="webhook")` resolve from deliveries."""
        poster = upload_poster(self._transport, self.upload_url, self._ready) if self.upload_url is not None else None
        self._media = MediaSender(poster, shared=self.coordination.upload_cache)
        self._submitter = Submitter(
            request=self._request,
            coordination=self.coordination,
            account_info=self.account_info,
            poll=lambda: self.poll,
        )
        if webhooks is not None:
            self._transport.add_secret(webhooks.secret)
            webhooks.coordinate(self.coordination)
            webhooks.on_terminal(self._submitter.seen_terminal)

    def __repr__(self) -> str:
        key = "set" if self._api_key is not None else "missing"
        return f"<QubicoClient base_url={self.base_url!r} api_key={key} state={self._life.describe()}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> QubicoClient:
        self._life.open()
        await self.coordination.start()  # coordination hook (issue 14)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned session (a borrowed one stays open). Further use raises `ClientClosedError`."""
        if self._life.state == "closed":
            return
        owned = self._life.end()
        self._submitter.release_all()  # coordination hook (issue 14)
        try:
            await self.coordination.aclose()
        finally:
            if owned is not None:
                await owned.close()

    def _http(self) -> aiohttp.ClientSession:
        """The session, if the client is open (else `ClientClosedError`)."""
        return self._life.get()

    def _ready(self) -> None:
        """Open, not closed, and keyed: what every API request needs (else a typed error)."""
        self._http()
        if self._api_key is None:
            raise MissingApiKeyError(
                "no API key: pass QubicoClient(api_key=...) or set QUBICO_API_KEY (or PIAPI_API_KEY)"
            )

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        self._ready()
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
        return await self._submitter.create(prepared, resubmit_uncertain=resubmit_uncertain)

    async def _prepare(self, request: RequestLike, upload: UploadPolicy) -> Prepared:
        """Check and load the media (each file read once), then build the wire payload."""
        self._ready()
        return await self._media.prepare(request, upload)

    async def get_task(self, task_id: str) -> Task:
        """The task's current state (one GET, retried on transient failures).

        `task_id` must be 1-200 characters of `A-Z a-z 0-9 _ -` (the service's ids are UUIDs):
        anything else raises `InvalidInputError` and sends nothing, so an id such as `..` can
        never turn into a request for another path.
        """
        path = "/api/v1/task/" + urllib.parse.quote(check_task_id(task_id), safe="")
        task = structure_task(envelope_data(await self._request("GET", path), "get task"))
        if task.status.is_terminal:
            self._submitter.seen_terminal(task)  # coordination hook (issue 14): the slot is free again
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
        return await wait_task(
            task, self.get_task, default_poll=self.poll, poll=poll, timeout=timeout, via=via, hub=self.webhooks
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
        return structure_account(envelope_data(await self._request("GET", "/account/info"), "account info"))

    @property
    def requests_sent(self) -> Mapping[str, int]:
        """Requests this client sent so far (every attempt), by kind: `create` (the paid POST),
        `read` (other API calls) and `download` (result files, from the storage host)."""
        return {str(kind): count for kind, count in self._transport.requests_sent.items()}

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
            create=self._submitter.create,
            acquire_slot=self._submitter.acquire_slot,
            get_task=self.get_task,
            account_info=self.account_info,
            requests_sent=lambda: {"create": self.requests_sent["create"], "other": self.requests_sent["read"]},
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

    async def download_bytes(self, task: Task | Outcome | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """The result file's content (streamed, capped at `max_bytes`); `task` may be a batch `Outcome`."""
        return await download_result_bytes(self._transport, task, ready=self._http, max_bytes=max_bytes)

    async def download(
        self,
        task: Task | Outcome | str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
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
        `DownloadError`. Results expire about 3 days after the task finished. Retried like a
        GET; the storage host never sees the API key.
        """
        return await download_result(
            self._transport, task, dest, ready=self._http, overwrite=overwrite, max_bytes=max_bytes, extension=extension
        )

    # -- media -------------------------------------------------------------------------------

    async def upload(self, source: ImageInput | VideoInput) -> str:
        """Upload local media with the File Upload API and return its URL (kept 24 h by the service).

        Checked like any input first. The same bytes are uploaded once per client; the URL is
        reused for 23 hours. Needs the Creator plan or higher (`InsufficientPlanError` otherwise).
        """
        return await self._media.upload_source(source)
