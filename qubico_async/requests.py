"""Task requests as frozen attrs classes, and how each becomes a unified-API payload."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

from attrs import field, frozen

from .errors import InvalidInputError
from .media import Image, Video, _Media
from .models import WebhookConfig

__all__ = [
    "FaceSwap",
    "MultiFaceSwap",
    "Prepared",
    "RawTask",
    "Request",
    "RequestLike",
    "VideoFaceSwap",
    "coerce_request",
    "fingerprint",
]

MediaResolver = Callable[[_Media], Awaitable[Any]]
"""Turns a media source into what the service receives: a URL, or inline content (written into
the body as a data URI by `_payloads.encode_json`)."""

IMAGE_MODEL = "Qubico/image-toolkit"
VIDEO_MODEL = "Qubico/video-toolkit"


def _face_indices(value: Iterable[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise InvalidInputError("face indices must be a list of ints such as [0, 1], not a string")
    out = tuple(value)
    for index in out:
        if isinstance(index, bool) or not isinstance(index, int):
            raise InvalidInputError(f"face index {index!r} is not an int")
        if index < 0:
            raise InvalidInputError(f"face index {index} is negative; indices start at 0")
    return out


def _to_image(value: object) -> Image:
    return Image.coerce(value)


def _to_video(value: object) -> Video:
    return Video.coerce(value)


def _check_pairs(swap_faces: tuple[int, ...], target_faces: tuple[int, ...]) -> None:
    if len(swap_faces) != len(target_faces):
        raise InvalidInputError(
            f"swap_faces has {len(swap_faces)} indices but target_faces has {len(target_faces)}: "
            "they pair up one to one"
        )


def _config(webhook: WebhookConfig | None, service_mode: str | None) -> dict[str, Any] | None:
    config: dict[str, Any] = {}
    if webhook is not None:
        config["webhook_config"] = {"endpoint": webhook.endpoint, "secret": webhook.secret}
    if service_mode is not None:
        config["service_mode"] = service_mode
    return config or None


def _payload(model: str, task_type: str, inputs: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "task_type": task_type, "input": inputs}
    if config:
        payload["config"] = config
    return payload


def _indices(inputs: dict[str, Any], swap_faces: tuple[int, ...], target_faces: tuple[int, ...]) -> None:
    if swap_faces:
        inputs["swap_faces_index"] = ",".join(map(str, swap_faces))
        inputs["target_faces_index"] = ",".join(map(str, target_faces))


@frozen
class FaceSwap:
    """Replace the largest face in `target` with the largest face in `swap` ($0.01)."""

    target: Image = field(converter=_to_image)
    swap: Image = field(converter=_to_image)
    webhook: WebhookConfig | None = field(default=None, kw_only=True)
    service_mode: str | None = field(default=None, kw_only=True)

    model: ClassVar[str] = IMAGE_MODEL
    task_type: ClassVar[str] = "face-swap"

    async def build(self, resolve: MediaResolver) -> dict[str, Any]:
        inputs = {"target_image": await resolve(self.target), "swap_image": await resolve(self.swap)}
        return _payload(self.model, self.task_type, inputs, _config(self.webhook, self.service_mode))


@frozen
class MultiFaceSwap:
    """Put face `swap_faces[i]` of `swap` onto face `target_faces[i]` of `target` ($0.015).

    Faces are numbered from 0 in the service's own order (usually left to right). Indices are
    sent as the documented comma-separated strings (`[0, 1]` -> `"0,1"`).
    """

    target: Image = field(converter=_to_image)
    swap: Image = field(converter=_to_image)
    swap_faces: tuple[int, ...] = field(converter=_face_indices)
    target_faces: tuple[int, ...] = field(converter=_face_indices)
    webhook: WebhookConfig | None = field(default=None, kw_only=True)
    service_mode: str | None = field(default=None, kw_only=True)

    model: ClassVar[str] = IMAGE_MODEL
    task_type: ClassVar[str] = "multi-face-swap"

    def __attrs_post_init__(self) -> None:
        _check_pairs(self.swap_faces, self.target_faces)
        if not self.swap_faces:
            raise InvalidInputError("multi-face swap needs at least one (swap_faces, target_faces) pair")

    async def build(self, resolve: MediaResolver) -> dict[str, Any]:
        inputs = {"target_image": await resolve(self.target), "swap_image": await resolve(self.swap)}
        _indices(inputs, self.swap_faces, self.target_faces)
        return _payload(self.model, self.task_type, inputs, _config(self.webhook, self.service_mode))


@frozen
class VideoFaceSwap:
    """Swap the face of `swap` into every frame of `target_video` (MP4, at most 600 frames).

    Billed per frame processed. Optional `swap_faces`/`target_faces` pair faces as in
    `MultiFaceSwap`.
    """

    target_video: Video = field(converter=_to_video)
    swap: Image = field(converter=_to_image)
    swap_faces: tuple[int, ...] = field(default=(), converter=_face_indices)
    target_faces: tuple[int, ...] = field(default=(), converter=_face_indices)
    webhook: WebhookConfig | None = field(default=None, kw_only=True)
    service_mode: str | None = field(default=None, kw_only=True)

    model: ClassVar[str] = VIDEO_MODEL
    task_type: ClassVar[str] = "face-swap"

    def __attrs_post_init__(self) -> None:
        _check_pairs(self.swap_faces, self.target_faces)

    async def build(self, resolve: MediaResolver) -> dict[str, Any]:
        inputs = {"target_video": await resolve(self.target_video), "swap_image": await resolve(self.swap)}
        _indices(inputs, self.swap_faces, self.target_faces)
        return _payload(self.model, self.task_type, inputs, _config(self.webhook, self.service_mode))


@frozen(kw_only=True)
class RawTask:
    """Any unified-API task (`model`, `task_type`, `input`), for PiAPI models without a typed class.

    Values in `input` are sent as given; `Image`/`Video` values are resolved like typed requests.
    """

    model: str
    task_type: str
    input: Mapping[str, Any] = field(factory=dict)
    webhook: WebhookConfig | None = None
    service_mode: str | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise InvalidInputError("RawTask.model must be a non-empty string")
        if not isinstance(self.task_type, str) or not self.task_type:
            raise InvalidInputError("RawTask.task_type must be a non-empty string")
        if not isinstance(self.input, Mapping):
            raise InvalidInputError("RawTask.input must be a mapping")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RawTask:
        """From a unified-API body: `{"model", "task_type", "input", "config"?}`."""
        unknown = set(data) - {"model", "task_type", "input", "config"}
        if unknown:
            raise InvalidInputError(f"unknown task keys: {', '.join(sorted(unknown))}")
        config = data.get("config") or {}
        hook = config.get("webhook_config") if isinstance(config, Mapping) else None
        webhook = WebhookConfig(hook["endpoint"], hook.get("secret", "")) if hook and hook.get("endpoint") else None
        return cls(
            model=data.get("model", ""),
            task_type=data.get("task_type", ""),
            input=data.get("input") or {},
            webhook=webhook,
            service_mode=config.get("service_mode") if isinstance(config, Mapping) else None,
        )

    async def build(self, resolve: MediaResolver) -> dict[str, Any]:
        inputs = {k: (await resolve(v) if isinstance(v, _Media) else v) for k, v in self.input.items()}
        return _payload(self.model, self.task_type, inputs, _config(self.webhook, self.service_mode))


Request = FaceSwap | MultiFaceSwap | VideoFaceSwap | RawTask
"""A typed task request."""
RequestLike = Request | Mapping[str, Any]
"""What `submit` takes: a typed request, or a unified-API dict (`{"model", "task_type", "input"}`)."""


@frozen
class Prepared:
    """A request checked, loaded and encoded, ready for the paid POST.

    `identity` hashes the content (not the wire form), so it is stable across runs even when
    media goes by upload URL one time and inline the next.
    """

    request: Request
    payload: dict[str, Any] = field(repr=False)
    identity: str
    frames: int | None = None


def fingerprint(payload: Mapping[str, Any]) -> str:
    """A stable hash of a create payload, without the webhook secret."""
    cleaned = dict(payload)
    config = cleaned.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("webhook_config"), Mapping):
        hook = {k: v for k, v in config["webhook_config"].items() if k != "secret"}
        cleaned["config"] = {**config, "webhook_config": hook}
    canonical = json.dumps(cleaned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def coerce_request(value: RequestLike | object) -> Request:
    """A typed request, a `RawTask`, or a unified-API dict."""
    if isinstance(value, (FaceSwap, MultiFaceSwap, VideoFaceSwap, RawTask)):
        return value
    if isinstance(value, Mapping):
        return RawTask.from_dict(value)
    raise InvalidInputError(
        f"cannot submit a {type(value).__name__}: "
        "use FaceSwap, MultiFaceSwap, VideoFaceSwap, RawTask or a unified-API dict"
    )
