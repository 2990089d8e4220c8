"""The File Upload API, and a cache so the same bytes are uploaded once per client.

Uploaded files live 24 hours on the service; a cached URL is reused for `REUSE_SECONDS`
(23 h), leaving an hour of margin for tasks that wait in a queue before fetching it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread
from attrs import define, field

from ._media_content import CPU_LOCK, THREAD_THRESHOLD, LoadedMedia
from ._naming import safe_filename

if TYPE_CHECKING:
    from ._transport import Transport
    from .coordination import SharedUploads

__all__ = [
    "AUTO_UPLOAD_BYTES",
    "REUSE_SECONDS",
    "UploadCache",
    "UploadPolicy",
    "content_digest",
    "upload_body",
    "upload_poster",
]

UploadPolicy = Literal["auto", "always", "never"]

REUSE_SECONDS = 23 * 3600
AUTO_UPLOAD_BYTES = 2 * 1024 * 1024
"""With `upload="auto"`, local media larger than this is uploaded instead of inlined."""
MAX_FILE_NAME = 128


async def content_digest(data: bytes) -> str:
    """sha256 of the content, off the event loop when large."""
    if len(data) > THREAD_THRESHOLD:
        return await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


def _file_name(loaded: LoadedMedia) -> str:
    stem, _, ext = loaded.filename.rpartition(".")
    stem = safe_filename(stem, fallback="file")
    return stem[: MAX_FILE_NAME - len(ext) - 1] + "." + ext


async def upload_body(loaded: LoadedMedia) -> bytes:
    """The JSON body `{file_name, file_data}` (base64, built off the loop when large)."""

    def build() -> bytes:  # base64 needs no JSON escaping: written as is, not through json.dumps
        head = json.dumps({"file_name": _file_name(loaded)})[:-1].encode()
        with CPU_LOCK:
            return b"".join((head, b', "file_data": "', loaded.base64_bytes(), b'"}'))

    if loaded.size > THREAD_THRESHOLD:
        return await anyio.to_thread.run_sync(build)
    return build()


def upload_poster(
    transport: Transport, upload_url: str, ready: Callable[[], None]
) -> Callable[[bytes], Awaitable[dict[str, Any]]]:
    """Sends an upload body to the File Upload API at `upload_url`, after `ready()` (open, keyed).

    Uploads are free and idempotent enough: retried like reads.
    """

    async def post(body: bytes) -> dict[str, Any]:
        ready()
        return await transport.request("POST", upload_url + "/api/ephemeral_resource", body=body)

    return post


@define
class _Flight:
    done: anyio.Event = field(factory=anyio.Event)
    error: Exception | None = None


@define
class _Entry:
    url: str
    at: float


@define
class UploadCache:
    """Content hash -> uploaded URL. Concurrent uploads of the same bytes share one request.

    `seen()` remembers contents sent inline, so `upload="auto"` can upload what is reused.
    """

    reuse_seconds: float = REUSE_SECONDS
    max_entries: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _urls: OrderedDict[str, _Entry] = field(factory=OrderedDict, init=False)
    _flights: dict[str, _Flight] = field(factory=dict, init=False)
    _seen: OrderedDict[str, None] = field(factory=OrderedDict, init=False)
    uploads: int = field(default=0, init=False)
    shared: SharedUploads | None = field(default=None, init=False)
    """coordination hook (issue 14): the cache shared by every process of the account."""
    claim_wait: float = field(default=30.0, init=False)
    """How long to wait for another process that is uploading the same content."""

    def cached(self, digest: str) -> str | None:
        entry = self._urls.get(digest)
        if entry is None:
            return None
        if self.clock() - entry.at >= self.reuse_seconds:
            del self._urls[digest]
            return None
        return entry.url

    def seen(self, digest: str) -> bool:
        """True if this content was sent before; records it either way."""
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return True
        self._seen[digest] = None
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return False

    async def get_or_upload(self, digest: str, upload: Callable[[], Awaitable[str]]) -> str:
        """The cached URL for `digest`, else the result of `upload()` (run once for concurrent callers)."""
        while True:
            url = self.cached(digest)
            if url is not None:
                return url
            flight = self._flights.get(digest)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
        flight = _Flight()
        self._flights[digest] = flight
        try:
            if self.shared is not None:  # coordination hook (issue 14): uploaded by another process?
                known = await self._shared_url(digest)
                if known is not None:
                    return known
            url = await upload()
            self.uploads += 1
            self._store(digest, url, self.reuse_seconds)
            if self.shared is not None:
                await self.shared.put(digest, url, self.reuse_seconds)
            return url
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[digest]
            flight.done.set()

    def _store(self, digest: str, url: str, reusable_for: float) -> None:
        self._urls[digest] = _Entry(url, self.clock() - (self.reuse_seconds - reusable_for))
        self._urls.move_to_end(digest)
        if len(self._urls) > self.max_entries:
            self._urls.popitem(last=False)

    async def _shared_url(self, digest: str) -> str | None:
        """The URL another process uploaded; waits (bounded) while another one is uploading it."""
        shared = self.shared
        assert shared is not None
        waited = 0.0
        step = 0.05
        while True:
            found = await shared.get(digest)
            if found is not None:
                self._store(digest, *found)
                return found[0]
            if waited >= self.claim_wait or await shared.claim(digest, self.claim_wait):
                return None  # ours to upload
            await anyio.sleep(step)
            waited += step
            step = min(step * 2, 0.5)
