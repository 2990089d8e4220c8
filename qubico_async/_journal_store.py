"""The journal's storage: one SQLite connection owned by a writer thread, group commits,
the run lock, and validation of what is on disk. `journal.Journal` is the async face of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from .errors import JournalClosedError, JournalError

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x51424A4C  # "QBJL": marks the file as a qubico_async journal
_MAX_BATCH: Final = 10_000  # operations per transaction (bounds the latency of one commit)
_DELIVER_CHUNK: Final = 256  # futures resolved per event-loop iteration
_IDLE_POLL: Final = 0.25  # seconds; how often an idle writer checks that the interpreter lives
_LOCK_TIMEOUT: Final = 0.2  # seconds to wait for the run lock of a journal in use elsewhere
_BUSY_TIMEOUT: Final = 5.0  # seconds to wait for an outside connection's lock (e.g. a checkpoint)

_JOB_COLUMNS: Final = (
    "key",
    "state",
    "fingerprint",
    "task_id",
    "outcome",
    "result",
    "spend_usd",
    "created_at",
    "updated_at",
)
_T = TypeVar("_T")
_OpFn = Callable[[sqlite3.Connection, float], Any]
# (operation or None for "close", loop, future); loop/future are None for fire-and-forget.
_Op = tuple[_OpFn | None, asyncio.AbstractEventLoop | None, asyncio.Future[Any] | None]
_Delivery = tuple[asyncio.Future[Any], BaseException | None, Any]

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS jobs (
        key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        task_id TEXT,
        outcome TEXT,
        result TEXT,
        spend_usd REAL NOT NULL DEFAULT 0,
        created_at REAL,
        updated_at REAL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)",
)


def _deliver(items: list[_Delivery], start: int = 0) -> None:
    """Runs on the event loop: resolve futures whose awaiting task is still interested.

    At most `_DELIVER_CHUNK` per loop iteration, so thousands of waking tasks cannot stall the
    loop's timers and I/O for one long iteration.
    """
    end = min(len(items), start + _DELIVER_CHUNK)
    for fut, exc, value in items[start:end]:
        if fut.done():  # cancelled: the write happened, nobody waits for the answer
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    if end < len(items):
        items[end][0].get_loop().call_soon(_deliver, items, end)


def _post(by_loop: dict[asyncio.AbstractEventLoop, list[_Delivery]]) -> None:
    """Hand results to their loops (one wake-up per loop per batch); a closed loop is skipped."""
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # loop closed: nobody can be waiting any more
            loop.call_soon_threadsafe(_deliver, items)


def _same_error(exc: BaseException) -> BaseException:
    """A fresh copy of a batch-wide error for each waiter (tracebacks are per raise)."""
    if not isinstance(exc, JournalError):
        return exc
    copy = type(exc)(*exc.args)
    copy.__cause__ = exc.__cause__
    return copy


class _Writer:
    """The thread that owns the sqlite3 connection; holds no reference to the `Journal`."""

    def __init__(self, database: str, synchronous: str) -> None:
        self.database = database
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit() against stopping
        self._stop_error: BaseException | None = None  # set (under the lock) once stopping
        self._close_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._finished = False  # the thread has released the database
        self._thread = threading.Thread(target=self._run, name="qubico-journal-writer", daemon=False)
        self._ready: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self.commits = 0  # transactions committed (for tests and benchmarks)

    @property
    def stopping(self) -> bool:
        return self._stop_error is not None

    def start(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        self._ready = (loop, ready)
        self._thread.start()

    def submit(self, op: _Op) -> None:
        with self._lock:
            if self._stop_error is not None:
                raise _same_error(self._stop_error)
            self._queue.put(op)

    def request_close(self, loop: asyncio.AbstractEventLoop | None, fut: asyncio.Future[None] | None) -> bool:
        """Ask the thread to commit what is queued and stop; False if it already stopped."""
        with self._lock:
            if self._finished:
                return False
            if loop is not None and fut is not None:
                self._close_waiters.append((loop, fut))
            if self._stop_error is None:
                self._stop_error = JournalClosedError("the journal is closed")
                self._queue.put((None, None, None))
            return True

    async def close(self) -> None:
        """Stop the thread and wait (without blocking the loop) until it has exited."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self.request_close(loop, fut):
            await fut
        # The thread resolves `fut` as its very last action, so this join is immediate.
        if self._thread.ident is not None:
            self._thread.join()

    # -- thread side ---------------------------------------------------------------------------

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        run_lock: sqlite3.Connection | None = None
        try:
            try:
                conn, run_lock = self._connect()
            except BaseException as exc:
                with self._lock:
                    self._stop_error = JournalClosedError("the journal failed to open")
                self._resolve_ready(exc)
                return
            self._resolve_ready(None)
            try:
                self._serve(conn)
            except BaseException as exc:  # a bug or a fatal error: fail everything, never hang
                with self._lock:
                    if self._stop_error is None or isinstance(self._stop_error, JournalClosedError):
                        error = JournalError(f"the journal writer stopped: {exc!r}")
                        error.__cause__ = exc
                        self._stop_error = error
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()  # checkpoints the WAL into the database file
            if run_lock is not None:  # only after the journal itself is closed
                with contextlib.suppress(sqlite3.Error):
                    run_lock.close()
            self._finish()

    def _resolve_ready(self, exc: BaseException | None) -> None:
        assert self._ready is not None
        loop, fut = self._ready
        self._ready = None
        _post({loop: [(fut, exc, None)]})

    def _finish(self) -> None:
        """Fail whatever is still queued, then release every aclose() waiter (last action)."""
        with self._lock:
            if self._stop_error is None:  # interpreter shutdown: nobody is left to submit
                self._stop_error = JournalClosedError("the journal is closed")
            self._finished = True
            waiters, self._close_waiters = self._close_waiters, []
            error = self._stop_error
        pending: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
        while True:
            try:
                _fn, loop, fut = self._queue.get_nowait()
            except queue.Empty:
                break
            if loop is not None and fut is not None:
                pending.setdefault(loop, []).append((fut, _same_error(error), None))
        for loop, fut in waiters:
            pending.setdefault(loop, []).append((fut, None, None))
        _post(pending)

    def _serve(self, conn: sqlite3.Connection) -> None:
        main = threading.main_thread()
        while True:
            try:
                first = self._queue.get(timeout=_IDLE_POLL)
            except queue.Empty:
                if not main.is_alive():  # interpreter exiting without aclose(): don't hang it
                    return
                continue
            batch = [first]
            while len(batch) < _MAX_BATCH and batch[-1][0] is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            closing = batch[-1][0] is None
            if closing:
                batch.pop()
            if batch:
                self._run_batch(conn, batch)
            if closing:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        """Run `batch` in one transaction, commit once, then resolve every future."""
        now = time.time()
        results: list[tuple[BaseException | None, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, _loop, _fut in batch:
                assert fn is not None
                try:
                    value = fn(conn, now)
                except Exception as exc:
                    # Each operation makes at most one change, in one statement, after its checks;
                    # SQLite undoes a failed statement, so a failed operation changed nothing...
                    if not conn.in_transaction:
                        raise  # ...unless SQLite rolled back the whole transaction: batch lost
                    results.append((self._wrap(exc), None))
                else:
                    results.append((None, value))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # sqlite3.Error, normally; fail the whole batch, never hang it
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = JournalError(f"journal {self.database!r}: write failed, nothing committed: {exc}")
            error.__cause__ = exc
            results = [(_same_error(error), None) for _ in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
        for (_fn, loop, fut), (failure, value) in zip(batch, results, strict=True):
            if loop is not None and fut is not None:
                by_loop.setdefault(loop, []).append((fut, failure, value))
        _post(by_loop)

    def _wrap(self, exc: Exception) -> Exception:
        """An operation's own error as the caller sees it (SQLite errors become JournalError)."""
        if not isinstance(exc, sqlite3.Error):
            return exc  # ValueError (bad transition), UnicodeEncodeError (unencodable key), ...
        error = JournalError(f"journal {self.database!r}: write failed: {exc}")
        error.__cause__ = exc
        return error

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Connection | None]:
        """Open, validate, lock and (if new) initialise the journal; JournalError if unusable.

        Returns the connection and the run lock (None in memory); both stay open until close.
        """
        path = self.database
        memory = path == ":memory:"
        conn: sqlite3.Connection | None = None
        run_lock: sqlite3.Connection | None = None
        try:
            if not memory:
                _create_private(path)  # SQLite gives the -wal and -shm files the same mode
            conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)
            conn.execute("PRAGMA trusted_schema = OFF")
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            new = version == 0 and app_id == 0 and not tables
            if not new:
                _validate(path, app_id, version, tables, conn)
            if not memory:
                run_lock = _acquire_run_lock(path + "-lock")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise JournalError(f"journal {path!r}: cannot use WAL mode (got {mode!r})")
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if new:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            return conn, run_lock
        except BaseException as exc:
            for c in (conn, run_lock):
                if c is not None:
                    c.close()
            if isinstance(exc, JournalError):
                raise
            if isinstance(exc, sqlite3.Error | OSError):
                raise JournalError(_open_error_message(path, exc)) from exc
            raise


def _create_private(path: str) -> None:
    """Create `path` empty with mode 0600 unless it exists (results may hold signed URLs)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


def _acquire_run_lock(lock_path: str) -> sqlite3.Connection:
    """Hold an exclusive lock on `<journal>-lock` for as long as the journal is open.

    It keeps a second run (or a second `Journal` in this process) from using the journal at the
    same time and submitting the same jobs twice, while readers can still open the journal itself.
    The lock is SQLite's own (portable; the OS drops it when the process dies, even on SIGKILL).
    The lock file is left in place: deleting it could let two later runs lock different files.
    """
    _create_private(lock_path)
    lock = sqlite3.connect(lock_path, timeout=_LOCK_TIMEOUT, isolation_level=None)
    try:
        lock.execute("PRAGMA locking_mode = EXCLUSIVE")  # keep the lock after the transaction
        lock.execute("BEGIN EXCLUSIVE")
        lock.execute("COMMIT")
    except BaseException:
        lock.close()
        raise
    return lock


def _validate(path: str, app_id: int, version: int, tables: set[str], conn: sqlite3.Connection) -> None:
    """Refuse files that are not (intact) journals of a version this code understands."""
    if app_id != APPLICATION_ID:
        raise JournalError(f"{path!r} is an SQLite database but not a qubico_async journal")
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path!r} was written by a newer qubico_async (schema {version},"
            f" this version reads up to {SCHEMA_VERSION}): upgrade qubico_async"
        )
    if version < 1 or not {"jobs", "meta"} <= tables:
        raise JournalError(f"journal {path!r} is incomplete (schema {version}, tables {sorted(tables)})")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if not set(_JOB_COLUMNS) <= columns:
        raise JournalError(f"journal {path!r} has an unexpected jobs table: {sorted(columns)}")
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise JournalError(f"journal {path!r} is corrupt: {'; '.join(map(str, problems[:3]))}")


def _open_error_message(path: str, exc: BaseException) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"journal {path!r} is in use by another process (or another open Journal): {text}"
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return f"{path!r} is not a qubico_async journal or is corrupt: {text}"
    return f"cannot open journal {path!r}: {text}"
