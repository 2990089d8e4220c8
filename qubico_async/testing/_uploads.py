"""The File Upload API (ephemeral resources), as the emulator's upload site serves it.

`POST /api/ephemeral_resource` with `{"file_name", "file_data"}` stores the file for 24 hours (on the
emulator clock) and answers its URL, `<upload_url>/files/<uuid>/<file_name>`. The rules, from the docs:
the name ends (case-insensitively) in a supported extension and has at most 128 characters; the data
is base64, optionally behind a data-URI prefix whose content type matches the extension's; at most
10 MiB decoded. Anything else is a 400 "Invalid request parameters: <why>".

Also here: guessing a name and content type for `Emulator.host_file`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any, Final
from urllib.parse import quote

import anyio.to_thread
from attrs import frozen

from ._faults import UploadUrlStyle
from ._mediacheck import MAX_BYTES, guess_type
from ._state import FileStore
from ._validation import ValidationError

__all__ = [
    "CONTENT_TYPES",
    "MAX_FILE_NAME",
    "UPLOAD_PATH",
    "UPLOAD_TTL_SECONDS",
    "Upload",
    "sniff",
    "store_upload",
    "upload_answer",
    "validate_upload",
]

UPLOAD_PATH: Final = "/api/ephemeral_resource"
UPLOAD_TTL_SECONDS: Final = 24 * 3600.0
"""Uploaded files are deleted this long after the upload."""
MAX_FILE_NAME: Final = 128
INVALID: Final = "Invalid request parameters"

CONTENT_TYPES: Final[dict[str, str]] = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
}
"""Supported extensions and the content type each is served with."""

_ALIASES: Final[dict[str, frozenset[str]]] = {
    "image/jpeg": frozenset({"image/jpeg", "image/jpg", "image/pjpeg"}),
    "audio/wav": frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}),
    "audio/mpeg": frozenset({"audio/mpeg", "audio/mp3", "audio/mpeg3", "audio/x-mpeg-3"}),
}
"""Data-URI content types accepted as the same type (the canonical one is always accepted)."""

_DATA_URI = re.compile(r"data:(?P<mime>[^,;]*)(?P<params>(?:;[^,;]*)*),(?P<payload>.*)", re.DOTALL)
_THREAD_THRESHOLD = 256 * 1024
"""Bodies larger than this are parsed and decoded off the event loop."""


@frozen
class Upload:
    """A valid upload request, decoded."""

    file_name: str
    data: bytes
    content_type: str


def _invalid(why: str) -> ValidationError:
    return ValidationError(f"{INVALID}: {why}")


async def validate_upload(body: bytes) -> Upload:
    """Parse and check an upload request body; a ValidationError carries the 400 message."""
    if len(body) > _THREAD_THRESHOLD:
        return await anyio.to_thread.run_sync(_validate_sync, body)
    return _validate_sync(body)


def _validate_sync(body: bytes) -> Upload:
    try:
        payload = json.loads(body)
    except ValueError:
        raise _invalid("request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise _invalid("request body must be a JSON object")
    name, data = payload.get("file_name"), payload.get("file_data")
    if not isinstance(name, str) or not name:
        raise _invalid("file_name is required and must be a string")
    if len(name) > MAX_FILE_NAME:
        raise _invalid(f"file_name is {len(name)} characters long; max {MAX_FILE_NAME}")
    if "/" in name or "\\" in name or any(ord(c) < 32 for c in name):
        raise _invalid("file_name must be a plain file name (no path separators or control characters)")
    ext = next((e for e in CONTENT_TYPES if name.lower().endswith(e)), None)
    if ext is None:
        raise _invalid(f"file_name must end in one of {', '.join(CONTENT_TYPES)}")
    content_type = CONTENT_TYPES[ext]
    if not isinstance(data, str) or not data:
        raise _invalid("file_data is required and must be a base64 string")
    return Upload(name, _decode(data, ext, content_type), content_type)


def _decode(value: str, ext: str, content_type: str) -> bytes:
    payload = value
    if value[:5].lower() == "data:":
        match = _DATA_URI.fullmatch(value)
        if match is None or "base64" not in (p.strip().lower() for p in match["params"].split(";")):
            raise _invalid("file_data data URI must look like data:<type>;base64,<data>")
        given = match["mime"].strip().lower()
        if given not in _ALIASES.get(content_type, frozenset({content_type})):
            raise _invalid(f"file_data content type {given or '(none)'} does not match {ext} ({content_type})")
        payload = match["payload"]
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > MAX_BYTES + 2:
        raise _invalid(f"file_data is larger than {MAX_BYTES} bytes (10 MiB)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("file_data is not valid base64") from None
    if not data:
        raise _invalid("file_data is empty")
    if len(data) > MAX_BYTES:
        raise _invalid(f"file_data is {len(data)} bytes; max {MAX_BYTES} (10 MiB)")
    return data


def store_upload(files: FileStore, upload: Upload, upload_url: str) -> str:
    """Keep the file for `UPLOAD_TTL_SECONDS` and return its URL on the upload site."""
    folder = uuid.uuid4().hex
    files.put(f"/files/{folder}/{upload.file_name}", upload.data, upload.content_type, ttl=UPLOAD_TTL_SECONDS)
    return f"{upload_url}/files/{folder}/{quote(upload.file_name)}"


def upload_answer(url: str, style: UploadUrlStyle, code: int = 200) -> dict[str, Any]:
    """The success body: `data.url` as documented, or the top-level `url` variant."""
    if style == "top-level":
        return {"code": code, "url": url, "message": "success"}
    return {"code": code, "data": {"url": url}, "message": "success"}


def sniff(data: bytes) -> tuple[str, str]:
    """(extension, content type) of a file to host."""
    return guess_type(data)
