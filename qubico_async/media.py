"""Image and video inputs: where the bytes come from, and the checks made before paying.

Plain values are accepted wherever a media input is: a `str` starting with `http://` or
`https://` is a URL, one starting with `data:` is a data URI, any other `str` or `os.PathLike`
is a local path, and `bytes` are the content. Raw base64 is never guessed from a `str`: use
`Image.from_base64()`.

Nothing is read when an `Image` is created. The content is read, checked (format from the
header, pixel size, byte size, frame count) and encoded when the request is built, in a worker
thread when it is large, so the event loop never stalls. The loaded content (`LoadedMedia`) and
the reading and decoding helpers are in `_media_content`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import posixpath
import urllib.parse
from pathlib import Path
from typing import ClassVar, Literal, TypeVar, Union

import anyio
import anyio.to_thread
from attrs import field, frozen

from ._config import is_http_url
from ._media_content import CPU_LOCK, THREAD_THRESHOLD, LoadedMedia, b64decode, read_file, strip_span, too_big
from ._mediainfo import (
    MAX_IMAGE_SIDE,
    MAX_MEDIA_BYTES,
    MAX_VIDEO_FRAMES,
    ImageInfo,
    VideoInfo,
    check_image_complete,
    check_image_tail,
    probe_image,
    probe_video,
)
from .errors import InvalidInputError

__all__ = ["Image", "ImageInput", "LoadedMedia", "Video", "VideoInput"]

logger = logging.getLogger("qubico_async")

SourceKind = Literal["url", "data_uri", "base64", "bytes", "path"]
M = TypeVar("M", bound="_Media")

_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "mp4": ".mp4"}
_EXT_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp", ".mp4": "mp4"}


_DECODE_SLICE = 4 * 128 * 1024
"""Base64 characters decoded per call (a multiple of 4)."""
_PROBE_PREFIX = 64 * 1024
"""Decoded bytes tried first for the header; the whole content only when the prefix is not enough."""
_TAIL_TEXT = 64 * 1024
"""Base64 characters decoded from the end of a large inline image to check it is not cut short."""


@frozen
class _Media:
    """Shared behaviour of `Image` and `Video`."""

    kind: SourceKind
    value: str | bytes = field(repr=False)
    name: str = ""

    KIND: ClassVar[str] = "media"
    URL_EXTENSIONS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_url(cls: type[M], url: str) -> M:
        """A URL the service fetches itself; checked for scheme and extension, never fetched here."""
        if not is_http_url(url):
            raise InvalidInputError(f"{url!r}: a {cls.KIND} URL must be http:// or https://")
        parsed = urllib.parse.urlsplit(url)
        ext = posixpath.splitext(urllib.parse.unquote(parsed.path))[1].lower()
        if ext not in cls.URL_EXTENSIONS:
            allowed = "/".join(cls.URL_EXTENSIONS)
            raise InvalidInputError(
                f"{_short(url)}: the service requires a {cls.KIND} URL path ending in {allowed} (got {ext or 'none'})"
            )
        return cls(kind="url", value=url, name=_short(url))

    @classmethod
    def from_path(cls: type[M], path: str | os.PathLike[str]) -> M:
        """A local file, read when the request is built."""
        return cls(kind="path", value=os.fspath(path), name=os.fspath(path))

    @classmethod
    def from_bytes(cls: type[M], data: bytes, name: str = "<bytes>") -> M:
        """In-memory content."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInputError(f"{name}: expected bytes, got {type(data).__name__}")
        return cls(kind="bytes", value=bytes(data), name=name)

    @classmethod
    def from_base64(cls: type[M], data: str | bytes, name: str = "<base64>") -> M:
        """Raw base64 text (no `data:` prefix)."""
        text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
        return cls(kind="base64", value=text, name=name)

    @classmethod
    def from_data_uri(cls: type[M], uri: str, name: str = "<data URI>") -> M:
        if not uri.startswith("data:") or ";base64," not in uri[:200]:
            raise InvalidInputError(f"{name}: expected a data:<mime>;base64,<data> URI")
        return cls(kind="data_uri", value=uri, name=name)

    @classmethod
    def coerce(cls: type[M], value: object) -> M:
        """Turn a plain value (URL, data URI, path, bytes) into a media source."""
        if isinstance(value, cls):
            return value
        if isinstance(value, _Media):
            raise InvalidInputError(f"{value.name}: expected {cls.__name__}, got {type(value).__name__}")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls.from_bytes(bytes(value))
        if isinstance(value, str):
            head = value[:8].lower()
            if head.startswith(("http://", "https://")):
                return cls.from_url(value)
            if head.startswith("data:"):
                return cls.from_data_uri(value)
            if not value.strip():
                raise InvalidInputError(f"empty {cls.KIND} path")
            return cls.from_path(value)
        if isinstance(value, os.PathLike):
            return cls.from_path(value)
        raise InvalidInputError(
            f"cannot use a {type(value).__name__} as {cls.KIND}: pass a path, URL, data URI, bytes or {cls.__name__}"
        )

    @property
    def is_url(self) -> bool:
        return self.kind == "url"

    @property
    def url(self) -> str:
        if self.kind != "url":
            raise InvalidInputError(f"{self.name} is not a URL")
        assert isinstance(self.value, str)
        return self.value

    async def load(self) -> LoadedMedia:
        """Read (in a thread when large), decode and check the content; raises `InvalidInputError`."""
        if self.kind == "url":
            raise InvalidInputError(f"{self.name}: a URL has no local content to load")
        stem = Path(self.name).stem if self.kind == "path" else self.KIND
        if self.kind in ("base64", "data_uri"):
            assert isinstance(self.value, str)
            text = self.value
            start, end = strip_span(text, text.index(",") + 1 if self.kind == "data_uri" else 0)
            if end - start > (MAX_MEDIA_BYTES * 4) // 3 + 8:
                raise InvalidInputError(
                    f"{self.name}: decodes to over {MAX_MEDIA_BYTES // 1_048_576} MB; the limit is "
                    f"{MAX_MEDIA_BYTES // 1_048_576} MB"
                )
            if end - start > THREAD_THRESHOLD:
                size, digest, info = await anyio.to_thread.run_sync(self._check_base64_locked, text, start, end)
            else:
                size, digest, info = self._check_base64(text, start, end)
            return LoadedMedia(
                info=info,
                source=self.name,
                filename=stem + _EXTENSIONS[info.format],
                size=size,
                digest=digest,
                text=text,
                span=(start, end),
            )
        data = await self._read()
        if not data:
            raise InvalidInputError(f"{self.name}: is empty")
        if len(data) > MAX_MEDIA_BYTES:
            raise InvalidInputError(f"{self.name}: {too_big(len(data))}")
        if len(data) > THREAD_THRESHOLD:  # the check inflates a PNG's image data: off the loop
            info, digest = await anyio.to_thread.run_sync(self._check_bytes_locked, data)
        else:
            info, digest = self._check_bytes(data)
        return LoadedMedia(
            info=info,
            source=self.name,
            filename=stem + _EXTENSIONS[info.format],
            size=len(data),
            digest=digest,
            raw=data,
        )

    def _check_bytes(self, data: bytes) -> tuple[ImageInfo | VideoInfo, str]:
        info = self._probe(data)
        self._check_extension(info)
        return info, hashlib.sha256(data).hexdigest()

    def _check_bytes_locked(self, data: bytes) -> tuple[ImageInfo | VideoInfo, str]:
        with CPU_LOCK:
            return self._check_bytes(data)

    def _check_base64_locked(self, text: str, start: int, end: int) -> tuple[int, str, ImageInfo | VideoInfo]:
        with CPU_LOCK:
            return self._check_base64(text, start, end)

    def _check_base64(self, text: str, start: int, end: int) -> tuple[int, str, ImageInfo | VideoInfo]:
        """(decoded size, sha256, header info) of `text[start:end]`, decoded a slice at a time.

        Accepts exactly what `base64.b64decode(..., validate=True)` accepts. The decoded slices are
        hashed and dropped; an image header is read from a decoded prefix (a read past its end fails,
        so a prefix either gives the whole file's answer or none), and from the whole content only
        when the prefix does not show it (a JPEG frame header late in the file). Video: whole.
        """
        hasher = hashlib.sha256()
        limit = _PROBE_PREFIX if self.KIND == "image" else MAX_MEDIA_BYTES + 1  # an MP4 `moov` may be last
        prefix: list[bytes] = []
        kept = 0
        size = 0
        for at in range(start, max(end, start + 1), _DECODE_SLICE):
            stop = min(end, at + _DECODE_SLICE)
            chunk = text[at:stop]
            if stop < end and "=" in chunk:  # padding only at the very end
                raise InvalidInputError(f"{self.name}: is not valid base64")
            part = b64decode(chunk, self.name)
            hasher.update(part)
            size += len(part)
            if kept < limit:
                prefix.append(part)
                kept += len(part)
        if not size:
            raise InvalidInputError(f"{self.name}: is empty")
        if size > MAX_MEDIA_BYTES:
            raise InvalidInputError(f"{self.name}: {too_big(size)}")
        head = b"".join(prefix)
        whole = len(head) == size
        try:
            info = self._probe(head, complete=whole)
        except InvalidInputError:
            if whole:
                raise
            info = self._probe(base64.b64decode(text[start:end]))  # the whole file, for its exact error
        if not whole and isinstance(info, ImageInfo):
            # The end of the file, decoded alone: a truncated image shows there (its end marker).
            span = min(end - start, _TAIL_TEXT) // 4 * 4
            try:
                check_image_tail(head, b64decode(text[end - span : end], self.name), size, info)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{self.name}: {exc}") from None
        return size, hasher.hexdigest(), info

    async def _read(self) -> bytes:
        if self.kind == "bytes":
            assert isinstance(self.value, bytes)
            return self.value
        assert isinstance(self.value, str)
        return await read_file(self.value, self.name)

    def _probe(self, data: bytes, complete: bool = True) -> ImageInfo | VideoInfo:
        """The header's answer; with `complete`, `data` is the whole file and is checked whole."""
        raise NotImplementedError

    def _check_extension(self, info: ImageInfo | VideoInfo) -> None:
        if self.kind != "path":
            return
        claimed = _EXT_FORMATS.get(Path(self.name).suffix.lower())
        if claimed is not None and claimed != info.format:
            logger.warning(
                "%s: the extension says %s but the content is %s; sending it as %s",
                self.name,
                claimed.upper(),
                info.format.upper(),
                info.mime,
            )


