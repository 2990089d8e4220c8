"""Helpers shared by the test files (one copy each, so they cannot drift apart).

Nothing here measures wall-clock time: `wait_until` only guards against a hang, with a bound far
above anything a loaded machine needs, and `count_calls` measures work by counting calls.
"""

from __future__ import annotations

import base64
import gc
import socket
import sqlite3
import struct
import sys
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
from aiohttp import web

from qubico_async.webhooks import MalformedWebhookError, WebhookHub, WebhookVerificationError

FIXTURES = Path(__file__).parent / "fixtures"
ASTRONAUT = (FIXTURES / "astronaut.jpg").read_bytes()
HOPPER = (FIXTURES / "grace_hopper.jpg").read_bytes()
GROUP = (FIXTURES / "group-two-faces.jpg").read_bytes()
COFFEE = (FIXTURES / "coffee-no-face.jpg").read_bytes()


def journal_rows(path: str | Path) -> dict[str, dict[str, Any]]:
    """Every journal row by key, in insertion order, read the way the journal's docstring lets any
    reader do, even while a run holds the journal: a read-only SQLite connection (WAL readers see
    every acknowledged write). `result` is the stored JSON text."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        return {row["key"]: dict(row) for row in conn.execute("SELECT * FROM jobs ORDER BY rowid")}
    finally:
        conn.close()


#: Hang guard for waits on something that normally takes milliseconds. Only a hang reaches it.
HANG_GUARD = 30.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(i: int, size: int = 64, pad: int = 0, tag: str = "job") -> bytes:
    """A distinct, whole, decodable PNG per `i`: a black image, then `pad` bytes and a tag after IEND
    (trailing bytes after IEND are ignored by decoders; both the SDK and the emulator check the whole file)."""
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)

    def chunk(ctype: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    pixels = zlib.compress(bytes(size * (1 + 3 * size)))
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return head + b"\0" * pad + f"{tag}-{i}".encode()


async def wait_until(predicate: Callable[[], bool], timeout: float = HANG_GUARD) -> None:
    """Yield to the loop until `predicate()` holds; `AssertionError` only if it never does (a hang)."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)
        return
    raise AssertionError(f"condition not reached in {timeout} s")


@dataclass
class Calls:
    """Calls made inside `count_calls()`: Python functions and builtins (C functions) separately."""

    python: int = 0
    builtin: int = 0

    @property
    def total(self) -> int:
        return self.python + self.builtin


@contextmanager
def count_calls() -> Iterator[Calls]:
    """Count the calls the current thread makes: a measure of work that load cannot change.

    A parser that walked its input byte by byte in Python, or recursed once per nesting level,
    makes calls in proportion to the input; a bounded one makes a bounded number.
    """
    calls = Calls()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            calls.python += 1
        elif event == "c_call":
            calls.builtin += 1

    collecting = gc.isenabled()
    gc.disable()  # a collection would run unrelated finalizers inside the counted code
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(previous)
        if collecting:
            gc.enable()


@asynccontextmanager
async def serve(app: web.Application, *, access_log: bool = False) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL ("http://127.0.0.1:PORT")."""
    runner = web.AppRunner(app, shutdown_timeout=0.1, **({} if access_log else {"access_log": None}))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# -- images (OpenCV tests only: cv2 and numpy are imported lazily) ---------------------------------

#: A pixel "changed" when one channel moved by more than this many levels. One value for every
#: test: re-encoding a JPEG at the engine's quality moves unchanged pixels by at most ~10 levels,
#: while a swapped face moves most of its pixels by far more.
TOLERANCE = 12


def decode(data: bytes) -> Any:
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def region(shape: tuple[int, ...], face: Any, grow: float = 0.25) -> Any:
    """Boolean mask of `face`'s box grown by `grow` of its size on every side."""
    import numpy as np

    mask = np.zeros(shape[:2], bool)
    gx, gy = round(face.w * grow), round(face.h * grow)
    mask[max(0, face.y - gy) : face.y + face.h + gy, max(0, face.x - gx) : face.x + face.w + gx] = True
    return mask


def changed(before: Any, after: Any, tolerance: int = TOLERANCE) -> Any:
    """Boolean mask of pixels where a channel moved by more than `tolerance` levels."""
    import numpy as np

    assert before.shape == after.shape
    return np.abs(before.astype(np.int16) - after.astype(np.int16)).max(axis=2) > tolerance


# -- a header-only MP4 ---------------------------------------------------------------------------------


def _box(btype: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), btype) + payload


def _full(btype: bytes, payload: bytes) -> bytes:
    return _box(btype, b"\0\0\0\0" + payload)


def header_only_mp4(frames: int, width: int = 64, height: int = 48) -> bytes:
    """An MP4 whose header declares one video track of `frames` samples (enough for probe_video)."""
    tkhd = _full(b"tkhd", b"\0" * 72 + struct.pack(">II", width << 16, height << 16))
    hdlr = _full(b"hdlr", b"\0" * 4 + b"vide" + b"\0" * 12 + b"name\0")
    stbl = _box(b"stbl", _full(b"stsz", struct.pack(">II", 100, frames)))
    minf = _box(b"minf", _box(b"vmhd", b"\0" * 12), stbl)
    trak = _box(b"trak", tkhd, _box(b"mdia", _full(b"mdhd", b"\0" * 20), hdlr, minf))
    moov = _box(b"moov", _full(b"mvhd", b"\0" * 96), trak)
    return _box(b"ftyp", b"isom\0\0\x02\0isomiso2mp41") + moov + _box(b"mdat", b"\0" * 64)


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def hub_endpoint(hub: WebhookHub, *, access_log: bool = False) -> AsyncIterator[str]:
    """A webhook endpoint on loopback feeding `hub` (401 for a bad secret, 400 for a bad body);
    yields its URL."""

    async def receive(request: web.Request) -> web.Response:
        try:
            hub.handle(request.headers, await request.read())
        except WebhookVerificationError:
            return web.Response(status=401)
        except MalformedWebhookError:
            return web.Response(status=400)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    async with serve(app, access_log=access_log) as base:
        yield f"{base}/hook"
