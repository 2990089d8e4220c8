"""The ground the emulator's media judges stand on: the documented limits and `MediaRejected`.

The judges (`_imagecheck` for images, `_videocheck` for MP4) are written apart from the SDK's
pre-check (`qubico_async._mediainfo`) on purpose, so the two can be cross-checked: a file they
disagree on is a bug in one of them. The rules are the documented limits (piapi-api.md §2-§4: JPEG,
PNG or WebP images at most 2048x2048 pixels, MP4 videos at most 600 frames, at most 10 MB each) plus
"the file must decode". Hostile input raises `MediaRejected`, never anything else: every read is
bounds-checked (`need`) and every loop is bounded by the input's length.

Also here: `guess_type`, the extension and content type a file is served with, from its first bytes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_BYTES", "MAX_FRAMES", "MAX_SIDE", "MediaRejected", "guess_type", "need"]

MAX_SIDE: Final = 2048
"""Largest width or height the service takes, inclusive (piapi-api.md §2.1 "under 2048x2048")."""
MAX_BYTES: Final = 10 * 1024 * 1024
"""Largest input file, inclusive (piapi-api.md §3.1 / §4.2 "max 10 MB")."""
MAX_FRAMES: Final = 600
"""Most frames in a target video (piapi-api.md §4.2)."""


class MediaRejected(Exception):
    """The input is not acceptable; `message` says why (short, no file name)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise MediaRejected(f"truncated {what}")


def guess_type(data: bytes) -> tuple[str, str]:
    """(extension, content type) to serve a file with, from its first bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg", "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    if data[4:8] == b"ftyp":
        return "mp4", "video/mp4"
    return "bin", "application/octet-stream"
