"""The emulator's own judge of image inputs, as the service judges them: is this a usable image?

JPEG, PNG or WebP, at most 2048x2048 pixels and 10 MB, and the file must decode: the whole file is
walked, not only its header, so truncated files, broken chunk checksums and PNG pixel data that does
not fit the size the IHDR claims are refused. When OpenCV is importable (the `faces` extra) images
are also decoded with it, as the service's own pipeline does; without it the structural walk decides
alone. Independent of the SDK's pre-check, and hostile input raises only `MediaRejected`
(see `_mediacheck`).
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any, Final, Literal

from attrs import frozen

from ._mediacheck import MAX_BYTES, MAX_SIDE, MediaRejected, need

__all__ = ["ImageFacts", "judge_image", "read_image"]

Kind = Literal["jpeg", "png", "webp"]


@frozen
class ImageFacts:
    kind: Kind
    width: int
    height: int


def read_image(data: bytes) -> ImageFacts:
    """Kind and pixel size, after walking the whole file's structure."""
    if len(data) == 0:
        raise MediaRejected("the file is empty")
    if data.startswith(b"\xff\xd8\xff"):
        return _read_jpeg(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _read_png(data)
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _read_webp(data)
    raise MediaRejected("not a JPEG, PNG or WebP image")


# JPEG markers that carry no length: TEM, RST0-7 (SOI is only valid first).
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
_FRAME_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Inside entropy-coded data: a 0xFF followed by something that is neither stuffing (00), a restart
# marker (D0-D7) nor another fill byte (FF) ends the scan.
_SCAN_END: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _read_jpeg(data: bytes) -> ImageFacts:
    pos, size, scans = 2, None, 0
    end = len(data)
    while True:
        if pos >= end:
            raise MediaRejected("truncated JPEG (the file ends before its end-of-image marker)")
        if data[pos] != 0xFF:
            raise MediaRejected(f"corrupt JPEG (expected a marker at byte {pos})")
        while pos < end and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= end:
            raise MediaRejected("truncated JPEG (the file ends inside a marker)")
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:  # end of image
            if size is None or scans == 0:
                raise MediaRejected("corrupt JPEG (no frame or no image data before the end marker)")
            return size
        if marker in (0x00, 0xD8):
            raise MediaRejected(f"corrupt JPEG (marker 0x{marker:02X} at byte {pos - 1})")
        need(data, pos + 2, "JPEG (segment header)")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise MediaRejected("corrupt JPEG (segment length below 2)")
        need(data, pos + length, "JPEG (segment)")
        if marker in _FRAME_MARKERS:
            if length < 8:
                raise MediaRejected("corrupt JPEG (frame header too short)")
            height, width, components = struct.unpack_from(">HHB", data, pos + 3)
            if components not in (1, 3, 4):
                raise MediaRejected(f"unsupported JPEG ({components} colour components)")
            if width == 0 or height == 0:
                raise MediaRejected(f"JPEG frame of {width}x{height} pixels")
            size = ImageFacts("jpeg", width, height)
        pos += length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data
            if size is None:
                raise MediaRejected("corrupt JPEG (image data before the frame header)")
            scans += 1
            found = _SCAN_END.search(data, pos)
            if found is None:
                raise MediaRejected("truncated JPEG (the image data has no end)")
            pos = found.start()


_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS: Final = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7: Final = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


@frozen
class _Png:
    width: int
    height: int
    bits: int
    interlaced: bool
    idat: tuple[tuple[int, int], ...]


def _png_chunks(data: bytes) -> _Png:
    pos, header, idat = 8, None, []
    while True:
        need(data, pos + 8, "PNG (chunk header)")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        need(data, body + length + 4, "PNG (chunk)")
        (crc,) = struct.unpack_from(">I", data, body + length)
        if zlib.crc32(data[pos + 4 : body + length]) != crc:
            raise MediaRejected(f"corrupt PNG (bad checksum on chunk {ctype!r})")
        if header is None:
            if ctype != b"IHDR" or length != 13:
                raise MediaRejected("corrupt PNG (IHDR is not the first chunk)")
            width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, body)
            if not (0 < width < 2**31 and 0 < height < 2**31):
                raise MediaRejected(f"PNG of {width}x{height} pixels")
            if depth not in _PNG_DEPTHS.get(colour, ()) or interlace > 1:
                raise MediaRejected("corrupt PNG (impossible bit depth, colour type or interlace)")
            header = (width, height, depth * _PNG_CHANNELS[colour], interlace == 1)
        elif ctype == b"IDAT":
            idat.append((body, body + length))
        elif ctype == b"IEND":
            if not idat:
                raise MediaRejected("corrupt PNG (no image data)")
            return _Png(*header, idat=tuple(idat))
        pos = body + length + 4


def _read_png(data: bytes) -> ImageFacts:
    png = _png_chunks(data)
    return ImageFacts("png", png.width, png.height)


