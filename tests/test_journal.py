"""The batch journal: transitions, persistence, group commit, loop responsiveness, SIGKILL safety.

Rows are read back the way any outside reader may (`journal_rows`: a read-only connection), or
through `get(key)`. What a rerun does with them is tested through `swap_many` in test_batch.py
and test_money_and_data.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
import pytest

from qubico_async.errors import InvalidInputError, JournalClosedError
from qubico_async.journal import Journal, JournalEntry, JournalError
from tests._helpers import HANG_GUARD, journal_rows

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _without_asyncio_debug() -> Iterator[None]:
    """Timing tests measure the journal, not asyncio debug mode (`-X dev`), which records a stack
    trace for every future, task and callback and makes 5,000 bare tasks ~15x slower."""
    loop = asyncio.get_running_loop()
    debug = loop.get_debug()
    loop.set_debug(False)
    try:
        yield
    finally:
        loop.set_debug(debug)


async def _finish(journal: Journal, key: str, spend: float, result: dict[str, Any] | None = None) -> None:
    await journal.record_finished(key, "succeeded", result, spend, fingerprint="fp")


def _rows(journal: Journal) -> dict[str, dict[str, Any]]:
    assert journal.path is not None
    return journal_rows(journal.path)


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "qubico-journal-writer"]


@pytest.fixture
async def journal(tmp_path: Path) -> Any:
    async with await Journal.open(tmp_path / "run.sqlite") as j:
        yield j


# -- transitions ---------------------------------------------------------------------------------


async def test_happy_path_round_trip(journal: Journal) -> None:
    before = time.time()
    await journal.record_intent("job-1", "fp1")
    entry = await journal.get("job-1")
    assert entry is not None
    assert (entry.key, entry.state, entry.fingerprint, entry.task_id) == ("job-1", "intent", "fp1", None)
    assert (entry.outcome, entry.result, entry.spend_usd) == (None, None, 0.0)
    assert before <= entry.created_at == entry.updated_at <= time.time()

    await journal.record_submitted("job-1", "task-1")
    entry = await journal.get("job-1")
    assert entry is not None and (entry.state, entry.task_id) == ("submitted", "task-1")

    result = {"status": "completed", "output": {"url": "https://cdn.example/o.png"}, "n": [1, 2.5, None]}
    await journal.record_finished("job-1", "succeeded", result, 0.01)
    entry = await journal.get("job-1")
    assert entry is not None
    assert entry == JournalEntry(
        key="job-1",
        state="finished",
        fingerprint="fp1",
        task_id="task-1",  # kept
        outcome="succeeded",
        result=result,
        spend_usd=0.01,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
    )
    assert entry.updated_at >= entry.created_at
    assert await journal.get("missing") is None


async def test_uncertain_path(journal: Journal) -> None:
    await journal.record_intent("k", "fp-old")
    await journal.record_uncertain("k", "timeout after send")
    entry = await journal.get("k")
    assert entry is not None
    assert (entry.state, entry.result, entry.task_id) == ("uncertain", {"reason": "timeout after send"}, None)

    await journal.record_uncertain("k", "still unknown")  # uncertain -> uncertain updates the reason
    # A resubmission re-records the intent: state stays uncertain, the fingerprint is updated.
    await journal.record_intent("k", "fp-new")
    entry = await journal.get("k")
    assert entry is not None
    assert (entry.state, entry.fingerprint, entry.result) == (
        "uncertain",
        "fp-new",
        {"reason": "still unknown"},
    )

    await journal.record_submitted("k", "task-9")  # from uncertain; the stale reason is cleared
    entry = await journal.get("k")
    assert entry is not None and (entry.state, entry.task_id, entry.result) == ("submitted", "task-9", None)

    await journal.record_submitted("k", "task-10")  # submitted -> submitted: the latest id wins
    entry = await journal.get("k")
    assert entry is not None and entry.task_id == "task-10"


async def test_record_intent_never_downgrades(journal: Journal) -> None:
    await journal.record_intent("s", "fp")
    await journal.record_submitted("s", "task-s")
    await journal.record_intent("f", "fp")
    await journal.record_finished("f", "failed", {"error": "no face"}, 0.0)
    before = _rows(journal)

    await journal.record_intent("s", "other")
    await journal.record_intent("f", "other")
    assert _rows(journal) == before


async def test_invalid_transitions_raise_and_change_nothing(journal: Journal) -> None:
    await journal.record_intent("sub", "fp")
    await journal.record_submitted("sub", "task-1")
    await journal.record_finished("fin", "skipped", None, 0.0, fingerprint="fp-fin")  # no row yet: inserted
    before = _rows(journal)
    assert before["fin"]["state"] == "finished" and before["fin"]["fingerprint"] == "fp-fin"

    with pytest.raises(ValueError, match="no intent was recorded"):
        await journal.record_submitted("nope", "task-x")
    with pytest.raises(ValueError, match="already finished"):
        await journal.record_submitted("fin", "task-x")
    with pytest.raises(ValueError, match="no intent was recorded"):
        await journal.record_uncertain("nope", "why")
    with pytest.raises(ValueError, match="already submitted as task 'task-1'"):
        await journal.record_uncertain("sub", "why")
    with pytest.raises(ValueError, match="already finished"):
        await journal.record_uncertain("fin", "why")
    with pytest.raises(ValueError, match="pass fingerprint="):
        await journal.record_finished("nope", "succeeded", None, 0.0)
    with pytest.raises(ValueError, match="task_id must not be empty"):
        await journal.record_submitted("sub", "")
    for spend in (-0.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="spend_usd"):
            await journal.record_finished("sub", "succeeded", None, spend)
    with pytest.raises(TypeError):
        await journal.record_finished("sub", "succeeded", {"obj": object()}, 0.0)
    with pytest.raises(ValueError, match="not JSON compliant"):
        await journal.record_finished("sub", "succeeded", {"x": math.nan}, 0.0)

    assert _rows(journal) == before


async def test_discard_forgets_only_intent_rows(journal: Journal) -> None:
    await journal.record_intent("rejected", "fp")
    assert await journal.discard("rejected") is True  # the create failed provably: forget it
    assert await journal.get("rejected") is None
    await journal.record_intent("rejected", "fp")  # a rerun may submit it again
    assert await journal.discard("missing") is False

    await journal.record_intent("u", "fp")
    await journal.record_uncertain("u", "timeout after send")
    await journal.record_intent("s", "fp")
    await journal.record_submitted("s", "t")
    await journal.record_finished("f", "succeeded", None, 0.01, fingerprint="fp")
    before = _rows(journal)
    for key in ("u", "s", "f"):  # an earlier maybe-created or created task stays on record
        assert await journal.discard(key) is False
    assert _rows(journal) == before


async def test_finished_can_be_overwritten(journal: Journal) -> None:
    await journal.record_intent("k", "fp")
    await journal.record_submitted("k", "t")
    await journal.record_finished("k", "failed", {"error": "boom"}, 0.0)
    await journal.record_finished("k", "succeeded", {"ok": True}, 0.01)
    entry = await journal.get("k")
    assert entry is not None
    assert (entry.state, entry.outcome, entry.result, entry.spend_usd, entry.task_id) == (
        "finished",
        "succeeded",
        {"ok": True},
        0.01,
        "t",
    )


async def test_a_failing_operation_does_not_fail_its_batch(journal: Journal) -> None:
    outcomes: dict[str, str] = {}

    async def intent(key: str) -> None:
        try:
            await journal.record_intent(key, "fp")
        except UnicodeEncodeError:
            outcomes[key] = "error"
        else:
            outcomes[key] = "ok"

    keys = [f"good-{i}" for i in range(50)]
    keys.insert(25, "bad-\ud800")  # a lone surrogate cannot be stored: fails alone, mid-batch
    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(intent, key)
    assert outcomes.pop("bad-\ud800") == "error"
    assert set(outcomes.values()) == {"ok"}
    assert set(_rows(journal)) == set(outcomes)


async def test_sqlite_failure_raises_journal_error_and_journal_recovers(journal: Journal) -> None:
    await journal.record_intent("small", "fp")

    def cap(pages: int) -> Any:
        def op(conn: sqlite3.Connection, now: float) -> None:
            current = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {current + pages}")

        return op

    await journal._call(cap(0))  # simulate a full disk
    with pytest.raises(JournalError, match="full"):
        await journal.record_finished("small", "succeeded", {"blob": "x" * 200_000}, 0.01)
    entry = await journal.get("small")
    assert entry is not None and entry.state == "intent"  # nothing half-written

    await journal._call(cap(10_000))  # space again
    await journal.record_finished("small", "succeeded", {"blob": "x" * 200_000}, 0.01)
    entry = await journal.get("small")
    assert entry is not None and entry.state == "finished"


# -- persistence ---------------------------------------------------------------------------------


async def test_persistence_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with await Journal.open(path) as j:
        assert j.path == str(path)
        for i in range(4):
            await j.record_intent(f"k{i}", f"fp{i}")
        await j.record_submitted("k1", "t1")
        await j.record_uncertain("k2", "reset after send")
        await j.record_submitted("k3", "t3")
        await j.record_finished("k3", "succeeded", {"url": "u"}, 0.01)
        before_close = {key: await j.get(key) for key in ("k0", "k1", "k2", "k3")}
    written = journal_rows(path)
    assert list(written) == ["k0", "k1", "k2", "k3"]
    assert [row["state"] for row in written.values()] == ["intent", "submitted", "uncertain", "finished"]

    async with await Journal.open(str(path)) as j:
        assert _rows(j) == written
        assert {key: await j.get(key) for key in written} == before_close
        await j.record_submitted("k0", "t0")  # a resumed run carries on
    async with await Journal.open(path) as j:
        entry = await j.get("k0")
        assert entry is not None and entry.task_id == "t0"


async def test_in_memory_journal(tmp_path: Path) -> None:
    async with await Journal.open(None) as j:
        assert j.path is None
        await j.record_intent("a", "fp")
        await j.record_submitted("a", "t")
        await j.record_finished("a", "succeeded", {"k": "v"}, 0.01)
        entry = await j.get("a")
        assert entry is not None and (entry.state, entry.result) == ("finished", {"k": "v"})
        assert await j.total_spend() == pytest.approx(0.01)
    async with await Journal.open(":memory:") as j:
        assert await j.get("a") is None  # nothing survives
        assert await j.total_spend() == 0.0
    assert os.listdir(tmp_path) == []


async def test_total_spend_counts_spend_and_reservations(journal: Journal) -> None:
    assert await journal.total_spend() == 0.0
    with _without_asyncio_debug():
        async with anyio.create_task_group() as tg:  # concurrent: one fsync per group, not per write
            for i in range(1000):
                tg.start_soon(_finish, journal, f"f{i}", 0.01)
    await journal.record_intent("i", "fp", reserve_usd=0.25)  # not finished: its reservation counts
    await journal.record_intent("i", "fp", reserve_usd=0.125)  # the larger reservation is kept
    await journal.record_intent("u", "fp", reserve_usd=0.5)
    await journal.record_uncertain("u", "?")
    await journal.record_intent("s", "fp")
    await journal.record_submitted("s", "t")
    states = Counter(row["state"] for row in _rows(journal).values())
    assert states == {"intent": 1, "submitted": 1, "uncertain": 1, "finished": 1000}
    assert await journal.total_spend() == pytest.approx(10.75, abs=1e-9)
    await journal.record_finished("u", "succeeded", None, 0.01)  # settled: the cost replaces it
    assert await journal.total_spend() == pytest.approx(10.26, abs=1e-9)


async def test_file_holds_exactly_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-live-this-must-never-reach-the-journal"
    monkeypatch.setenv("QUBICO_API_KEY", secret)
    path = tmp_path / "run.sqlite"
    async with await Journal.open(path) as j:
        await j.record_intent("job-a", "a" * 64)
        await j.record_submitted("job-a", "task-a")
        await j.record_finished("job-a", "succeeded", {"url": "https://cdn.example/out.png"}, 0.01)

    # The WAL was folded in and removed at close; the run lock file stays (empty of data).
    assert sorted(os.listdir(tmp_path)) == ["run.sqlite", "run.sqlite-lock"]
    for name in os.listdir(tmp_path):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0  # private to the user
    raw = path.read_bytes()
    assert b"https://cdn.example/out.png" in raw
    assert secret.encode() not in raw
    lock = (tmp_path / "run.sqlite-lock").read_bytes()
    assert b"job-a" not in lock and b"cdn.example" not in lock

    conn = sqlite3.connect(path)
    try:
        schema = {(kind, name) for kind, name in conn.execute("SELECT type, name FROM sqlite_master")}
        assert schema == {("table", "jobs"), ("index", "sqlite_autoindex_jobs_1")}
        rows = conn.execute("SELECT key, state, fingerprint, task_id, outcome, result, spend_usd FROM jobs").fetchall()
        assert rows == [
            (
                "job-a",
                "finished",
                "a" * 64,
                "task-a",
                "succeeded",
                '{"url":"https://cdn.example/out.png"}',
                0.01,
            )
        ]
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


# -- refusing bad files --------------------------------------------------------------------------


async def test_garbage_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(JournalError, match=r"notes\.txt"):
        await Journal.open(path)
    assert path.read_bytes() == b"this is not a database\n" * 200  # untouched
    assert os.listdir(tmp_path) == ["notes.txt"]  # and no lock file left beside it


async def test_foreign_sqlite_database_is_rejected_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(JournalError, match="not a qubico_async journal"):
        await Journal.open(path)
    assert path.read_bytes() == before


async def test_corrupt_journal_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    with _without_asyncio_debug():
        async with await Journal.open(path) as j, anyio.create_task_group() as tg:
            for i in range(2000):
                tg.start_soon(_finish, j, f"k{i}", 0.01, {"pad": "y" * 100})
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 512] = b"\xff" * 512
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="corrupt"):
        await Journal.open(path)

    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(JournalError, match=r"truncated\.sqlite"):
        await Journal.open(truncated)
    assert _writer_threads() == []


async def test_newer_journal_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with await Journal.open(path) as j:
        await j.record_intent("k", "fp")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with pytest.raises(JournalError, match="newer qubico_async"):
        await Journal.open(path)


async def test_unopenable_paths_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no-such-dir"):
        await Journal.open(tmp_path / "no-such-dir" / "run.sqlite")
    with pytest.raises(JournalError, match="cannot open journal"):
        await Journal.open(tmp_path)  # a directory
    with pytest.raises(InvalidInputError, match="must not be empty"):
        await Journal.open("")
    with pytest.raises(InvalidInputError, match="synchronous"):
        await Journal.open(None, synchronous="OFF")  # type: ignore[arg-type]


async def test_a_journal_in_use_cannot_be_opened_twice(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with await Journal.open(path) as first:
        await first.record_intent("k", "fp")
        with pytest.raises(JournalError, match="in use"):
            await Journal.open(path)
        await first.record_submitted("k", "t")  # the first one is unaffected
    async with await Journal.open(path) as again:
        entry = await again.get("k")
        assert entry is not None and entry.state == "submitted"


async def test_a_journal_in_use_can_be_read_by_others(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    async with await Journal.open(path) as j:
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1)
        try:
            for i in range(3):  # every acknowledged write is visible to an outside reader at once
                await j.record_intent(f"k{i}", "fp")
                await j.record_submitted(f"k{i}", f"t{i}")
                rows = reader.execute("SELECT key, state, task_id FROM jobs ORDER BY rowid").fetchall()
                assert rows[-1] == (f"k{i}", "submitted", f"t{i}")
                assert len(rows) == i + 1
        finally:
            reader.close()
        await j.record_intent("after", "fp")  # a reader does not disturb the writer


# -- group commit and the event loop -------------------------------------------------------------


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_group_commit_5000_concurrent_intents(tmp_path: Path, synchronous: Literal["FULL", "NORMAL"]) -> None:
    n = 5000
    async with await Journal.open(tmp_path / "run.sqlite", synchronous=synchronous) as j:
        with _without_asyncio_debug():
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(j.record_intent, f"job-{i}", f"fp-{i}")
        commits = j._writer.commits
        rows = _rows(j)
    print(f"\n{synchronous}: {n} concurrent record_intent in {commits} commits")
    assert len(rows) == n
    assert all(row["state"] == "intent" and row["fingerprint"] == f"fp-{key[4:]}" for key, row in rows.items())
    # Throughput, counted: grouped, not one fsync per write (the speed follows from the fsync count).
    assert commits <= n // 10


async def test_event_loop_stays_responsive_during_writes(journal: Journal) -> None:
    """A 1 ms heartbeat keeps ticking while 5,000 writes run.

    Counted, not timed: the heartbeat notes how many writes had finished at each tick. A journal
    that held the event loop (a blocking commit on the loop, or waiting for the writer thread)
    would leave no tick between the first and the last write; a responsive one gets dozens (~30
    on a quiet machine, still >= 5 at a load average of 7). How long a gap lasts is not asserted:
    on a loaded machine that measures the scheduler, not the journal.

    The ticker sleeps 1 ms rather than spinning on `sleep(0)`: a loop that never idles holds the
    GIL, and the writer thread then gets it only every switch interval (5 ms), which makes the
    test measure CPython's GIL hand-off instead of the journal.
    """
    n = 5000
    finished = 0
    seen: list[int] = []  # writes finished, at each tick
    gaps: list[float] = []
    stop = False

    async def heartbeat() -> None:
        last = anyio.current_time()
        while not stop:
            await anyio.sleep(0.001)
            now = anyio.current_time()
            gaps.append(now - last)
            seen.append(finished)
            last = now

    async def write(i: int) -> None:
        nonlocal finished
        await journal.record_intent(f"job-{i}", "fp")
        finished += 1

    async def writes() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(write, i)
                if i % 250 == 249:
                    await anyio.lowlevel.checkpoint()  # spawning itself must not be what we measure

    gc.collect()
    gc.freeze()  # a full collection over the whole test session's heap is not the journal's pause
    try:
        with _without_asyncio_debug():
            async with anyio.create_task_group() as tg:
                tg.start_soon(heartbeat)
                await writes()
                stop = True
    finally:
        gc.unfreeze()
    during = [done for done in seen if 0 < done < n]
    lagging = sum(1 for gap in gaps if gap > 0.2)
    print(f"\nheartbeat: {len(seen)} ticks, {len(during)} while writes were in flight, {lagging} gaps over 0.2 s")
    assert finished == n and len(_rows(journal)) == n
    assert len(during) >= 3  # the loop kept turning while the writes were in flight


# -- cancellation and closing --------------------------------------------------------------------


async def test_cancelled_waiter_still_writes(journal: Journal) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await journal.record_intent("cancelled", "fp")  # queued, then the await is cancelled
    assert scope.cancelled_caught
    entry = await journal.get("cancelled")  # runs after the queued write (FIFO)
    assert entry is not None and entry.state == "intent"

    started = 0
    all_queued = anyio.Event()

    async def intent(i: int) -> None:
        nonlocal started
        started += 1
        if started == 300:
            all_queued.set()
        await journal.record_intent(f"k{i}", "fp")  # queues synchronously, then awaits

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(intent, i)
        await all_queued.wait()
        tg.cancel_scope.cancel()  # every write is queued; all waiters are cancelled
    await journal.get("k0")  # queued after every cancelled write (FIFO): they are committed now
    assert len(_rows(journal)) == 301
    await journal.record_submitted("k0", "t0")  # still fully usable
    entry = await journal.get("k0")
    assert entry is not None and entry.task_id == "t0"


async def test_aclose_is_idempotent_and_leaves_no_thread(tmp_path: Path) -> None:
    baseline = threading.active_count()
    j = await Journal.open(tmp_path / "run.sqlite")
    assert threading.active_count() == baseline + 1
    assert "open" in repr(j)
    await j.record_intent("k", "fp")
    await j.aclose()
    assert threading.active_count() == baseline
    assert j.closed and "closed" in repr(j)
    await j.aclose()
    async with j:  # entering a closed journal is harmless; using it is not
        with pytest.raises(JournalClosedError, match="journal is closed"):
            await j.record_intent("k2", "fp")
        with pytest.raises(JournalClosedError):
            await j.get("k")
    assert threading.active_count() == baseline


async def test_aclose_completes_even_when_cancelled(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path / "run.sqlite")
    with anyio.CancelScope() as scope:
        scope.cancel()
        await j.record_intent("k", "fp")
    with anyio.CancelScope() as scope:
        scope.cancel()
        await j.aclose()  # shielded: the writer is stopped and joined regardless
    assert _writer_threads() == []
    async with await Journal.open(tmp_path / "run.sqlite") as again:
        assert await again.get("k") is not None


async def test_concurrent_aclose_with_pending_writes(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path / "run.sqlite")
    results: list[str] = []

    async def intent(i: int) -> None:
        try:
            await j.record_intent(f"k{i}", "fp")
            results.append("ok")
        except JournalClosedError:
            results.append("closed")

    async with anyio.create_task_group() as tg:
        for i in range(500):
            tg.start_soon(intent, i)
        tg.start_soon(j.aclose)
        tg.start_soon(j.aclose)
    assert _writer_threads() == []
    written = results.count("ok")
    assert written + results.count("closed") == 500
    async with await Journal.open(tmp_path / "run.sqlite") as again:
        assert len(_rows(again)) == written  # every acknowledged write, nothing else


async def test_a_journal_is_bound_to_the_loop_that_opened_it(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "run.sqlite") as j:

        async def elsewhere() -> None:
            for call in (j.record_intent("k", "fp"), j.get("k"), j.total_spend(), j.aclose()):
                with pytest.raises(JournalError, match="event loop that opened it"):
                    await call

        await anyio.to_thread.run_sync(asyncio.run, elsewhere())  # a second loop, in another thread
        assert not j.closed and await j.get("k") is None  # nothing was queued from there
        await j.record_intent("k", "fp")  # the journal's own loop is unaffected
    assert _writer_threads() == []


# -- crashes (subprocesses) ----------------------------------------------------------------------

_KILL_SCRIPT = """
import sys, anyio
from qubico_async.journal import Journal

