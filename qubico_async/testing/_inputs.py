"""A task's inputs as bytes: inline media, files this emulator serves, other loopback URLs fetched.

URL inputs are fetched like the service fetches them, but only from loopback (`127.0.0.0/8`, `::1`,
`localhost`, any port, http or https): files this emulator serves are read from its store, other
loopback URLs are fetched with aiohttp (at most 10 MiB, 10 s). Any other host fails the task with
`raw_message` "the emulator only fetches loopback URLs (got host ...)"; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote, urlsplit

import aiohttp

from ._job import SwapJob
from ._mediacheck import MAX_BYTES
from ._state import FileStore, StoredTask
from ._validation import ValidationError, check_image, check_video, media_fields

__all__ = ["FETCH_TIMEOUT", "InputFailure", "InputResolver", "is_loopback_host", "loopback_only", "own_path"]

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
FETCH_TIMEOUT: Final = 10.0
"""Seconds allowed to fetch one loopback URL input."""


def is_loopback_host(host: str) -> bool:
    """`localhost` (with or without a trailing dot) or a loopback IP (`127.0.0.0/8`, `::1`)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_only(host: str) -> str:
    return f"the emulator only fetches loopback URLs (got host {host or '(none)'})"


class InputFailure(Exception):
    """An input could not be had: `message` for `error.message`, `raw` for `error.raw_message`."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(raw)
        self.message = message
        self.raw = raw


class InputResolver:
    """Turns a task's inputs into a `SwapJob`, fetching the loopback URLs this emulator does not serve."""

    def __init__(self, *, files: FileStore, is_own_url: Callable[[str], str | None]) -> None:
        self._files = files
        self._is_own_url = is_own_url
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def resolve(self, task: StoredTask, fetched: dict[str, bytes]) -> SwapJob | None:
        """The job's input bytes, or None when a loopback URL still has to be fetched (`fetched`
        holds those already fetched). Raises `InputFailure` when an input cannot be had."""
        target_field, swap_field = media_fields(task.model)
        found: dict[str, bytes] = {}
        for name in (target_field, swap_field):
            kind = "video" if name == "target_video" else "image"
            data = task.media.get(name)
            if data is None:
                url = task.input[name]
                data = fetched.get(name)
                if data is None:
                    data = self._local(url, kind)
                if data is None:
                    return None
                try:
                    if kind == "video":
                        task.frames = check_video(data, name)
                    else:
                        check_image(data, name)
                except ValidationError as exc:
                    raise InputFailure(f"failed to get valid {kind}", exc.message) from None
            found[name] = data
        return SwapJob(
            model=task.model,
            task_type=task.task_type,
            target=found[target_field],
            swap=found[swap_field],
            swap_faces_index=task.swap_faces_index,
            target_faces_index=task.target_faces_index,
        )

    def _local(self, url: str, kind: str) -> bytes | None:
        """Bytes of a file this emulator serves; None for another loopback URL (to fetch)."""
        path = self._is_own_url(url)
        if path is not None:
            stored = self._files.get(path)
            if stored is None:
                raise InputFailure(f"failed to get valid {kind}", f"GET {url}: 404 Not Found")
            return stored.data
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            host = ""
        if not is_loopback_host(host):
            raise InputFailure(f"failed to get valid {kind}: {loopback_only(host)}", loopback_only(host))
        return None

    async def fetch_foreign(self, task: StoredTask) -> dict[str, bytes]:
        """GET each URL input that is on loopback but not served by this emulator."""
        fetched: dict[str, bytes] = {}
        for name in media_fields(task.model):
            if name in task.media:
                continue
            url = task.input[name]
            kind = "video" if name == "target_video" else "image"
            if self._local(url, kind) is None:
                fetched[name] = await self._get(url, kind)
        return fetched

    async def _get(self, url: str, kind: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        failed = f"failed to get valid {kind}"
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise InputFailure(failed, f"GET {url}: HTTP {resp.status}")
                chunks, size = [], 0
                while size <= MAX_BYTES:  # stop reading as soon as the file is over the limit
                    chunk = await resp.content.read(256 * 1024)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                data = b"".join(chunks)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise InputFailure(failed, f"GET {url}: {type(exc).__name__}: {exc}") from None
        if len(data) > MAX_BYTES:
            raise InputFailure(failed, f"GET {url}: larger than {MAX_BYTES} bytes (10 MiB)")
        return data


def own_path(url: str, ports: tuple[int, ...], hosts: frozenset[str]) -> str | None:
    """The /results/... or /files/... path (percent-decoded) of `url` if it is served by this
    emulator (on any of its `ports`), else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "http" or (parts.hostname or "").lower() not in (_LOCAL_HOSTS | hosts):
        return None
    if port not in ports:
        return None
    path = unquote(parts.path)
    if not path.startswith(("/results/", "/files/")) or "/../" in path:
        return None
    return path
