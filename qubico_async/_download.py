"""Fetching result files: the result URL of a task or outcome, streamed through the client's
transport (retried, size-capped), and written atomically under a name the bytes agree with."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import anyio

from ._config import is_http_url
from ._naming import safe_filename
from ._transport import Transport
from .batch import Outcome
from .errors import DownloadError, InvalidInputError, OutputExistsError, QubicoError
from .models import Task

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ExtensionPolicy",
    "download_result",
    "download_result_bytes",
    "fetch_bytes",
    "fetch_to_file",
    "sniff_extension",
]

logger = logging.getLogger("qubico_async")

DEFAULT_MAX_BYTES = 200 * 1024 * 1024
_EXT_BY_TYPE = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
}
_SAME_EXT = {".jpeg": ".jpg", ".jpe": ".jpg"}
_SNIFF_BYTES = 16

ExtensionPolicy = Literal["warn", "fix", "strict"]
"""What `download` does when a given file name's extension disagrees with the bytes: `warn`
(log a warning, keep the name), `fix` (replace the extension with the right one) or `strict`
(raise `DownloadError`, nothing is written)."""


def sniff_extension(head: bytes) -> str | None:
    """The extension the first bytes of a file show (JPEG, PNG, WebP, MP4), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[4:8] == b"ftyp":
        return ".mp4"
    return None


def _normal_ext(ext: str) -> str:
    ext = ext.lower()
    return _SAME_EXT.get(ext, ext)


async def download_result_bytes(
    transport: Transport, task: Task | Outcome | str, *, ready: Callable[[], object], max_bytes: int
) -> bytes:
    """`QubicoClient.download_bytes`: the result of a task, outcome or URL (`ready()` checks the client)."""
    url = _result_url(_outcome_task(task))
    ready()
    return await fetch_bytes(transport, url, max_bytes=max_bytes)


async def download_result(
    transport: Transport,
    task: Task | Outcome | str,
    dest: str | os.PathLike[str],
    *,
    ready: Callable[[], object],
    overwrite: bool,
    max_bytes: int,
    extension: ExtensionPolicy,
) -> Path:
    """`QubicoClient.download`: a folder `dest` (existing, or ending in a separator) gets a file
    named after the outcome's key or the task id; otherwise `dest` is the file (see `fetch_to_file`)."""
    if isinstance(task, Outcome):
        name: str | None = safe_filename(task.key, fallback=f"job-{task.index}")
        task = _outcome_task(task)
    else:
        name = task.task_id if isinstance(task, Task) else None
    url = _result_url(task)
    raw = os.fspath(dest)
    as_folder = raw.endswith(("/", os.sep) + ((os.altsep,) if os.altsep else ()))
    ready()
    return await fetch_to_file(
        transport,
        url,
        Path(raw),
        as_folder=as_folder,
        name_hint=name,
        overwrite=overwrite,
        max_bytes=max_bytes,
        extension=extension,
    )


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


def _check_url(url: str) -> None:
    if not is_http_url(url):
        raise InvalidInputError(f"refusing to download {url[:100]!r}: only http(s) URLs are fetched")


def _content_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


async def _stream(transport: Transport, url: str, max_bytes: int, sink: _Sink) -> str:
    """Stream `url` into `sink` through the client's transport (its retry loop and error
    mapping: see `Transport.download`); returns the content type."""
    _check_url(url)
    resp = await transport.download(url, sink.write, restart=sink.reset, max_bytes=max_bytes)
    return _content_type(resp.headers)


class _Sink:
    head = b""
    """The first bytes written since the last reset: what `sniff_extension` reads."""

    async def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class _MemorySink(_Sink):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def reset(self) -> None:
        self.chunks.clear()


class _FileSink(_Sink):
    def __init__(self, file: anyio.AsyncFile[bytes]) -> None:
        self.file = file

    async def write(self, chunk: bytes) -> None:
        if len(self.head) < _SNIFF_BYTES:
            self.head = (self.head + chunk)[:_SNIFF_BYTES]
        await self.file.write(chunk)

    def reset(self) -> None:
        self.head = b""
        self.file.wrapped.seek(0)
        self.file.wrapped.truncate()