async def main(path, synchronous):
    journal = await Journal.open(path, synchronous=synchronous)
    keys = iter(range(10**9))

    async def worker():
        for i in keys:
            key = f"job-{i}"
            await journal.record_intent(key, "fp-" + key)
            print("intent", key, flush=True)
            await journal.record_submitted(key, "task-" + key)
            print("submitted", key, flush=True)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(worker)

anyio.run(main, sys.argv[1], sys.argv[2])
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_sigkill_loses_nothing_that_was_acknowledged(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "run.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(path), synchronous],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
        text=True,
    )
    reported: list[tuple[str, str]] = []
    try:
        assert proc.stdout is not None
        while ("submitted", "job-50") not in reported:
            line = proc.stdout.readline()
            assert line, f"child exited early: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
            kind, key = line.split()
            reported.append((kind, key))
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout:  # printed before it died; a cut-off last line acknowledges nothing
            if line.endswith("\n"):
                kind, key = line.split()
                reported.append((kind, key))
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    async def reopen() -> dict[str, dict[str, Any]]:
        async with await Journal.open(path) as j:
            rows = _rows(j)
            await j.record_intent("after-crash", "fp")  # the journal is writable again
            return rows

    rows = anyio.run(reopen)
    for kind, key in reported:
        row = rows[key]
        assert row["fingerprint"] == "fp-" + key
        if kind == "submitted":
            assert (row["state"], row["task_id"]) == ("submitted", "task-" + key)
    for key, row in rows.items():  # no half-state anywhere
        assert (row["state"], row["task_id"] is not None) in {("intent", False), ("submitted", True)}
        assert row["fingerprint"] == "fp-" + key


