"""Media content once read: `LoadedMedia` (checked, ready to inline or upload) and the helpers that
read and decode it without stalling the event loop (worker threads for large files, one at a time).

`media` decides where the bytes come from and what they must be; this module holds them.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from pathlib import Path

import anyio
import anyio.to_thread
from attrs import field, frozen

from ._mediainfo import MAX_MEDIA_BYTES, ImageInfo, VideoInfo
from .errors import InvalidInputError

__all__ = ["CPU_LOCK", "THREAD_THRESHOLD", "LoadedMedia", "b64decode", "read_file", "strip_span", "too_big"]

THREAD_THRESHOLD = 256 * 1024
"""Files and payloads above this size are read and encoded in a worker thread."""

CPU_LOCK = threading.Lock()
"""Held by worker threads while they decode, encode or join large media: one at a time competes
with the event loop for the GIL (several did, and the loop waited for each of them in turn)."""


@frozen
class LoadedMedia:
    """Media content read and checked, ready to inline or upload.

    Holds the content once: the caller's bytes, or the caller's base64 text as given (a slice
    of it, never copied or re-encoded). `digest` is the sha256 of the decoded content.
    """

    info: ImageInfo | VideoInfo
    source: str
    filename: str
    size: int
    digest: str
    _raw: bytes | None = field(default=None, repr=False, alias="raw")
    _text: str | None = field(default=None, repr=False, alias="text")
    _span: tuple[int, int] = field(default=(0, 0), repr=False, alias="span")

    @property
    def mime(self) -> str:
        return self.info.mime

    @property
    def data(self) -> bytes:
        """The decoded content (decoded again when it was given as base64: prefer `base64_bytes`)."""
        if self._raw is not None:
            return self._raw
        assert self._text is not None
        start, end = self._span
        return base64.b64decode(self._text[start:end])

    def base64_chunks(self) -> list[bytes]:
        """The content as base64 (ASCII bytes) in pieces that join into one valid text.

        CPU-bound for large files: call from a thread. Base64 text given by the caller is sent as
        given. Bytes are encoded in slices, so a worker thread doing this gives the GIL back to the
        event loop between slices, and nothing joins them: the body is written piece by piece.
        """
        if self._text is not None:
            start, end = self._span
            whole = self._text.encode("ascii", "replace")  # one byte per char: offsets hold
            return [whole if (start, end) == (0, len(whole)) else whole[start:end]]
        assert self._raw is not None
        view = memoryview(self._raw)
        return [base64.b64encode(view[i : i + _ENCODE_SLICE]) for i in range(0, len(view), _ENCODE_SLICE)]

    def base64_bytes(self) -> bytes:
        """The content as base64 in one piece (see `base64_chunks`)."""
        chunks = self.base64_chunks()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def data_uri(self) -> str:
        """The content as a `data:` URI (CPU-bound for large files: call from a thread)."""
        return f"data:{self.mime};base64,{self.base64_bytes().decode('ascii')}"


_ENCODE_SLICE = 3 * 64 * 1024
"""Bytes base64-encoded per call (a multiple of 3, so slices join into one valid text)."""


def too_big(size: int) -> str:
    return f"is {size / 1_048_576:.1f} MB; the limit is {MAX_MEDIA_BYTES // 1_048_576} MB"


def strip_span(text: str, start: int) -> tuple[int, int]:
    """`text[start:]` without surrounding whitespace, as (start, end): no copy of a large string."""
    end = len(text)
    while end > start and text[end - 1].isspace():
        end -= 1
    while start < end and text[start].isspace():
        start += 1
    return start, end


def b64decode(payload: str, name: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{name}: is not valid base64") from None


async def read_file(path: str, name: str) -> bytes:
    def read() -> bytes:
        p = Path(path)
        try:
            size = p.stat().st_size
            if not p.is_file():
                raise InvalidInputError(f"{name}: is not a file")
            if size > MAX_MEDIA_BYTES:
                raise InvalidInputError(f"{name}: {too_big(size)}")
            return p.read_bytes()
        except FileNotFoundError:
            raise InvalidInputError(f"{name}: no such file") from None
        except PermissionError:
            raise InvalidInputError(f"{name}: permission denied") from None
        except IsADirectoryError:
            raise InvalidInputError(f"{name}: is a directory, not a file") from None
        except OSError as exc:
            raise InvalidInputError(f"{name}: cannot be read ({exc.strerror or exc})") from None

    try:
        size = os.stat(path).st_size
    except OSError:
        size = THREAD_THRESHOLD + 1  # let the worker report the precise error
    if size <= THREAD_THRESHOLD:
        return read()
    return await anyio.to_thread.run_sync(read)
