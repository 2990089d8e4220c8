"""A loopback TCP proxy that breaks HTTP exchanges on purpose, for the fault tests.

    async with FaultProxy(emu.port) as proxy:
        client = QubicoClient(key, base_url=proxy.url, ...)
        proxy.mode = "blackhole"                                   # every connection from now on
        proxy.inject("reset_mid_response", times=1, match=b"POST /api/v1/task")  # just the next create

It speaks just enough HTTP/1.1 to cut exchanges at precise points: it reads the request head,
rewrites it to `Connection: close` (so one connection carries exactly one request and a mode
applies per request), then, depending on the mode:

- `pass`: forward both ways untouched.
- `reset_mid_request`: read the head and part of the body (up to `cut_bytes`), then RST the
  client. Nothing reaches the upstream.
- `reset_after_headers`: forward; send the client the response head only, then RST.
- `reset_mid_response`: forward; send the head and half the body, then RST.
- `close_mid_response`: forward; send the head and half the body, then close cleanly (FIN): the
  body is shorter than its Content-Length.
- `truncate_json`: forward; send half the body with a Content-Length that matches it: a
  well-framed 200 whose JSON stops mid-way (a broken proxy or cache).
- `html_502`: answer an nginx-style HTML 502 page without contacting the upstream.
- `html_502_forwarded`: forward (the upstream acts on the request), drop its answer, send the 502.
- `blackhole`: accept, read everything, never answer, keep the connection open.
- `refuse` (listener-wide): stop listening; connects are refused.
- `drop_syn` (listener-wide): a listener whose accept queue is full, so the kernel drops the
  SYNs and connects time out (Linux semantics).

Resets use SO_LINGER 0 + `transport.abort()`, so the peer sees a real RST. `counts[mode]` is
the number of connections handled in each mode (listener-wide modes count nothing: no
connection exists); `log` keeps `(request line, mode)` per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter
from collections.abc import Mapping
from typing import Final, Literal, get_args

Mode = Literal[
    "pass",
    "reset_mid_request",
    "reset_after_headers",
    "reset_mid_response",
    "close_mid_response",
    "truncate_json",
    "html_502",
    "html_502_forwarded",
    "blackhole",
    "refuse",
    "drop_syn",
]
MODES: Final[tuple[Mode, ...]] = get_args(Mode)
LISTENER_MODES: Final = frozenset({"refuse", "drop_syn"})
CONNECTION_MODES: Final = tuple(m for m in MODES if m not in LISTENER_MODES)
FORWARDING_MODES: Final = frozenset(
    {"pass", "reset_after_headers", "reset_mid_response", "close_mid_response", "truncate_json", "html_502_forwarded"}
)
"""Modes in which the upstream receives (and acts on) the request."""

HTML_502: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"
)
_HEAD_LIMIT: Final = 64 * 1024


class _Rule:
    __slots__ = ("match", "mode", "remaining")

    def __init__(self, mode: Mode, times: int, match: bytes | None) -> None:
        self.mode = mode
        self.remaining = times
        self.match = match


class FaultProxy:
    """See the module docstring. Listens on 127.0.0.1 (port 0 = any free port)."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        port: int = 0,
        cut_bytes: int = 64 * 1024,
        settle: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.upstream: tuple[str, int] = (upstream_host, upstream_port)
        self.cut_bytes = cut_bytes
        """`reset_mid_request` resets after this many body bytes (or half the body if smaller)."""
        self.settle = settle
        """Seconds between sending partial data and the reset, so the client has read it."""
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[bytes, str]] = []
        self.connections = 0
        self._port = port
        self._mode: Mode = "pass"
        self._rules: list[_Rule] = []
        self._chaos: list[tuple[Mode, float]] = []
        self._chaos_match: bytes | None = None
        self._rng = random.Random(seed)
        self._server: asyncio.AbstractServer | None = None
        self._starting: asyncio.Task[None] | None = None
        self._stuck: list[socket.socket] = []  # drop_syn: the full listener and its fillers
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        sock = self._listen_socket(backlog=128)
        self._port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def aclose(self) -> None:
        """Stop listening, reset every open connection and wait for the handlers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._stop_listening()
        self._close_stuck()
        for writer in list(self._writers):
            _abort(writer)  # handlers see EOF or an error and return on their own
        handlers = list(self._handlers)
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=2.0)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- fault control ---------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """The mode for connections no injected rule claims. Takes effect at once."""
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if self._closed:
            raise RuntimeError("the proxy is closed")
        old, self._mode = self._mode, mode
        if old == mode:
            return
        if old in LISTENER_MODES:
            self._close_stuck()
        if mode in LISTENER_MODES:
            self._stop_listening_now()
            if mode == "drop_syn":
                self._fill_accept_queue()
        elif old in LISTENER_MODES:
            self._relisten()

    def inject(self, mode: Mode, *, times: int = 1, match: bytes | None = None) -> None:
        """Apply `mode` to the next `times` connections whose request line starts with `match`."""
        if mode not in CONNECTION_MODES:
            raise ValueError(f"{mode!r} cannot be injected per connection; set proxy.mode instead")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._rules.append(_Rule(mode, times, match))

    def chaos(self, weights: Mapping[Mode, float], *, match: bytes | None = None) -> None:
        """Give each connection (matching `match`) the fault `mode` with probability `weights[mode]`."""
        if any(m not in CONNECTION_MODES for m in weights) or sum(weights.values()) > 1:
            raise ValueError("chaos takes per-connection modes with probabilities summing to at most 1")
        self._chaos = list(weights.items())
        self._chaos_match = match

    def clear(self) -> None:
        """Back to `pass`: no rules, no chaos."""
        self._rules.clear()
        self._chaos = []
        self.mode = "pass"

    @property
    def pending_rules(self) -> int:
        return sum(rule.remaining for rule in self._rules)

    def _choose(self, line: bytes) -> Mode:
        for i, rule in enumerate(self._rules):
            if rule.match is None or line.startswith(rule.match):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self._rules[i]
                return rule.mode
        if self._chaos and (self._chaos_match is None or line.startswith(self._chaos_match)):
            roll = self._rng.random()
            for mode, weight in self._chaos:
                if roll < weight:
                    return mode
                roll -= weight
        return "pass" if self._mode in LISTENER_MODES else self._mode

    # -- listener ----------------------------------------------------------------------------------

    def _listen_socket(self, backlog: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port))
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _stop_listening_now(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()  # its socket is closed by serve()
        server, self._server = self._server, None
        if server is not None:
            server.close()  # closes the listening socket synchronously: new connects are refused

    async def _stop_listening(self) -> None:
        starting = self._starting
        self._stop_listening_now()
        if starting is not None:
            with contextlib.suppress(BaseException):
                await starting

    def _relisten(self) -> None:
        # The socket listens (and the kernel queues connects) before the server accepts them.
        sock = self._listen_socket(backlog=128)

        async def serve() -> None:
            try:
                server = await asyncio.start_server(self._handle, sock=sock)
            except BaseException:
                sock.close()
                raise
            if self._starting is asyncio.current_task():
                self._server, self._starting = server, None
            else:  # refused again while starting
                server.close()

        self._starting = asyncio.get_running_loop().create_task(serve())

    def _fill_accept_queue(self) -> None:
        listener = self._listen_socket(backlog=0)
        self._stuck.append(listener)
        for _ in range(3):  # backlog 0 still queues one; the rest sit in SYN-SENT
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self._port))
            self._stuck.append(filler)

    def _close_stuck(self) -> None:
        for sock in self._stuck:
            sock.close()
        self._stuck.clear()

    # -- one connection ------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        except asyncio.CancelledError:
            if not self._closed:
                raise
            # Cancelled by aclose(): end normally (asyncio's stream callback logs cancelled handlers).
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0]
        mode = self._choose(line)
        self.counts[mode] += 1
        self.log.append((line, mode))
        length = _content_length(head)

        if mode == "blackhole":
            while await reader.read(65536):  # never answer; until the client gives up (EOF)
                pass
            return
        if mode == "reset_mid_request":
            want = min(self.cut_bytes, length // 2) if length else 0
            if want:
                await reader.readexactly(want)
            await asyncio.sleep(self.settle)
            _abort(writer)
            return
        if mode == "html_502":
            if length:
                await reader.readexactly(length)
            writer.write(_html_502())
            await writer.drain()
            return

        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.add(up_writer)
        try:
            up_writer.write(_close_after(head))
            feed = asyncio.get_running_loop().create_task(_copy(reader, up_writer))
            try:
                if mode == "pass":
                    await _copy(up_reader, writer)
                    return
                response = await up_reader.read()  # `Connection: close`: the upstream ends at EOF
            finally:
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await feed
        finally:
            self._writers.discard(up_writer)
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()
        await self._mangle(mode, response, writer)

    async def _mangle(self, mode: Mode, response: bytes, writer: asyncio.StreamWriter) -> None:
        resp_head, sep, body = response.partition(b"\r\n\r\n")
        resp_head += sep
        half = body[: len(body) // 2]
        if mode == "html_502_forwarded":
            writer.write(_html_502())
            await writer.drain()
        elif mode == "truncate_json":
            writer.write(_with_length(resp_head, len(half)) + half)
            await writer.drain()
        elif mode == "close_mid_response":
            writer.write(resp_head + half)
            await writer.drain()
            await asyncio.sleep(self.settle)
        else:  # reset_after_headers, reset_mid_response
            writer.write(resp_head if mode == "reset_after_headers" else resp_head + half)
            await writer.drain()
            await asyncio.sleep(self.settle)
            _abort(writer)


# -- helpers -----------------------------------------------------------------------------------------


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), discarding anything unsent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


def _headers(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:]


def _content_length(head: bytes) -> int:
    for header in _headers(head):
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _close_after(head: bytes) -> bytes:
    """The request head with `Connection: close`, so the upstream answers once and hangs up."""
    lines = head[:-4].split(b"\r\n")
    kept = [h for h in lines[1:] if h.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")]
    return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n"


def _with_length(head: bytes, length: int) -> bytes:
    lines = head[:-4].split(b"\r\n")
    kept = [h for h in lines[1:] if h.split(b":", 1)[0].strip().lower() != b"content-length"]
    return b"\r\n".join([lines[0], *kept, b"Content-Length: %d" % length]) + b"\r\n\r\n"


def _html_502() -> bytes:
    return (
        b"HTTP/1.1 502 Bad Gateway\r\nServer: nginx/1.25.3\r\nContent-Type: text/html\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(HTML_502)
    ) + HTML_502