async def fetch_bytes(transport: Transport, url: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The result's content, streamed into memory (capped at `max_bytes`)."""
    sink = _MemorySink()
    await _stream(transport, url, max_bytes, sink)
    return b"".join(sink.chunks)


async def fetch_to_file(
    transport: Transport,
    url: str,
    dest: Path,
    *,
    name_hint: str | None,
    overwrite: bool,
    max_bytes: int = DEFAULT_MAX_BYTES,
    as_folder: bool = False,
    extension: ExtensionPolicy = "warn",
) -> Path:
    """Download into a temp file beside the target, then move it into place atomically.

    `dest` is a folder when `as_folder` (it is created if missing) or when it is an existing
    folder; the file is then named after `name_hint`, with the extension the bytes show (else
    the content type's, else the URL's). A given file name whose extension disagrees with the
    bytes is handled by `extension` (see `ExtensionPolicy`). Every local file-system failure is
    a `DownloadError` (an existing file without `overwrite`: `OutputExistsError`).
    """
    if extension not in ("warn", "fix", "strict"):
        raise InvalidInputError(f"extension must be 'warn', 'fix' or 'strict', got {extension!r}")
    _check_url(url)
    try:
        is_dir = await anyio.Path(dest).is_dir()
        if as_folder and not is_dir and await anyio.Path(dest).exists():
            raise DownloadError(f"cannot save into {dest}: it exists and is not a folder", path=dest)
        is_dir = is_dir or as_folder
        folder = dest if is_dir else dest.parent
        await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    except DownloadError:
        raise
    except OSError as exc:
        raise DownloadError(f"cannot create the folder for {dest}: {_why(exc)}", path=dest) from None
    tmp = folder / f".{safe_filename(name_hint or dest.name)}.{secrets.token_hex(4)}.part"
    final = dest
    try:
        async with await anyio.open_file(tmp, "wb") as file:
            sink = _FileSink(file)
            content_type = await _stream(transport, url, max_bytes, sink)
        sniffed = sniff_extension(sink.head)
        if is_dir:
            stem = safe_filename(name_hint or Path(urllib.parse.urlsplit(url).path).stem or "result")
            ext = sniffed or _EXT_BY_TYPE.get(content_type) or _url_ext(url)
            final = folder / (stem + ext)
        elif sniffed is not None and _normal_ext(dest.suffix) != sniffed:
            final = _mismatch(dest, sniffed, extension)
        await anyio.to_thread.run_sync(_place, tmp, final, overwrite)
        return final
    except QubicoError:
        raise
    except OSError as exc:  # the temp file could not be created or written, or not moved
        raise DownloadError(f"cannot save the result to {final}: {_why(exc)}", path=final) from None
    finally:
        # Also runs on cancellation: never leave a temp file behind.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(tmp)


def _mismatch(dest: Path, sniffed: str, policy: ExtensionPolicy) -> Path:
    """Where a file whose name says one type and whose bytes say another goes (see ExtensionPolicy)."""
    said = dest.suffix or "no extension"
    if policy == "strict":
        raise DownloadError(
            f"not saving {dest}: the result is {sniffed[1:].upper()} but the name says {said}", path=dest
        )
    if policy == "fix":
        return dest.with_name(dest.name + sniffed) if not dest.suffix else dest.with_suffix(sniffed)
    logger.warning("%s: the result is %s but the name says %s (kept)", dest, sniffed[1:].upper(), said)
    return dest


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _place(tmp: Path, final: Path, overwrite: bool) -> None:
    exists = OutputExistsError(f"{final} already exists; pass overwrite=True to replace it", path=final)
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # atomic, and fails instead of clobbering an existing file
    except FileExistsError:
        raise exists from None
    except OSError:
        if final.exists():
            raise exists from None
        os.replace(tmp, final)


def _url_ext(url: str) -> str:
    ext = Path(urllib.parse.urlsplit(url).path).suffix.lower()
    return ext if ext in (".jpg", ".jpeg", ".png", ".webp", ".mp4") else ".bin"
