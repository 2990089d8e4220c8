"""Format, pixel size and frame count from a media file's header, without decoding pixels.

Used to reject bad inputs locally (nothing paid for) before an upload. Standard library only.
Truncated or hostile bytes raise `InvalidInputError`, never anything else, and never hang:
every loop advances by at least one byte and every read is bounds-checked first.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any, Literal

from attrs import frozen

from .errors import InvalidInputError

MAX_IMAGE_SIDE = 2048
"""Largest accepted width or height, inclusive: 2048x2048 passes, 2049 fails."""
MAX_MEDIA_BYTES = 10 * 1024 * 1024
MAX_VIDEO_FRAMES = 600

ImageFormat = Literal["jpeg", "png", "webp"]


@frozen
class ImageInfo:
    """What an image header says: its format and pixel size."""

    format: ImageFormat
    width: int
    height: int

    @property
    def mime(self) -> str:
        return f"image/{self.format}"


@frozen
class VideoInfo:
    """What an MP4 header says; None where the file does not say (no `moov`, fragmented MP4)."""

    format: Literal["mp4"]
    width: int | None
    height: int | None
    frames: int | None

    @property
    def mime(self) -> str:
        return "video/mp4"


_PREVIEW = 8
_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WebP"}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
# Formats we recognise only to name them in the error message.
_UNSUPPORTED: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"8BPS", 0, "PSD"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftyp", 4, "MP4/QuickTime video"),
    (b"RIFF", 0, "RIFF (AVI/WAV)"),
)
# SOF0-SOF15 minus DHT (C4), JPG (C8) and DAC (CC): the markers whose segment holds the frame size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# The last 0xFF of a run (earlier ones are fill bytes) and a marker code that has a length field:
# not 0x00 (stuffing), TEM, RST0-7 or SOI, which are skipped like stray bytes. No quantifier, so the
# search stays linear in C even on megabytes of 0xFF or RST markers.
_MARKER = re.compile(rb"\xff([^\x00\x01\xd0-\xd8\xff])")
# Real files have a few dozen segments before the frame header; this bounds hostile input.
_MAX_JPEG_SEGMENTS = 10_000


def _preview(data: bytes) -> str:
    """The first few bytes, for "not a ..." messages (short: the caller adds the file name)."""
    return repr(bytes(data[:_PREVIEW]))


def _unpack(fmt: str, data: bytes, off: int, what: str) -> tuple[Any, ...]:
    """`struct.unpack_from` that raises `InvalidInputError("truncated <what>")` instead of reading short."""
    if off + struct.calcsize(fmt) > len(data):
        raise InvalidInputError(f"truncated {what}")
    return struct.unpack_from(fmt, data, off)


def _image(fmt: ImageFormat, width: int, height: int) -> ImageInfo:
    """`ImageInfo`, rejecting a zero size (no decoder accepts it)."""
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"{_NAMES[fmt]} header says the image is {width}x{height} pixels")
    return ImageInfo(fmt, width, height)


def probe_image(data: bytes) -> ImageInfo:
    """Format and pixel size of a JPEG, PNG or WebP image, read from its header only."""
    if not data:
        raise InvalidInputError("empty")
    if data[:2] == b"\xff\xd8":
        return _probe_jpeg(data)
    if data[:8] == _PNG_SIG:
        return _probe_png(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _probe_webp(data)
    for magic, at, name in _UNSUPPORTED:
        if data[at : at + len(magic)] == magic:
            raise InvalidInputError(f"{name} is not a supported image format (use JPEG, PNG or WebP)")
    raise InvalidInputError(f"not a JPEG, PNG or WebP image (starts with {_preview(data)})")


def check_image_complete(data: bytes, info: ImageInfo) -> None:
    """Refuse a file the service cannot decode although its header reads: cut short, or image
    data that does not match the header (the service answers "failed to get valid image")."""
    if info.format == "jpeg":
        _check_jpeg_complete(data)
    elif info.format == "png":
        _check_png_complete(data, info)
    else:
        _check_webp_complete(data)


def check_image_tail(head: bytes, tail: bytes, size: int, info: ImageInfo) -> None:
    """What a large file shows from its start and end alone (inline base64 decoded in slices): a
    JPEG's end-of-image marker, a PNG's IEND chunk, a WebP as long as its RIFF header says.
    `size` is the whole file's length."""
    if info.format == "jpeg":
        if b"\xff\xd9" not in tail:
            raise InvalidInputError("truncated JPEG (no end-of-image marker after the image data)")
    elif info.format == "png":
        if b"IEND\xaeB`\x82" not in tail:
            raise InvalidInputError("truncated PNG (no IEND chunk)")
    else:
        (riff_size,) = struct.unpack_from("<I", head, 4)
        if riff_size + 8 > size:
            raise InvalidInputError(f"truncated WebP (the file has {size} bytes, its header says {riff_size + 8})")


