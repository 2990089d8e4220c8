"""Validation of a create-task request body, as the emulator's `POST /api/v1/task` does it.

Inline media (base64 or data URI) is decoded and probed here, so a bad file is a 400 and no task is
stored. URL media is only checked for shape; it is fetched (from this emulator only) at processing
time. Large bodies are parsed and decoded in a worker thread so the event loop stays responsive.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from attrs import frozen

from ._imagecheck import judge_image as _judge_image
from ._imagecheck import read_image
from ._mediacheck import MAX_BYTES, MAX_FRAMES, MAX_SIDE, MediaRejected
from ._pricing import PRICES, VIDEO_MODEL
from ._videocheck import read_video

__all__ = [
    "CreateRequest",
    "ValidationError",
    "check_image",
    "check_video",
    "parse_indices",
    "validate_create",
]

_THREAD_THRESHOLD = 256 * 1024
"""Bodies larger than this are parsed and decoded off the event loop."""

_DATA_URI = re.compile(r"data:(?P<mime>[^,;]*)(?P<params>(?:;[^,;]*)*),(?P<payload>.*)", re.DOTALL)
_INDICES = re.compile(r"\s*\d+\s*(?:,\s*\d+\s*)*")


class ValidationError(Exception):
    """The request is invalid: the message is what the 400 envelope says."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@frozen
class CreateRequest:
    model: str
    task_type: str
    input: dict[str, Any]
    config: dict[str, Any]
    """The config as it is echoed: webhook_config always present, service_mode when sent."""
    media: dict[str, bytes]
    swap_faces_index: tuple[int, ...]
    target_faces_index: tuple[int, ...]
    frames: int | None


def media_fields(model: str) -> tuple[str, str]:
    """(target field, swap field) for a model."""
    return ("target_video", "swap_image") if model == VIDEO_MODEL else ("target_image", "swap_image")


async def validate_create(body: bytes) -> CreateRequest:
    if len(body) > _THREAD_THRESHOLD:
        return await anyio.to_thread.run_sync(_validate_sync, body)
    return _validate_sync(body)