@frozen
class Image(_Media):
    """An image input: JPEG, PNG or WebP, at most 2048x2048 pixels and 10 MB."""

    KIND: ClassVar[str] = "image"
    URL_EXTENSIONS: ClassVar[tuple[str, ...]] = (".jpg", ".jpeg", ".png", ".webp")

    def _probe(self, data: bytes, complete: bool = True) -> ImageInfo:
        try:
            info = probe_image(data)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{self.name}: {exc} (supported: JPEG, PNG, WebP)") from None
        if info.width > MAX_IMAGE_SIDE or info.height > MAX_IMAGE_SIDE:
            raise InvalidInputError(
                f"{self.name}: is {info.width}x{info.height} pixels; the limit is {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}"
            )
        if complete:
            try:
                check_image_complete(data, info)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{self.name}: {exc}") from None
        return info


@frozen
class Video(_Media):
    """A video input: MP4, at most 600 frames and 10 MB."""

    KIND: ClassVar[str] = "video"
    URL_EXTENSIONS: ClassVar[tuple[str, ...]] = (".mp4",)

    def _probe(self, data: bytes, complete: bool = True) -> VideoInfo:
        try:
            info = probe_video(data)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{self.name}: {exc} (supported: MP4)") from None
        if info.frames is not None and info.frames > MAX_VIDEO_FRAMES:
            raise InvalidInputError(f"{self.name}: has {info.frames} frames; the limit is {MAX_VIDEO_FRAMES}")
        return info


ImageInput = Union[Image, str, bytes, "os.PathLike[str]"]
VideoInput = Union[Video, str, bytes, "os.PathLike[str]"]


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