def _check_jpeg_complete(data: bytes) -> None:
    """Image data (SOS) must follow the header, and an end-of-image marker must follow it."""
    scan = data.find(b"\xff\xda")
    if scan < 0:
        raise InvalidInputError("truncated JPEG (no image data after the header)")
    if data.rfind(b"\xff\xd9") < scan:
        raise InvalidInputError("truncated JPEG (no end-of-image marker after the image data)")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_size(width: int, height: int, depth: int, color: int, interlace: int) -> int | None:
    """Bytes the inflated image data must hold (filter byte per row), or None if unknown."""
    channels = _PNG_CHANNELS.get(color)
    if channels is None or depth not in (1, 2, 4, 8, 16):
        return None
    bits = depth * channels

    def rows(w: int, h: int) -> int:
        return h * ((w * bits + 7) // 8 + 1) if w > 0 and h > 0 else 0

    if interlace == 0:
        return rows(width, height)
    return sum(rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7)


def _check_png_complete(data: bytes, info: ImageInfo) -> None:
    """Chunks up to IEND, and image data that inflates to exactly the size IHDR declares."""
    depth, color, _comp, _filter, interlace = data[24:29]
    expected = _png_raw_size(info.width, info.height, depth, color, interlace)
    inflater = zlib.decompressobj()
    produced = 0
    pos = 8
    while True:
        if pos + 8 > len(data):
            raise InvalidInputError("truncated PNG (no IEND chunk)")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise InvalidInputError(f"truncated PNG (the {ctype.decode('latin-1')!r} chunk is cut short)")
        if ctype == b"IEND":
            break
        if ctype == b"IDAT" and expected is not None:
            chunk = data[pos + 8 : pos + 8 + length]
            try:
                while chunk:  # count the inflated bytes without keeping them (bounded memory)
                    produced += len(inflater.decompress(chunk, 1 << 20))
                    chunk = inflater.unconsumed_tail
                    if produced > expected:
                        break
            except zlib.error as exc:
                raise InvalidInputError(f"corrupt PNG (image data does not inflate: {exc})") from None
        pos = end
    if expected is not None and produced != expected:
        raise InvalidInputError(
            f"corrupt PNG (the image data holds {produced} bytes; "
            f"its {info.width}x{info.height} header needs {expected})"
        )


def _check_webp_complete(data: bytes) -> None:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if riff_size + 8 > len(data):
        raise InvalidInputError(f"truncated WebP (the file has {len(data)} bytes, its header says {riff_size + 8})")


def _probe_jpeg(data: bytes) -> ImageInfo:
    """Walk the marker segments after SOI until a SOFn segment, skipping fill bytes.

    Like libjpeg, stray bytes between segments are skipped to the next marker.
    """
    pos = 2
    for _ in range(_MAX_JPEG_SEGMENTS):
        m = _MARKER.search(data, pos)
        if m is None:
            raise InvalidInputError("truncated JPEG (no frame header found)")
        marker, pos = m.group(1)[0], m.end()
        if marker in (0xD9, 0xDA):
            raise InvalidInputError("corrupt JPEG (no frame header before the image data)")
        (length,) = _unpack(">H", data, pos, "JPEG")
        if length < 2:
            raise InvalidInputError(f"corrupt JPEG (segment length {length})")
        if marker in _SOF:
            if length < 8:
                raise InvalidInputError(f"corrupt JPEG (frame header length {length})")
            height, width = _unpack(">HH", data, pos + 3, "JPEG")
            return _image("jpeg", width, height)
        pos += length
    raise InvalidInputError("corrupt JPEG (too many segments before the frame header)")


def _probe_png(data: bytes) -> ImageInfo:
    """Size from the IHDR chunk, which PNG requires to come first."""
    length, ctype, width, height = _unpack(">I4sII", data, 8, "PNG")
    if ctype != b"IHDR" or length != 13:
        raise InvalidInputError("corrupt PNG (first chunk is not IHDR)")
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise InvalidInputError("corrupt PNG (size out of range)")
    return _image("png", width, height)


def _probe_webp(data: bytes) -> ImageInfo:
    """Size from the first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended)."""
    ctype, csize = _unpack("<4sI", data, 12, "WebP")
    body = 20
    if ctype == b"VP8 ":
        if csize < 10:
            raise InvalidInputError("corrupt WebP (VP8 chunk too small)")
        tag, start, w, h = _unpack("<B2x3sHH", data, body, "WebP")
        if tag & 1 or start != b"\x9d\x01\x2a":
            raise InvalidInputError("corrupt WebP (VP8 data is not a key frame)")
        return _image("webp", w & 0x3FFF, h & 0x3FFF)
    if ctype == b"VP8L":
        if csize < 5:
            raise InvalidInputError("corrupt WebP (VP8L chunk too small)")
        sig, bits = _unpack("<BI", data, body, "WebP")
        if sig != 0x2F:
            raise InvalidInputError("corrupt WebP (bad VP8L signature)")
        return _image("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if ctype == b"VP8X":
        if csize < 10:
            raise InvalidInputError("corrupt WebP (VP8X chunk too small)")
        w0, w1, h0, h1 = _unpack("<HBHB", data, body + 4, "WebP")
        return _image("webp", (w0 | w1 << 16) + 1, (h0 | h1 << 16) + 1)
    raise InvalidInputError(f"unsupported WebP chunk {bytes(ctype)!r}")


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Yield (type, payload start, box end) for each box in data[start:end] (end <= len(data)).

    Each box is at least 8 bytes and must fit its parent, so the walk always progresses.
    """
    pos = start
    while pos < end:
        if end - pos < 8:
            raise InvalidInputError("truncated or corrupt MP4 (box header runs past its parent)")
        size, btype = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise InvalidInputError("truncated or corrupt MP4 (box header runs past its parent)")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or size > end - pos:
            why = "is too small" if size < header else "runs past its parent"
            raise InvalidInputError(f"truncated or corrupt MP4 (box {bytes(btype)!r} {why})")
        yield btype, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, btype: bytes) -> tuple[int, int] | None:
    """(payload start, end) of the first child box of type `btype`, or None."""
    for t, s, e in _boxes(data, start, end):
        if t == btype:
            return s, e
    return None


def _path(data: bytes, start: int, end: int, *types: bytes) -> tuple[int, int] | None:
    """Follow a fixed path of box types: no recursion, so depth is bounded by the path."""
    span: tuple[int, int] | None = (start, end)
    for t in types:
        if span is None:
            return None
        span = _child(data, span[0], span[1], t)
    return span


def probe_video(data: bytes) -> VideoInfo:
    """Size and frame count of an MP4's first video track, read from `moov` only."""
    if not data:
        raise InvalidInputError("empty")
    if data[4:8] != b"ftyp":
        raise InvalidInputError(f"not an MP4 video (starts with {_preview(data)})")
    moov = _child(data, 0, len(data), b"moov")
    if moov is None:
        return VideoInfo("mp4", None, None, None)
    fragmented = _child(data, *moov, b"mvex") is not None
    for t, s, e in _boxes(data, *moov):
        if t != b"trak":
            continue
        hdlr = _path(data, s, e, b"mdia", b"hdlr")
        if hdlr is None:
            continue
        _full_box(data, hdlr, 8, "hdlr")
        if data[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
            continue
        width, height = _track_size(data, s, e)
        stbl = _path(data, s, e, b"mdia", b"minf", b"stbl")
        frames = None if fragmented or stbl is None else _frame_count(data, *stbl)
        return VideoInfo("mp4", width, height, frames)
    raise InvalidInputError("MP4 has no video track")


def _full_box(data: bytes, span: tuple[int, int], need: int, name: str) -> int:
    """Version of a full box whose payload must hold `need` bytes (after version and flags)."""
    if span[1] - span[0] < 4 + need:
        raise InvalidInputError(f"truncated or corrupt MP4 ({name} box too small)")
    return data[span[0]]


def _track_size(data: bytes, trak: int, end: int) -> tuple[int | None, int | None]:
    """Width and height from `tkhd` (16.16 fixed point), else from the first visual sample entry."""
    tkhd = _child(data, trak, end, b"tkhd")
    if tkhd is not None:
        version = _full_box(data, tkhd, 80, "tkhd")
        if version > 1:
            raise InvalidInputError(f"corrupt MP4 (tkhd version {version})")
        off = tkhd[0] + (88 if version == 1 else 76)
        if off + 8 > tkhd[1]:
            raise InvalidInputError("truncated or corrupt MP4 (tkhd box too small)")
        w, h = ((v + 0x8000) >> 16 for v in struct.unpack_from(">II", data, off))
        if w and h:
            return w, h
    stsd = _path(data, trak, end, b"mdia", b"minf", b"stbl", b"stsd")
    if stsd is not None and stsd[1] - stsd[0] >= 8 + 8 + 28:
        # full box header, entry count, sample entry header, then 24 bytes before width and height
        w, h = struct.unpack_from(">HH", data, stsd[0] + 8 + 8 + 24)
        if w and h:
            return w, h
    return None, None


def _frame_count(data: bytes, start: int, end: int) -> int | None:
    """Sample count from `stsz`/`stz2`, else the sum of `stts` entries; None if neither exists."""
    for name in (b"stsz", b"stz2"):
        span = _child(data, start, end, name)
        if span is not None:
            _full_box(data, span, 8, name.decode())
            return int.from_bytes(data[span[0] + 8 : span[0] + 12], "big")
    stts = _child(data, start, end, b"stts")
    if stts is None:
        return None
    _full_box(data, stts, 4, "stts")
    count = int.from_bytes(data[stts[0] + 4 : stts[0] + 8], "big")
    if count > (stts[1] - stts[0] - 8) // 8:
        raise InvalidInputError("truncated or corrupt MP4 (stts entry count runs past its box)")
    return int(sum(struct.unpack_from(f">{2 * count}I", data, stts[0] + 8)[::2]))
