"""Image and video inputs: where the bytes come from, and the checks made before paying.

Plain values are accepted wherever a media input is: a `str` starting with `http://` or
`https://` is a URL, one starting with `data:` is a data URI, any other `str` or `os.PathLike`
is a local path, and `bytes` are the content. Raw base64 is never guessed from a `str`: use
`Image.from_base64()`.

Nothing is read when an `Image` is created. The content is read, checked (format from the
header, pixel size, byte size, frame count) and encoded when the request is built, in a worker
thread when it is large, so the event loop never stalls.
"""

from __future__ import annotations

import base64
import binascii
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
from ._mediainfo import (
    MAX_IMAGE_SIDE,
    MAX_MEDIA_BYTES,
    MAX_VIDEO_FRAMES,
    ImageInfo,
    VideoInfo,
    check_image_complete,
    probe_image,
    probe_video,
)
from .errors import InvalidInputError

__all__ = ["Image", "ImageInput", "LoadedMedia", "Video", "VideoInput"]

logger = logging.getLogger("qubico_async")

THREAD_THRESHOLD = 256 * 1024
"""Files and payloads above this size are read and encoded in a worker thread."""

SourceKind = Literal["url", "data_uri", "base64", "bytes", "path"]
M = TypeVar("M", bound="_Media")

_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "mp4": ".mp4"}
_EXT_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp", ".mp4": "mp4"}


@frozen
class LoadedMedia:
    """Media content read and checked, ready to inline or upload."""

    data: bytes = field(repr=False)
    info: ImageInfo | VideoInfo
    source: str
    filename: str

    @property
    def mime(self) -> str:
        return self.info.mime

    def data_uri(self) -> str:
        """The content as a `data:` URI (CPU-bound for large files: call from a thread)."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


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
        data = await self._read()
        if not data:
            raise InvalidInputError(f"{self.name}: is empty")
        if len(data) > MAX_MEDIA_BYTES:
            raise InvalidInputError(f"{self.name}: {_too_big(len(data))}")
        info = self._probe(data)
        self._check_extension(info)
        stem = Path(self.name).stem if self.kind == "path" else self.KIND
        return LoadedMedia(data=data, info=info, source=self.name, filename=stem + _EXTENSIONS[info.format])

    async def _read(self) -> bytes:
        if self.kind == "bytes":
            assert isinstance(self.value, bytes)
            return self.value
        if self.kind == "path":
            assert isinstance(self.value, str)
            return await _read_file(self.value, self.name)
        assert isinstance(self.value, str)
        payload = self.value.split(",", 1)[1] if self.kind == "data_uri" else self.value
        if len(payload) > (MAX_MEDIA_BYTES * 4) // 3 + 8:
            raise InvalidInputError(
                f"{self.name}: decodes to over {MAX_MEDIA_BYTES // 1_048_576} MB; the limit is "
                f"{MAX_MEDIA_BYTES // 1_048_576} MB"
            )
        if len(payload) > THREAD_THRESHOLD:
            return await anyio.to_thread.run_sync(_b64decode, payload, self.name)
        return _b64decode(payload, self.name)

    def _probe(self, data: bytes) -> ImageInfo | VideoInfo:
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

    def _probe(self, data: bytes) -> ImageInfo:
        try:
            info = probe_image(data)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{self.name}: {exc} (supported: JPEG, PNG, WebP)") from None
        if info.width > MAX_IMAGE_SIDE or info.height > MAX_IMAGE_SIDE:
            raise InvalidInputError(
                f"{self.name}: is {info.width}x{info.height} pixels; the limit is {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}"
            )
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

    def _probe(self, data: bytes) -> VideoInfo:
        try:
            info = probe_video(data)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{self.name}: {exc} (supported: MP4)") from None
        if info.frames is not None and info.frames > MAX_VIDEO_FRAMES:
            raise InvalidInputError(f"{self.name}: has {info.frames} frames; the limit is {MAX_VIDEO_FRAMES}")
        return info


ImageInput = Union[Image, str, bytes, "os.PathLike[str]"]
VideoInput = Union[Video, str, bytes, "os.PathLike[str]"]


def _too_big(size: int) -> str:
    return f"is {size / 1_048_576:.1f} MB; the limit is {MAX_MEDIA_BYTES // 1_048_576} MB"


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."


def _b64decode(payload: str, name: str) -> bytes:
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{name}: is not valid base64") from None


async def _read_file(path: str, name: str) -> bytes:
    def read() -> bytes:
        p = Path(path)
        try:
            size = p.stat().st_size
            if not p.is_file():
                raise InvalidInputError(f"{name}: is not a file")
            if size > MAX_MEDIA_BYTES:
                raise InvalidInputError(f"{name}: {_too_big(size)}")
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
