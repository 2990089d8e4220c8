"""Small, fully valid PNGs built with the standard library, for tests that need many distinct images.

The emulator judges whole files (a header alone is refused, as the service would refuse it), so
test images must decode. `tagged_png(size, tag)` is a black `size`x`size` RGB PNG followed by `tag`
after its IEND chunk: decoders stop at IEND, so the tag only makes the bytes distinct."""

from __future__ import annotations

import struct
import zlib


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def tagged_png(size: int = 64, tag: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (size * (1 + 3 * size)))
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")
    return png + tag
