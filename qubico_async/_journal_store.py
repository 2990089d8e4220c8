"""The journal's storage: one SQLite connection owned by a writer thread that serves one event
loop, group commits, the run lock, and validation of what is on disk. `journal.Journal` is the
async face of it.
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
from typing import Any, Final

from .errors import JournalClosedError, JournalError

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x51424A4C  # "QBJL": marks the file as a qubico_async journal
_MAX_BATCH: Final = 10_000  # operations per transaction (bounds the latency of one commit)
_LOCK_TIMEOUT: Final = 0.2  # seconds to wait for the run lock of a journal in use elsewhere
_BUSY_TIMEOUT: Final = 5.0  # seconds to wait for an outside connection's lock (e.g. a checkpoint)

_JOB_COLUMNS: Final = "key, state, fingerprint, task_id, outcome, result, spend_usd, created_at, updated_at"
_SCHEMA: Final = """CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY, state TEXT NOT NULL, fingerprint TEXT NOT NULL, task_id TEXT, outcome TEXT,
    result TEXT, spend_usd REAL NOT NULL DEFAULT 0, created_at REAL, updated_at REAL
)"""  # the columns of _JOB_COLUMNS, in that order
_OpFn = Callable[[sqlite3.Connection, float], Any]
_Op = tuple[_OpFn, asyncio.Future[Any]]  # an operation and the future awaiting its result
_Delivery = tuple[asyncio.Future[Any], BaseException | None, Any]


def _deliver(items: list[_Delivery]) -> None:
    """Runs on the event loop: resolve the futures whose awaiting task is still interested."""
    for fut, exc, value in items:
        if fut.done():  # cancelled: the write happened, nobody waits for the answer
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _error(message: str, cause: BaseException) -> JournalError:
    error = JournalError(message)
    error.__cause__ = cause
    return error


def _same_error(exc: BaseException) -> BaseException:
    """A fresh copy of a batch-wide error for each waiter (tracebacks are per raise)."""
    if not isinstance(exc, JournalError):
        return exc
    copy = type(exc)(*exc.args)
    copy.__cause__ = exc.__cause__
    return copy


class _Writer:
    """The thread that owns the sqlite3 connection and answers on `loop`; holds no `Journal`.

    A daemon thread: a journal never closed cannot keep the process alive, and nothing is lost
    when the thread dies with it (every acknowledged write was committed first). No finalizer:
    until the process exits, a dropped journal's idle thread keeps its connection and run lock
    (test_exit_without_aclose_does_not_hang_and_keeps_writes runs that under `-W error`).
    """

    def __init__(self, database: str, synchronous: str, loop: asyncio.AbstractEventLoop) -> None:
        self.database = database
        self.loop = loop
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()  # None: commit and stop
        self._lock = threading.Lock()  # orders submit() against stopping
        self._stop_error: BaseException | None = None  # set (under the lock) once stopping
        self._ready: asyncio.Future[None] = loop.create_future()  # the journal is open (or not)
        self._done: asyncio.Future[None] = loop.create_future()  # the thread released the database
        self._thread = threading.Thread(target=self._run, name="qubico-journal-writer", daemon=True)
        self.commits = 0  # transactions committed (for tests)

    @property
    def stopping(self) -> bool:
        return self._stop_error is not None

    async def start(self) -> None:
        """Start the thread and wait until the journal is open (or raise why it is not)."""
        self._thread.start()
        await self._ready

    def submit(self, op: _Op) -> None:
        with self._lock:
            if self._stop_error is not None:
                raise _same_error(self._stop_error)
            self._queue.put(op)

    async def close(self) -> None:
        """Commit what is queued, stop the thread and wait (without blocking the loop) for it."""
        with self._lock:
            if self._stop_error is None:
                self._stop_error = JournalClosedError("the journal is closed")
                self._queue.put(None)
        if self._thread.ident is not None:
            await asyncio.shield(self._done)  # shared by every aclose(): never cancelled by one
            self._thread.join()  # it resolved `_done` as its very last action

    def _post(self, items: list[_Delivery]) -> None:
        """Hand results to the loop: one wake-up per batch. A closed loop has nobody waiting."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_deliver, items)

    # -- thread side ---------------------------------------------------------------------------

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        run_lock: sqlite3.Connection | None = None
        try:
            conn, run_lock = self._connect()
            self._post([(self._ready, None, None)])
            self._serve(conn)
        except BaseException as exc:
            with self._lock:
                if conn is None:  # never opened: Journal.open() raises `exc`
                    self._stop_error = JournalClosedError("the journal failed to open")
                elif self._stop_error is None or isinstance(self._stop_error, JournalClosedError):
                    self._stop_error = _error(f"the journal writer stopped: {exc!r}", exc)  # fail all, never hang
            if conn is None:
                self._post([(self._ready, exc, None)])
        finally:
            for c in (conn, run_lock):  # the journal first (checkpoints the WAL), then its lock
                if c is not None:
                    with contextlib.suppress(sqlite3.Error):
                        c.close()
            self._finish()

    def _finish(self) -> None:
        """Fail whatever is still queued, then release every aclose() (last action)."""
        with self._lock:
            error = self._stop_error  # set: no submit() can queue anything after this
        assert error is not None
        pending: list[_Delivery] = []
        with contextlib.suppress(queue.Empty):
            while True:
                op = self._queue.get_nowait()
                if op is not None:
                    pending.append((op[1], _same_error(error), None))
        self._post([*pending, (self._done, None, None)])

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < _MAX_BATCH and batch[-1] is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ops = [op for op in batch if op is not None]  # None (close) can only come last
            if ops:
                self._run_batch(conn, ops)
            if batch[-1] is None:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        """Run `batch` in one transaction, commit once, then resolve every future."""
        now = time.time()
        results: list[_Delivery] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, fut in batch:
                try:
                    results.append((fut, None, fn(conn, now)))
                except Exception as exc:
                    # Each operation makes at most one change, in one statement, after its checks;
                    # SQLite undoes a failed statement, so a failed operation changed nothing...
                    if not conn.in_transaction:
                        raise  # ...unless SQLite rolled back the whole transaction: batch lost
                    if isinstance(exc, sqlite3.Error):  # else ValueError (bad transition), UnicodeError...
                        exc = _error(f"journal {self.database!r}: write failed: {exc}", exc)
                    results.append((fut, exc, None))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # sqlite3.Error, normally; fail the whole batch, never hang it
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            message = f"journal {self.database!r}: write failed, nothing committed: {exc}"
            results = [(fut, _error(message, exc), None) for _fn, fut in batch]  # one error each
        self._post(results)

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
                conn.execute(_SCHEMA)
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
    if version < 1 or "jobs" not in tables:
        raise JournalError(f"journal {path!r} is incomplete (schema {version}, tables {sorted(tables)})")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if not set(_JOB_COLUMNS.split(", ")) <= columns:
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