def test_exit_without_aclose_does_not_hang_and_keeps_writes(tmp_path: Path) -> None:
    """Two journals never closed: one still referenced at exit, one dropped and collected."""
    kept, dropped = tmp_path / "kept.sqlite", tmp_path / "dropped.sqlite"
    script = (
        "import gc, sys, anyio\n"
        "from qubico_async.journal import Journal\n"
        "KEEP = []\n"
        "async def main():\n"
        "    journal = await Journal.open(sys.argv[1])\n"
        "    KEEP.append(journal)  # still referenced at exit; aclose() never called\n"
        "    await journal.record_intent('k', 'fp')\n"
        "    other = await Journal.open(sys.argv[2])\n"
        "    await other.record_intent('k', 'fp')\n"
        "    del other  # dropped without aclose()\n"
        "    gc.collect()\n"
        "anyio.run(main)\n"
    )
    proc = subprocess.run(  # a hang at exit (a writer that keeps the process alive) hits the timeout
        [sys.executable, "-X", "dev", "-W", "error", "-c", script, str(kept), str(dropped)],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=HANG_GUARD,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")

    async def reopen(path: Path) -> JournalEntry | None:
        async with await Journal.open(path) as j:  # the lock died with the process
            return await j.get("k")

    for path in (kept, dropped):
        entry = anyio.run(reopen, path)
        assert entry is not None and entry.state == "intent"
