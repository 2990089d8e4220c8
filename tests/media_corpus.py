"""Edge-case image files, built at test time (cv2/numpy from the `faces` extra plus hand-built bytes).

Used by the cross-check test: the SDK's pre-check and the emulator's verdict must agree on each
file. `CORPUS` maps a case name to (bytes builder, the file name a user would have, expected verdict).
The expected verdict follows the service's documented rules (piapi-api.md: JPEG/PNG/WebP, at most
2048x2048, at most 10 MB) and the one fact that needs no documentation: a file that does not decode
is not a valid image.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Final

import cv2
import numpy as np

__all__ = ["CORPUS", "Case", "build"]


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def _encode(ext: str, height: int, width: int, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, _pixels(height, width), params or [])
    assert ok
    return bytes(buf.tobytes())


def jpeg(height: int = 64, width: int = 48, *, progressive: bool = False) -> bytes:
    return _encode(".jpg", height, width, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else [])


def png(height: int = 64, width: int = 48) -> bytes:
    return _encode(".png", height, width)


def webp_lossless(height: int = 64, width: int = 48) -> bytes:
    return _encode(".webp", height, width, [cv2.IMWRITE_WEBP_QUALITY, 101])


def webp_lossy(height: int = 64, width: int = 48) -> bytes:
    return _encode(".webp", height, width, [cv2.IMWRITE_WEBP_QUALITY, 80])


def _riff_chunk(ctype: bytes, body: bytes) -> bytes:
    return ctype + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def webp_animated(height: int = 64, width: int = 48, frames: int = 2) -> bytes:
    """VP8X with the animation flag, ANIM, and `frames` ANMF chunks each holding a VP8L frame."""
    frame = webp_lossless(height, width)[12:]  # the VP8L chunk, header included

    def u24(v: int) -> bytes:
        return v.to_bytes(3, "little")

    vp8x = _riff_chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + u24(width - 1) + u24(height - 1))
    anim = _riff_chunk(b"ANIM", b"\x00\x00\x00\x00\x00\x00")
    anmf = _riff_chunk(b"ANMF", u24(0) + u24(0) + u24(width - 1) + u24(height - 1) + u24(100) + b"\x00" + frame)
    body = b"WEBP" + vp8x + anim + anmf * frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def png_lying_ihdr(claim_width: int, claim_height: int) -> bytes:
    """A 64x48 PNG whose IHDR (CRC recomputed, so it looks well-formed) claims another size."""
    data = png()
    ihdr = bytearray(data[16:29])
    struct.pack_into(">II", ihdr, 0, claim_width, claim_height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return data[:16] + bytes(ihdr) + crc + data[33:]


def jpeg_exif_rotated() -> bytes:
    """A JPEG with an APP1 Exif segment saying orientation 6 (rotate 90 degrees clockwise)."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + tiff
    data = jpeg(40, 100)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg_cmyk(size: int = 16) -> bytes:
    """A hand-built baseline CMYK JPEG (4 components, Adobe APP14), every block flat grey.

    Each 8x8 block is DC difference 0 (code `00`) then end-of-block (code `1010`) with the standard
    luminance tables, so one MCU of four blocks is exactly the three bytes 28 A2 8A."""
    dc_bits = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    dc_vals = bytes(range(12))
    ac_bits = bytes([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D])
    ac_vals = bytes.fromhex(
        "01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a"
        "3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a9293"
        "9495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6"
        "e7e8e9eaf1f2f3f4f5f6f7f8f9fa"
    )
    out = b"\xff\xd8"
    out += _segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))  # transform 0: CMYK as is
    out += _segment(0xDB, b"\x00" + b"\x01" * 64)
    comps = b"".join(bytes([i, 0x11, 0]) for i in range(1, 5))
    out += _segment(0xC0, struct.pack(">BHHB", 8, size, size, 4) + comps)
    out += _segment(0xC4, b"\x00" + dc_bits + dc_vals + b"\x10" + ac_bits + ac_vals)
    scan = b"".join(bytes([i, 0x00]) for i in range(1, 5))
    out += _segment(0xDA, bytes([4]) + scan + b"\x00\x3f\x00")
    out += b"\x28\xa2\x8a" * ((size // 8) ** 2)
    return out + b"\xff\xd9"


Case = tuple[Callable[[], bytes], str, bool]
"""(build the bytes, file name, expected to be accepted)."""

CORPUS: Final[dict[str, Case]] = {
    "jpeg-ok": (jpeg, "face.jpg", True),
    "png-ok": (png, "face.png", True),
    "jpeg-truncated-half": (lambda: jpeg()[: len(jpeg()) // 2], "cut.jpg", False),
    "jpeg-truncated-no-eoi": (lambda: jpeg()[:-2], "cut.jpg", False),
    "jpeg-header-only": (lambda: jpeg()[: jpeg().index(b"\xff\xda")], "cut.jpg", False),
    "png-truncated-half": (lambda: png()[: len(png()) // 2], "cut.png", False),
    "png-truncated-no-iend": (lambda: png()[:-12], "cut.png", False),
    "png-named-jpg": (png, "really-a-png.jpg", True),
    "jpeg-named-webp": (jpeg, "really-a-jpeg.webp", True),
    "text-named-png": (lambda: b"hello, this is not an image\n", "notes.png", False),
    "gif-named-jpg": (lambda: b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "anim.jpg", False),
    "jpeg-2048-wide": (lambda: jpeg(16, 2048), "w2048.jpg", True),
    "jpeg-2049-wide": (lambda: jpeg(16, 2049), "w2049.jpg", False),
    "jpeg-2048-high": (lambda: jpeg(2048, 16), "h2048.jpg", True),
    "jpeg-2049-high": (lambda: jpeg(2049, 16), "h2049.jpg", False),
    "png-2048-wide": (lambda: png(16, 2048), "w2048.png", True),
    "png-2049-wide": (lambda: png(16, 2049), "w2049.png", False),
    "png-2048-high": (lambda: png(2048, 16), "h2048.png", True),
    "png-2049-high": (lambda: png(2049, 16), "h2049.png", False),
    "webp-2049-wide": (lambda: webp_lossless(16, 2049), "w2049.webp", False),
    "jpeg-progressive": (lambda: jpeg(progressive=True), "progressive.jpg", True),
    "jpeg-cmyk": (jpeg_cmyk, "cmyk.jpg", True),
    "webp-lossless": (webp_lossless, "lossless.webp", True),
    "webp-lossy": (webp_lossy, "lossy.webp", True),
    "webp-animated": (webp_animated, "animated.webp", True),
    "webp-truncated": (lambda: webp_lossy()[: len(webp_lossy()) // 2], "cut.webp", False),
    "png-ihdr-claims-larger": (lambda: png_lying_ihdr(100, 100), "liar.png", False),
    "png-ihdr-claims-smaller": (lambda: png_lying_ihdr(32, 32), "liar.png", False),
    "png-ihdr-claims-huge": (lambda: png_lying_ihdr(4000, 4000), "liar.png", False),
    "zero-bytes": (lambda: b"", "empty.jpg", False),
    "jpeg-exif-rotated": (jpeg_exif_rotated, "rotated.jpg", True),
}


def build(name: str) -> bytes:
    return CORPUS[name][0]()
