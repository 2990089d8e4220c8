"""A crash-safe SQLite journal for batch runs: nothing is lost and nothing is paid for twice.

The batch engine writes a job's row (durably) *before* it sends the paid create request, and
records the task id as soon as the create answers. On a rerun with the same journal:

- `finished` rows are skipped (their outcome is replayed);
- `submitted` rows have a task id: they are polled, never created again;
- `intent` rows (left by a run that died between writing the intent and learning the task id)
  and `uncertain` rows (the create was sent but no answer came back) may or may not have
  created a paid task: the engine reports them and resubmits only when told to.

Design:

- One dedicated writer thread owns the `sqlite3` connection and executes every operation
  (reads too, so they see every earlier write). Coroutines enqueue an operation and await an
  asyncio future that the thread resolves with `loop.call_soon_threadsafe`: the event loop
  never blocks on SQLite.
- Group commit: the thread drains everything queued, runs it in ONE transaction, commits once,
  and only then resolves the futures. A `record_*` call that returned is therefore on disk, and
  thousands of writes per second cost a few fsyncs. Each operation makes at most one change, in
  one statement, after its checks, so a failing operation (bad transition, unstorable key)
  changes nothing and fails alone; the rest of its batch commits.
- Durability: WAL mode with `synchronous=FULL` by default: every commit is fsynced, so a
  returned `record_intent` survives SIGKILL *and* power loss / OS crash. With group commit this
  is cheap. Measured on the dev box (ext4; fsync 0.2-2 ms, noisy): 5,000 concurrent
  `record_intent` calls take ~0.25 s in 2-4 commits with FULL and NORMAL alike; a lone awaited
  write takes 0.3-2 ms with FULL (one fsync) vs ~0.1 ms with NORMAL; an engine-like load (three
  writes per job, 1,000-3,000 jobs/s) runs at the same speed in both modes. On slow disks the
  fsync is paid once per batch, and batches grow while it runs. `synchronous="NORMAL"` skips
  the per-commit fsync: still safe against a process crash (SIGKILL, OOM kill), but the last
  commits can be lost on power loss, which could mean paying twice for those jobs. A crash
  never corrupts the file.
- One run at a time: an open file journal holds an exclusive lock on `<path>-lock` (a tiny
  SQLite file left in place), so a second run (or a second `Journal` in this process) cannot
  use it concurrently and submit the same jobs twice; opening it raises `InvalidInputError`.
  Other processes can still *read* the journal while it is in use (WAL readers see every
  acknowledged write), e.g. `sqlite3.connect("file:run.sqlite?mode=ro", uri=True)`. New
  journal files are created with mode 0600 (results may hold signed URLs).
- Cancellation: if the task awaiting a write is cancelled, the write still happens (it is
  already queued); only the answer is dropped. Operations run in the order they were called.
- Forgetting `aclose()` loses nothing acknowledged; the writer stops when the `Journal` is
  garbage-collected or the interpreter exits (it never keeps the process alive).
- The writer shares the GIL with the event loop: writes slow down only when the loop never
  idles (the thread then gets the GIL once per switch interval); an engine whose tasks await
  the network and the journal idles naturally (measured cost: 10-30% of a saturated loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, cast, get_args

import anyio
from attrs import frozen

from .errors import ClientClosedError, InvalidInputError, QubicoError

__all__ = ["JOB_STATES", "JobState", "Journal", "JournalEntry", "JournalError"]

JobState = Literal["intent", "submitted", "uncertain", "finished"]
JOB_STATES: Final[tuple[JobState, ...]] = get_args(JobState)

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x51424A4C  # "QBJL": marks the file as a qubico_async journal
_MAX_BATCH: Final = 10_000  # operations per transaction (bounds the latency of one commit)
_DELIVER_CHUNK: Final = 256  # futures resolved per event-loop iteration
_IDLE_POLL: Final = 0.25  # seconds; how often an idle writer checks that the interpreter lives
_LOCK_TIMEOUT: Final = 0.2  # seconds to wait for the run lock of a journal in use elsewhere
_BUSY_TIMEOUT: Final = 5.0  # seconds to wait for an outside connection's lock (e.g. a checkpoint)

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
_SELECT: Final = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"  # noqa: S608 (constant columns)


class JournalError(QubicoError):
    """The journal could not be read or written (disk full, I/O error, writer stopped).

    Treat the call as not done. (After an I/O error during a commit SQLite may still find the
    write on the next open; for `record_intent` that errs on the safe side: the job shows up as
    not finished and without a task id, i.e. uncertain.)
    """


@frozen
class JournalEntry:
    """One job's row.

    `state`: `intent` = row written, create maybe sent; `submitted` = the create answered with
    `task_id`; `uncertain` = the create may or may not have happened (`result` is
    `{"reason": ...}`); `finished` = `outcome` and `result` are final. An `intent` row found when
    a journal is reopened means the previous run died mid-create: treat it as uncertain.
    """

    key: str
    state: JobState
    fingerprint: str
    task_id: str | None
    outcome: str | None
    result: dict[str, Any] | None
    spend_usd: float
    created_at: float
    updated_at: float


class Journal:
    """Append-mostly SQLite journal; one writer thread, group commit; safe against SIGKILL.

    Use `journal = await Journal.open(path)` and `await journal.aclose()`, or
    `async with await Journal.open(path) as journal:`. asyncio only (like the rest of the SDK).
    """

    def __init__(self, writer: _Writer) -> None:
        """Private: use `await Journal.open(path)`."""
        self._writer = writer
        # If the journal is dropped without aclose(), stop the writer anyway.
        self._finalizer = weakref.finalize(self, writer.request_close, None, None)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> Journal:
        """Open (or create) the journal at `path`; None (or ":memory:") keeps it in memory.

        An in-memory journal behaves the same but is lost at `aclose()`. `synchronous="NORMAL"`
        trades power-loss durability for fewer fsyncs (see the module docstring). Raises
        `InvalidInputError` if the file is not a journal, is corrupt, was written by a newer
        version, cannot be opened, or is in use by another process.
        """
        if synchronous not in ("FULL", "NORMAL"):
            raise InvalidInputError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        if path is None:
            database = ":memory:"
        else:
            raw = os.fspath(path)
            database = os.fsdecode(raw)
            if not database:
                raise InvalidInputError("journal path must not be empty (use None for in-memory)")
        writer = _Writer(database, synchronous)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        writer.start(loop, ready)
        try:
            await ready
        except BaseException:
            with anyio.CancelScope(shield=True):
                await writer.close()
            raise
        return cls(writer)

    @property
    def path(self) -> str | None:
        """The journal file, or None for an in-memory journal."""
        return None if self._writer.database == ":memory:" else self._writer.database

    @property
    def closed(self) -> bool:
        """True once `aclose()` was called (or the writer stopped after an error)."""
        return self._writer.stopping

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Journal {self.path or ':memory:'} ({state})>"

    async def aclose(self) -> None:
        """Commit everything queued, close the database and stop the writer thread. Idempotent.

        Shielded from cancellation: it always waits for the writer, so no thread outlives it.
        """
        self._finalizer.detach()
        with anyio.CancelScope(shield=True):
            await self._writer.close()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- reads -------------------------------------------------------------------------------

    async def load(self) -> dict[str, JournalEntry]:
        """Every entry by key, in insertion order (for resuming a run)."""

        def op(conn: sqlite3.Connection, now: float) -> dict[str, JournalEntry]:
            rows = conn.execute(f"{_SELECT} ORDER BY rowid")
            return {row[0]: _entry(row) for row in rows}

        return await self._call(op)

    async def get(self, key: str) -> JournalEntry | None:
        """The entry for `key`, or None."""

        def op(conn: sqlite3.Connection, now: float) -> JournalEntry | None:
            row = conn.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
            return None if row is None else _entry(row)

        return await self._call(op)

    async def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state is present, possibly 0)."""

        def op(conn: sqlite3.Connection, now: float) -> dict[str, int]:
            counts: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
            for state, n in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[state] = n
            return counts

        return await self._call(op)

    async def total_spend(self) -> float:
        """Sum of `spend_usd` over all jobs (correctly rounded)."""

        def op(conn: sqlite3.Connection, now: float) -> float:
            rows = conn.execute("SELECT spend_usd FROM jobs WHERE spend_usd != 0")
            return math.fsum(value for (value,) in rows)

        return await self._call(op)

    async def get_meta(self, name: str) -> str | None:
        """A run metadata value (e.g. CLI arguments, SDK version), or None."""

        def op(conn: sqlite3.Connection, now: float) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            return None if row is None else cast(str | None, row[0])

        return await self._call(op)

    # -- writes (each is committed before the call returns) ------------------------------------

    async def set_meta(self, name: str, value: str) -> None:
        """Store a run metadata value (overwrites)."""

        def op(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._call(op)

    async def record_intent(self, key: str, fingerprint: str) -> None:
        """Record that `key` is about to be submitted; durable when this returns.

        A new key gets an `intent` row. An `intent`/`uncertain` row keeps its state and takes the
        new fingerprint. A `submitted`/`finished` row is never downgraded: the call does nothing
        (check the state first; see `get`).
        """

        def op(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(
                "INSERT INTO jobs (key, state, fingerprint, created_at, updated_at)"
                " VALUES (?, 'intent', ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET"
                " fingerprint = excluded.fingerprint, updated_at = excluded.updated_at"
                " WHERE jobs.state IN ('intent', 'uncertain')",
                (key, fingerprint, now, now),
            )

        await self._call(op)

    async def record_submitted(self, key: str, task_id: str) -> None:
        """Record the task id the create answered with; durable when this returns.

        Allowed from `intent`, `uncertain` and `submitted` (the latest task id wins). Raises
        `ValueError` if `key` has no row or is already `finished`.
        """
        if not task_id:
            raise ValueError(f"record_submitted({key!r}): task_id must not be empty")

        def op(conn: sqlite3.Connection, now: float) -> None:
            cur = conn.execute(
                "UPDATE jobs SET state = 'submitted', task_id = ?, result = NULL, updated_at = ?"
                " WHERE key = ? AND state != 'finished'",
                (task_id, now, key),
            )
            if cur.rowcount == 0:
                raise _transition_error(conn, "record_submitted", key)

        await self._call(op)

    async def record_uncertain(self, key: str, reason: str) -> None:
        """Mark `key` as maybe-created (e.g. after `SubmissionUncertainError`); stores `reason`.

        Allowed from `intent` and `uncertain`. Raises `ValueError` if `key` has no row or is
        already `submitted` (its task id is known) or `finished`.
        """
        result = _dumps({"reason": reason})

        def op(conn: sqlite3.Connection, now: float) -> None:
            cur = conn.execute(
                "UPDATE jobs SET state = 'uncertain', result = ?, updated_at = ?"
                " WHERE key = ? AND state IN ('intent', 'uncertain')",
                (result, now, key),
            )
            if cur.rowcount == 0:
                raise _transition_error(conn, "record_uncertain", key)

        await self._call(op)

    async def record_finished(
        self,
        key: str,
        outcome: str,
        result: dict[str, Any] | None,
        spend_usd: float,
        *,
        fingerprint: str | None = None,
    ) -> None:
        """Record the final `outcome` (opaque, e.g. "succeeded"), a JSON-able `result` and spend.

        Allowed from any state (a finished row is overwritten; `task_id` is kept). A key without a
        row (e.g. a job skipped before submission) needs `fingerprint`, else `ValueError`.
        Raises `TypeError`/`ValueError` if `result` is not JSON-able or `spend_usd` is not a
        finite number >= 0.
        """
        spend = float(spend_usd)
        if not math.isfinite(spend) or spend < 0:
            raise ValueError(f"record_finished({key!r}): spend_usd must be finite and >= 0, not {spend_usd!r}")
        text = None if result is None else _dumps(result)

        def op(conn: sqlite3.Connection, now: float) -> None:
            cur = conn.execute(
                "UPDATE jobs SET state = 'finished', outcome = ?, result = ?, spend_usd = ?,"
                " updated_at = ? WHERE key = ?",
                (outcome, text, spend, now, key),
            )
            if cur.rowcount:
                return
            if fingerprint is None:
                raise ValueError(f"record_finished({key!r}): no row for this key; pass fingerprint= to create one")
            conn.execute(
                "INSERT INTO jobs (key, state, fingerprint, outcome, result, spend_usd, created_at,"
                " updated_at) VALUES (?, 'finished', ?, ?, ?, ?, ?, ?)",
                (key, fingerprint, outcome, text, spend, now, now),
            )

        await self._call(op)

    async def discard(self, key: str) -> bool:
        """Forget an `intent` row whose create provably created nothing (e.g. rejected with 400).

        A rerun may then submit the job again. Only `intent` rows are removed: an `uncertain` row
        keeps the earlier maybe-created task on record, and `submitted`/`finished` rows are never
        removed. Returns True if a row was removed.
        """

        def op(conn: sqlite3.Connection, now: float) -> bool:
            cur = conn.execute("DELETE FROM jobs WHERE key = ? AND state = 'intent'", (key,))
            return cur.rowcount > 0

        return await self._call(op)

    # -- plumbing ----------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection, float], _T]) -> _T:
        """Queue `fn` for the writer thread and wait for its (committed) result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()
        self._writer.submit((fn, loop, fut))
        return await fut


def _dumps(value: dict[str, Any]) -> str:
    """Compact JSON; rejects NaN/Infinity (not JSON) and non-JSON-able values."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    key, state, fingerprint, task_id, outcome, result, spend, created, updated = row
    if state not in JOB_STATES:
        raise JournalError(f"journal row {key!r} has an unknown state {state!r}")
    return JournalEntry(
        key=key,
        state=state,
        fingerprint=fingerprint,
        task_id=task_id,
        outcome=outcome,
        result=None if result is None else json.loads(result),
        spend_usd=float(spend),
        created_at=float(created or 0.0),
        updated_at=float(updated or 0.0),
    )


def _transition_error(conn: sqlite3.Connection, what: str, key: str) -> ValueError:
    """Explain why an UPDATE guarded by a state check matched no row."""
    row = conn.execute("SELECT state, task_id, outcome FROM jobs WHERE key = ?", (key,)).fetchone()
    if row is None:
        return ValueError(f"{what}({key!r}): no intent was recorded for this key")
    state, task_id, outcome = row
    if state == "finished":
        return ValueError(f"{what}({key!r}): the job is already finished (outcome {outcome!r})")
    return ValueError(f"{what}({key!r}): the job is already {state} as task {task_id!r}")


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
    copy: QubicoError
    if isinstance(exc, JournalError):
        copy = JournalError(*exc.args)
    elif isinstance(exc, ClientClosedError):
        copy = ClientClosedError(*exc.args)
    else:
        return exc
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
                self._stop_error = ClientClosedError("the journal is closed")
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
                    self._stop_error = ClientClosedError("the journal failed to open")
                self._resolve_ready(exc)
                return
            self._resolve_ready(None)
            try:
                self._serve(conn)
            except BaseException as exc:  # a bug or a fatal error: fail everything, never hang
                with self._lock:
                    if self._stop_error is None or isinstance(self._stop_error, ClientClosedError):
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
                self._stop_error = ClientClosedError("the journal is closed")
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
        """Open, validate, lock and (if new) initialise the journal; InvalidInputError if unusable.

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
                    raise InvalidInputError(f"journal {path!r}: cannot use WAL mode (got {mode!r})")
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
            if isinstance(exc, InvalidInputError):
                raise
            if isinstance(exc, sqlite3.Error | OSError):
                raise InvalidInputError(_open_error_message(path, exc)) from exc
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
        raise InvalidInputError(f"{path!r} is an SQLite database but not a qubico_async journal")
    if version > SCHEMA_VERSION:
        raise InvalidInputError(
            f"journal {path!r} was written by a newer qubico_async (schema {version},"
            f" this version reads up to {SCHEMA_VERSION}): upgrade qubico_async"
        )
    if version < 1 or not {"jobs", "meta"} <= tables:
        raise InvalidInputError(f"journal {path!r} is incomplete (schema {version}, tables {sorted(tables)})")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if not set(_JOB_COLUMNS) <= columns:
        raise InvalidInputError(f"journal {path!r} has an unexpected jobs table: {sorted(columns)}")
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise InvalidInputError(f"journal {path!r} is corrupt: {'; '.join(map(str, problems[:3]))}")


def _open_error_message(path: str, exc: BaseException) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"journal {path!r} is in use by another process (or another open Journal): {text}"
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return f"{path!r} is not a qubico_async journal or is corrupt: {text}"
    return f"cannot open journal {path!r}: {text}"
