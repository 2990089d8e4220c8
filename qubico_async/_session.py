"""The client's aiohttp session and its one life: new, open, closed (never reopened).

An owned session is created on `open()`, its connector capped at `max_connections`, and closed
by the client's `aclose()`; a borrowed one (the caller's) is used as is and never closed.
"""

from __future__ import annotations

from typing import Literal

import aiohttp

from .errors import ClientClosedError, InvalidInputError

__all__ = ["SessionLife"]

State = Literal["new", "open", "closed"]


class SessionLife:
    """Holds the session and says, as a `ClientClosedError`, why it cannot be used."""

    def __init__(self, borrowed: aiohttp.ClientSession | None, max_connections: int) -> None:
        if max_connections < 1:
            raise InvalidInputError("max_connections must be at least 1 (aiohttp's 0 means unlimited)")
        self._borrowed = borrowed
        self._max_connections = max_connections
        self.session: aiohttp.ClientSession | None = borrowed
        self.state: State = "new"

    def describe(self) -> str:
        """`new`, `open` or `closed`, for a repr (a borrowed session is open from the start)."""
        return "closed" if self.state == "closed" else ("open" if self.session is not None else "new")

    def open(self) -> None:
        if self.state == "closed":
            raise ClientClosedError("this QubicoClient was closed; create a new one")
        if self.state == "open":
            raise ClientClosedError("this QubicoClient is already open; enter it only once")
        if self._borrowed is None:
            limit = self._max_connections
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit))
        self.state = "open"

    def end(self) -> aiohttp.ClientSession | None:
        """Mark it closed; the owned session the caller must now close (None if borrowed or never opened)."""
        self.state = "closed"
        session, self.session = self.session, None
        return session if self._borrowed is None else None

    def get(self) -> aiohttp.ClientSession:
        """The session to send with, if the client is open and the session usable."""
        if self.state == "closed":
            raise ClientClosedError("this QubicoClient is closed")
        session = self.session
        if session is None:
            raise ClientClosedError("QubicoClient is not open: use `async with QubicoClient(...) as client:`")
        if session.closed:
            raise ClientClosedError("the aiohttp session used by this QubicoClient is closed")
        return session