def _png_raw_size(png: _Png) -> int:
    """Bytes the IDAT stream must inflate to: one filter byte plus the packed pixels per row."""

    def rows(width: int, height: int) -> int:
        if width == 0 or height == 0:
            return 0
        return height * (1 + (width * png.bits + 7) // 8)

    if not png.interlaced:
        return rows(png.width, png.height)
    return sum(
        rows(max(0, (png.width - x0 + dx - 1) // dx), max(0, (png.height - y0 + dy - 1) // dy))
        for x0, y0, dx, dy in _ADAM7
    )


def _check_png_pixels(data: bytes) -> None:
    """The IDAT stream must inflate to exactly the size the IHDR implies (a lying IHDR does not)."""
    png = _png_chunks(data)
    expected = _png_raw_size(png)
    inflater = zlib.decompressobj()
    stream = b"".join(data[start:end] for start, end in png.idat)
    try:
        got = len(inflater.decompress(stream, expected + 1))
        if got == expected and inflater.unconsumed_tail:
            got += len(inflater.decompress(inflater.unconsumed_tail, 1))
    except zlib.error:
        raise MediaRejected("corrupt PNG (image data does not inflate)") from None
    if got != expected:
        raise MediaRejected(f"corrupt PNG (image data is not {png.width}x{png.height} pixels, as IHDR says)")
    if not inflater.eof:
        raise MediaRejected("truncated PNG (image data stream does not end)")


def _read_webp(data: bytes) -> ImageFacts:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = 8 + riff_size
    if riff_size < 4 or end > len(data):
        raise MediaRejected("truncated WebP (the file is shorter than its RIFF header says)")
    pos, facts, has_frame, animated = 12, None, False, False
    while pos < end:
        need(data, pos + 8, "WebP (chunk header)")
        ctype, length = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        if body + length > end:
            raise MediaRejected(f"truncated WebP (chunk {ctype!r} runs past the file)")
        if facts is None:
            facts, animated = _webp_first_chunk(data, ctype, body, length)
            has_frame = ctype in (b"VP8 ", b"VP8L")
        elif ctype in (b"VP8 ", b"VP8L") or (animated and ctype == b"ANMF"):
            has_frame = True
        pos = body + length + (length & 1)
    if facts is None or not has_frame:
        raise MediaRejected("corrupt WebP (no image data)")
    return facts


def _webp_first_chunk(data: bytes, ctype: bytes, body: int, length: int) -> tuple[ImageFacts, bool]:
    if ctype == b"VP8 ":
        if length < 10 or data[body + 3 : body + 6] != b"\x9d\x01\x2a" or data[body] & 1:
            raise MediaRejected("corrupt WebP (lossy data does not start with a key frame)")
        w, h = struct.unpack_from("<HH", data, body + 6)
        return _webp_size(w & 0x3FFF, h & 0x3FFF), False
    if ctype == b"VP8L":
        if length < 5 or data[body] != 0x2F:
            raise MediaRejected("corrupt WebP (bad lossless signature)")
        (packed,) = struct.unpack_from("<I", data, body + 1)
        return _webp_size((packed & 0x3FFF) + 1, ((packed >> 14) & 0x3FFF) + 1), False
    if ctype == b"VP8X":
        if length < 10:
            raise MediaRejected("corrupt WebP (extended header too short)")
        w = int.from_bytes(data[body + 4 : body + 7], "little") + 1
        h = int.from_bytes(data[body + 7 : body + 10], "little") + 1
        return _webp_size(w, h), bool(data[body] & 0x02)
    raise MediaRejected(f"corrupt WebP (first chunk is {ctype!r})")


def _webp_size(width: int, height: int) -> ImageFacts:
    if width == 0 or height == 0:
        raise MediaRejected(f"WebP of {width}x{height} pixels")
    return ImageFacts("webp", width, height)


def _opencv() -> Any:
    try:
        import cv2
        import numpy as np
    except ImportError:  # the `faces` extra is not installed: the structural walk decides alone
        return None
    return cv2, np


def _decode_with_opencv(data: bytes, facts: ImageFacts) -> None:
    found = _opencv()
    if found is None:
        return
    cv2, np = found
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        pixels = None
    if pixels is None:
        raise MediaRejected(f"the {facts.kind.upper()} file does not decode")
    height, width = pixels.shape[:2]
    if (width, height) != (facts.width, facts.height):
        raise MediaRejected(f"decodes to {width}x{height} pixels, not the {facts.width}x{facts.height} its header says")


def judge_image(data: bytes) -> ImageFacts:
    """Accept or refuse an image input as the service would; `MediaRejected` says why."""
    if len(data) > MAX_BYTES:
        raise MediaRejected(f"{len(data)} bytes; max {MAX_BYTES} (10 MiB)")
    facts = read_image(data)
    if facts.width > MAX_SIDE or facts.height > MAX_SIDE:
        raise MediaRejected(f"{facts.width}x{facts.height}; max {MAX_SIDE}x{MAX_SIDE}")
    if facts.kind == "png":
        _check_png_pixels(data)
    _decode_with_opencv(data, facts)
    return facts
