"""A real `redis-server` process on a free loopback port, for the coordination tests and the cluster demo.

The binary is `$QUBICO_REDIS_SERVER`, else `redis-server` on PATH (Debian's `redis-server`
package, which `make test` and `.ci/run` install when it is missing). No persistence, no
config file: the server lives only as long as the fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    path = os.environ.get("QUBICO_REDIS_SERVER") or shutil.which("redis-server")
    if not path:
        raise RuntimeError(
            "redis-server is not installed: `apt-get install -y redis-server` (make test does it when run as root), "
            "or set QUBICO_REDIS_SERVER to the binary"
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`start()` / `stop()` (also mid-test, to simulate an outage; `start()` again on the same port)."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="qubico-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            raise RuntimeError("already running")
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"redis-server exited at start (port {self.port})")
            if self._ping():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()  # like a crash: no goodbye to the clients
        proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
