"""From a request to the wire payload: each file read once, content fingerprinted, media inlined
or uploaded according to the upload policy.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from attrs import frozen

from ._media_content import CPU_LOCK, THREAD_THRESHOLD, LoadedMedia
from ._mediainfo import VideoInfo
from ._uploads import AUTO_UPLOAD_BYTES, UploadCache, UploadPolicy, upload_body
from .errors import InsufficientPlanError, InvalidInputError, MalformedResponseError, PermissionDeniedError
from .media import Image, Video, _Media
from .requests import Prepared, coerce_request, fingerprint

if TYPE_CHECKING:
    from .coordination import SharedUploads

__all__ = ["InlineMedia", "MediaSender", "coerce_media", "encode_json"]

logger = logging.getLogger("qubico_async")

PostUpload = Callable[[bytes], Awaitable[dict[str, Any]]]
"""Sends an upload body to the File Upload API and returns the decoded envelope."""


class MediaSender:
    """Prepares requests for one client and owns its upload cache."""

    def __init__(self, post_upload: PostUpload | None, shared: SharedUploads | None = None) -> None:
        """`shared` is the upload cache of every process of the account (issue 14), if any."""
        self._post_upload = post_upload
        self._cache = UploadCache()
        self._cache.shared = shared
        self._refused = False  # the plan said no: `auto` inlines from then on

    async def prepare(self, request: object, policy: UploadPolicy) -> Prepared:
        """Check and load the media, fingerprint the content, build the wire payload."""
        req = coerce_request(request)
        if policy not in ("auto", "always", "never"):
            raise InvalidInputError(f"upload must be 'auto', 'always' or 'never', got {policy!r}")
        loaded: dict[int, tuple[LoadedMedia, str]] = {}
        frames: list[int] = []

        async def load(media: _Media) -> tuple[LoadedMedia, str]:
            if id(media) not in loaded:
                content = await media.load()  # hashed while it is read or decoded: one pass
                loaded[id(media)] = (content, content.digest)
                if isinstance(content.info, VideoInfo) and content.info.frames is not None:
                    frames.append(content.info.frames)
            return loaded[id(media)]

        async def canonical(media: _Media) -> str:
            return media.url if media.is_url else "sha256:" + (await load(media))[1]

        async def resolve(media: _Media) -> str | InlineMedia:
            return media.url if media.is_url else await self.wire(*(await load(media)), policy)

        identity = fingerprint(await req.build(canonical))
        payload = await req.build(resolve)
        return Prepared(request=req, payload=payload, identity=identity, frames=frames[0] if frames else None)

    async def upload(self, loaded: LoadedMedia, digest: str) -> str:
        """The upload URL for this content (uploaded at most once per client within 23 h)."""
        post = self._post_upload
        if post is None:
            raise InvalidInputError("uploads need an upload_url when base_url is not the default service")

        async def send() -> str:
            try:
                envelope = await post(await upload_body(loaded))
            except PermissionDeniedError as exc:
                raise InsufficientPlanError(
                    f"uploads need the Creator plan or higher: {exc.message}",
                    status=exc.status,
                    code=exc.code,
                    method=exc.method,
                    url=exc.url,
                    body=exc.body,
                ) from None
            data = envelope.get("data")
            url = (data.get("url") if isinstance(data, dict) else None) or envelope.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise MalformedResponseError("upload response has no http(s) url")
            return url

        return await self._cache.get_or_upload(digest, send)

    async def upload_source(self, source: object) -> str:
        """The URL the service can fetch `source` from: a URL as is, local media checked and uploaded."""
        media = coerce_media(source)
        if media.is_url:
            return media.url
        loaded = await media.load()
        return await self.upload(loaded, loaded.digest)

    async def wire(self, loaded: LoadedMedia, digest: str, policy: UploadPolicy) -> str | InlineMedia:
        """What the service receives for local media: an upload URL, or the content inline."""
        auto_off = self._refused or self._post_upload is None
        if policy != "never" and not (policy == "auto" and auto_off):
            reused = self._cache.seen(digest)
            if policy == "always" or reused or loaded.size > AUTO_UPLOAD_BYTES:
                try:
                    return await self.upload(loaded, digest)
                except InsufficientPlanError:
                    if policy == "always":
                        raise
                    self._refused = True
                    logger.warning("uploads are not available on this plan; sending media inline from now on")
        return InlineMedia(loaded)


def coerce_media(source: object) -> _Media:
    """An `Image`, or a `Video` for MP4 content or a `.mp4` path/URL."""
    if isinstance(source, _Media):
        return source
    is_video = (
        source[4:8] == b"ftyp"
        if isinstance(source, bytes)
        else isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().split("?")[0].endswith(".mp4")
    )
    return Video.coerce(source) if is_video else Image.coerce(source)


@frozen
class InlineMedia:
    """Local media sent inline: written into the body as a data URI when the body is built.

    Stands in the payload instead of a `str`, so the base64 text exists once, in the body.
    """

    loaded: LoadedMedia

    def data_uri(self) -> str:
        return self.loaded.data_uri()


async def encode_json(payload: dict[str, Any]) -> bytes | tuple[bytes, ...]:
    """The request body as compact JSON bytes.

    Inline media is written around the JSON of everything else: its base64 text goes in as bytes
    (base64 and a mime type need no JSON escaping), never through `json.dumps`. Large bodies are
    built in a worker thread whose every step is short (slices of base64, one join), so the event
    loop keeps running meanwhile. A large body comes as a tuple of pieces, written to the socket
    one after another and never joined (one copy of the base64 in memory, not two).
    """
    inline: list[InlineMedia] = []
    nonce = secrets.token_hex(8)

    def mark(value: Any) -> Any:
        if isinstance(value, InlineMedia):
            inline.append(value)
            return f"\x00{nonce}:{len(inline) - 1}\x00"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [mark(v) for v in value]
        return value

    skeleton = json.dumps(mark(payload), separators=(",", ":"))
    if not inline:
        return skeleton.encode()

    def build() -> tuple[bytes, ...]:
        parts: list[bytes] = []
        rest = skeleton
        for index, media in enumerate(inline):
            token = f'"\\u0000{nonce}:{index}\\u0000"'
            before, _, rest = rest.partition(token)
            parts += (before.encode(), b'"data:', media.loaded.mime.encode("ascii"), b";base64,")
            parts += media.loaded.base64_chunks()
            parts.append(b'"')
        parts.append(rest.encode())
        return tuple(parts)

    def build_locked() -> tuple[bytes, ...]:
        with CPU_LOCK:
            return build()

    size = sum(media.loaded.size for media in inline)
    if size > THREAD_THRESHOLD:
        return await anyio.to_thread.run_sync(build_locked)
    return b"".join(build())