def _validate_sync(body: bytes) -> CreateRequest:
    try:
        payload = json.loads(body)
    except ValueError:
        raise ValidationError("request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ValidationError("request body must be a JSON object")

    model, task_type = payload.get("model"), payload.get("task_type")
    if not isinstance(model, str) or not model:
        raise ValidationError("model is required")
    if not isinstance(task_type, str) or not task_type:
        raise ValidationError("task_type is required")
    if (model, task_type) not in PRICES:
        known = ", ".join(f"{m}/{t}" for m, t in PRICES)
        raise ValidationError(f"unsupported model/task_type {model}/{task_type}; expected one of: {known}")

    inputs = payload.get("input")
    if not isinstance(inputs, dict):
        raise ValidationError("input is required and must be an object")

    config = _config(payload.get("config"))

    target_field, swap_field = media_fields(model)
    for name in (target_field, swap_field):
        value = inputs.get(name)
        if value is None or value == "":
            raise ValidationError(f"input.{name} is required")
        if not isinstance(value, str):
            raise ValidationError(f"input.{name} must be a string: an http(s) URL or base64")

    swap_index = parse_indices(inputs.get("swap_faces_index"), "swap_faces_index")
    target_index = parse_indices(inputs.get("target_faces_index"), "target_faces_index")
    if swap_index and target_index and len(swap_index) != len(target_index):
        raise ValidationError(
            f"swap_faces_index and target_faces_index must list the same number of faces "
            f"({len(swap_index)} != {len(target_index)})"
        )

    media: dict[str, bytes] = {}
    frames: int | None = None
    for name in (target_field, swap_field):
        data = _decode_media(inputs[name], name)
        if data is None:
            continue
        if name == "target_video":
            frames = check_video(data, name)
        else:
            check_image(data, name)
        media[name] = data

    return CreateRequest(
        model=model,
        task_type=task_type,
        input=inputs,
        config=config,
        media=media,
        swap_faces_index=swap_index,
        target_faces_index=target_index,
        frames=frames,
    )


def _config(raw: object) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationError("config must be an object")
    hook = raw.get("webhook_config")
    if hook is None:
        hook = {}
    if not isinstance(hook, dict):
        raise ValidationError("config.webhook_config must be an object")
    endpoint, secret = hook.get("endpoint", ""), hook.get("secret", "")
    if not isinstance(endpoint, str) or not isinstance(secret, str):
        raise ValidationError("config.webhook_config.endpoint and .secret must be strings")
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValidationError("config.webhook_config.endpoint must be an http(s) URL")
    echoed: dict[str, Any] = {}
    mode = raw.get("service_mode")
    if mode is not None:
        if not isinstance(mode, str):
            raise ValidationError("config.service_mode must be a string")
        echoed["service_mode"] = mode
    echoed["webhook_config"] = {"endpoint": endpoint, "secret": secret}
    return echoed


def parse_indices(raw: object, name: str) -> tuple[int, ...]:
    """ "0,1" -> (0, 1). Absent or "" -> (). Anything else is a ValidationError."""
    if raw is None or raw == "":
        return ()
    if not isinstance(raw, str) or not _INDICES.fullmatch(raw):
        raise ValidationError(f'{name} must be a string of comma-separated face indices like "0,1"')
    return tuple(int(part) for part in raw.split(","))


def _decode_media(value: str, name: str) -> bytes | None:
    """Decode an inline value; None for a URL (kept as is)."""
    head = value[:8].lower()
    if head.startswith(("http://", "https://")):
        if not urlsplit(value).hostname:
            raise ValidationError(f"{name} is not a valid URL")
        return None
    if head.startswith("data:"):
        match = _DATA_URI.fullmatch(value)
        if match is None or "base64" not in (p.strip().lower() for p in match["params"].split(";")):
            raise ValidationError(f"invalid data URI in {name}: expected data:<type>;base64,<data>")
        payload = match["payload"]
    else:
        payload = value
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > MAX_BYTES + 2:
        raise ValidationError(f"{name} is larger than {MAX_BYTES} bytes (10 MiB)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(f"invalid base64 in {name}") from None
    if not data:
        raise ValidationError(f"invalid base64 in {name}: no data")
    if len(data) > MAX_BYTES:
        raise ValidationError(f"{name} is {len(data)} bytes; max {MAX_BYTES} (10 MiB)")
    return data


def check_image(data: bytes, name: str) -> None:
    """Raise ValidationError if `data` is not an acceptable image (the emulator's own judge)."""
    if len(data) > MAX_BYTES:
        raise ValidationError(f"{name} is {len(data)} bytes; max {MAX_BYTES} (10 MiB)")
    try:
        facts = read_image(data)
    except MediaRejected as exc:
        raise ValidationError(f"{name} is not a supported image (JPEG, PNG or WebP): {exc.message}") from None
    if facts.width > MAX_SIDE or facts.height > MAX_SIDE:
        raise ValidationError(f"{name} is {facts.width}x{facts.height}; max {MAX_SIDE}x{MAX_SIDE}")
    try:
        _judge_image(data)
    except MediaRejected as exc:
        raise ValidationError(f"{name} is not a valid image: {exc.message}") from None


def check_video(data: bytes, name: str) -> int | None:
    """Raise ValidationError if `data` is not an acceptable video; else its frame count, if known."""
    if len(data) > MAX_BYTES:
        raise ValidationError(f"{name} is {len(data)} bytes; max {MAX_BYTES} (10 MiB)")
    try:
        facts = read_video(data)
    except MediaRejected as exc:
        raise ValidationError(f"{name} is not a supported video (MP4): {exc.message}") from None
    if facts.frames is not None and facts.frames > MAX_FRAMES:
        raise ValidationError(f"{name} has {facts.frames} frames; max {MAX_FRAMES}")
    return facts.frames
