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
  use it concurrently and submit the same jobs twice; opening it raises `JournalError`.
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
import json
import math
import os
import sqlite3
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, cast, get_args

import anyio
from attrs import frozen

from ._journal_store import _JOB_COLUMNS, _Writer
from .errors import InvalidInputError, JournalError

_T = TypeVar("_T")

__all__ = ["JOB_STATES", "JobState", "Journal", "JournalEntry", "JournalError"]

JobState = Literal["intent", "submitted", "uncertain", "finished"]
JOB_STATES: Final[tuple[JobState, ...]] = get_args(JobState)

_SELECT: Final = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"  # noqa: S608 (constant columns)


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
        `JournalError` if the file is not a journal, is corrupt, was written by a newer
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
        """Sum of `spend_usd` over all jobs (correctly rounded): what the budget has committed.

        A finished job counts what it cost; a job not finished (maybe created, or polled later)
        counts the reservation it was submitted with.
        """

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

    async def record_intent(self, key: str, fingerprint: str, reserve_usd: float = 0.0) -> None:
        """Record that `key` is about to be submitted; durable when this returns.

        A new key gets an `intent` row holding `reserve_usd` as its spend until it finishes (so
        the budget of a rerun counts it). An `intent`/`uncertain` row keeps its state and takes
        the new fingerprint. A `submitted`/`finished` row is never downgraded: the call does
        nothing (check the state first; see `get`).
        """
        reserve = float(reserve_usd)
        if not math.isfinite(reserve) or reserve < 0:
            raise ValueError(f"record_intent({key!r}): reserve_usd must be finite and >= 0, not {reserve_usd!r}")

        def op(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(
                "INSERT INTO jobs (key, state, fingerprint, spend_usd, created_at, updated_at)"
                " VALUES (?, 'intent', ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET"
                " fingerprint = excluded.fingerprint, updated_at = excluded.updated_at,"
                " spend_usd = MAX(jobs.spend_usd, excluded.spend_usd)"
                " WHERE jobs.state IN ('intent', 'uncertain')",
                (key, fingerprint, reserve, now, now),
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
