"""swap_many against the emulator: outcomes, concurrency, money, journal, resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest

from qubico_async import (
    FaceSwap,
    Job,
    MultiFaceSwap,
    Outcome,
    Pacing,
    PollPolicy,
    Prices,
    Progress,
    QubicoClient,
    RetryPolicy,
)
from qubico_async.testing import Emulator, identity
from tests._helpers import png, wait_until

pytestmark = pytest.mark.anyio


FACE = png(10_000_000)


def jobs(n: int, start: int = 0) -> list[FaceSwap]:
    return [FaceSwap(png(i), FACE) for i in range(start, start + n)]


@pytest.fixture
async def emu_b() -> AsyncIterator[Emulator]:
    async with Emulator(api_key="k", processor=identity, max_concurrent_task_count=7) as server:
        yield server


@pytest.fixture
async def client_b(emu_b: Emulator) -> AsyncIterator[QubicoClient]:
    async with QubicoClient(
        api_key="k", base_url=emu_b.base_url, retry=RetryPolicy.instant(), poll=PollPolicy.instant(timeout=10)
    ) as c:
        yield c


def creates_per_input(emu: Emulator) -> Counter[str]:
    return Counter(t.input["target_image"] for t in emu.tasks.values())


async def test_one_outcome_per_job_with_mixed_failures(client_b: QubicoClient, emu_b: Emulator) -> None:
    emu_b.fail_next(3, "no face detected in target_image")
    outcomes = [o async for o in client_b.swap_many(jobs(20), concurrency=4)]
    assert len(outcomes) == 20
    assert sorted(o.index for o in outcomes) == list(range(20))
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {"succeeded": 17, "failed": 3}
    failed = [o for o in outcomes if o.status == "failed"]
    assert all("no face detected" in o.reason for o in failed)
    assert all(o.task is not None and o.task.status.value == "failed" for o in failed)
    assert all(o.submitted_at is not None and o.finished_at >= o.queued_at for o in outcomes)
    assert emu_b.stats.creates == 20


async def test_invalid_input_fails_that_job_only(client_b: QubicoClient, emu_b: Emulator, tmp_path: Path) -> None:
    batch = [*jobs(3), FaceSwap(tmp_path / "missing.jpg", FACE), *jobs(2, start=3)]
    outcomes = [o async for o in client_b.swap_many(batch, concurrency=2)]
    assert Counter(o.status for o in outcomes) == {"succeeded": 5, "failed": 1}
    bad = next(o for o in outcomes if o.status == "failed")
    assert bad.index == 3 and "missing.jpg" in bad.reason
    assert emu_b.stats.creates == 5


async def test_concurrency_bounds_tasks_in_flight(emu_b: Emulator) -> None:
    emu_b.processing_seconds = 5.0
    peak = 0

    def watch(p: Progress) -> None:
        nonlocal peak
        peak = max(peak, p.in_flight)

    async def advance_clock() -> None:
        while True:
            await anyio.sleep(0.005)
            emu_b.advance(1.0)

    async with QubicoClient(api_key="k", base_url=emu_b.base_url, poll=PollPolicy.instant()) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(advance_clock)
            outcomes = [o async for o in c.swap_many(jobs(30), concurrency=3, on_progress=watch)]
            tg.cancel_scope.cancel()
    assert len(outcomes) == 30
    assert 1 <= peak <= 3
    assert emu_b.stats.creates == 30


async def test_default_concurrency_comes_from_account_info(client_b: QubicoClient, emu_b: Emulator) -> None:
    async with client_b.swap_many(jobs(10)) as batch:
        outcomes = [o async for o in batch]
    assert len(outcomes) == 10
    assert emu_b.stats.account_requests == 1
    assert batch.report is not None
    assert batch.report.counts["succeeded"] == 10


async def test_ordered_output(client_b: QubicoClient, emu_b: Emulator) -> None:
    emu_b.fail_next(2)
    outcomes = [o async for o in client_b.swap_many(jobs(25), concurrency=5, ordered=True)]
    assert [o.index for o in outcomes] == list(range(25))


async def test_unordered_output_yields_as_finished(emu_b: Emulator) -> None:
    emu_b.processing_seconds = 5.0
    first_input = FaceSwap(png(0), FACE)
    order: list[int] = []

    async def steer() -> None:
        # once all six exist, make every task but job 0's instant; finish job 0 after the rest
        while emu_b.stats.creates < 6:
            await anyio.sleep(0.002)
        for task in emu_b.tasks.values():
            if task.input["target_image"] != emu_b_target(first_input):
                task.processing_seconds = 0.0
        while len(order) < 5:
            await anyio.sleep(0.002)
        emu_b.advance(10)

    async with QubicoClient(api_key="k", base_url=emu_b.base_url, poll=PollPolicy.instant()) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(steer)
            async for o in c.swap_many([first_input, *jobs(5, start=1)], concurrency=6):
                order.append(o.index)
    assert sorted(order) == list(range(6))
    assert order[-1] == 0  # the slow first job came out last


def emu_b_target(request: FaceSwap) -> str:
    import base64

    assert request.target.kind == "bytes"
    return "data:image/png;base64," + base64.b64encode(request.target.value).decode()  # type: ignore[arg-type]


async def test_jobs_are_consumed_lazily_and_break_stops_everything(client_b: QubicoClient, emu_b: Emulator) -> None:
    pulled = 0

    def endless() -> Iterator[FaceSwap]:
        nonlocal pulled
        i = 0
        while True:
            pulled += 1
            yield FaceSwap(png(i), FACE)
            i += 1

    async with client_b.swap_many(endless(), concurrency=4) as batch:
        got = 0
        async for _ in batch:
            got += 1
            if got == 10:
                break
    assert pulled < 40  # never materialised: only what the window needed
    creates = emu_b.stats.creates
    await anyio.sleep(0.05)
    assert emu_b.stats.creates == creates  # nothing submitted after the loop ended


async def test_keys_and_job_wrappers(client_b: QubicoClient) -> None:
    batch = [Job(FaceSwap(png(1), FACE), key="alpha"), Job(MultiFaceSwap(png(2), FACE, [0], [0]), key="beta")]
    keys = {o.key: o.status async for o in client_b.swap_many(batch)}
    assert keys == {"alpha": "succeeded", "beta": "succeeded"}


async def test_budget_stops_submitting(client_b: QubicoClient, emu_b: Emulator) -> None:
    # 0.05 USD at $0.01 each: exactly 5 tasks may run; none may take spend over the budget
    async with client_b.swap_many(jobs(12), concurrency=3, budget_usd=0.05) as batch:
        outcomes = [o async for o in batch]
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {"succeeded": 5, "skipped": 7}
    assert all("budget" in o.reason for o in outcomes if o.status == "skipped")
    assert emu_b.stats.creates == 5
    assert batch.report is not None
    assert batch.report.spend_usd == pytest.approx(0.05)
    assert batch.report.stopped_reason is not None and "budget" in batch.report.stopped_reason


async def test_budget_uses_the_price_table(client_b: QubicoClient, emu_b: Emulator) -> None:
    batch = [MultiFaceSwap(png(i), FACE, [0], [0]) for i in range(5)]
    outcomes = [o async for o in client_b.swap_many(batch, concurrency=1, budget_usd=0.031, prices=Prices())]
    assert Counter(o.status for o in outcomes) == {
        "succeeded": 2,
        "skipped": 3,
    }  # 2 x $0.015 fit, a 3rd does not


@pytest.mark.parametrize("status", [401, 403])
async def test_account_error_stops_the_batch_at_once(client_b: QubicoClient, emu_b: Emulator, status: int) -> None:
    emu_b.faults.script("create", status, f'{{"code":{status},"message":"credits exhausted"}}', times=1000)
    async with client_b.swap_many(jobs(15), concurrency=1) as batch:
        outcomes = [o async for o in batch]
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {"failed": 1, "skipped": 14}
    assert emu_b.stats.create_requests == 1  # no further creates after the account error
    assert all("account error" in o.reason for o in outcomes if o.status == "skipped")


async def test_429_storm_every_job_accounted_for(emu_b: Emulator) -> None:
    # 100 rate-limit answers spread over creates and polls: more 429s than jobs, most jobs hit
    emu_b.faults.script("any", 429, '{"code":429,"message":"too many"}', headers={"Retry-After": "0"}, times=100)
    policy = RetryPolicy(max_attempts=50, base=0.001, cap=0.01, jitter=0.5)
    # Pacing off: 100 429s would otherwise slow the client to its 0.5 req/s floor (the test is about accounting).
    async with (
        QubicoClient(
            api_key="k", base_url=emu_b.base_url, retry=policy, pacing=Pacing.off(), poll=PollPolicy.instant()
        ) as c,
        c.swap_many(jobs(75), concurrency=40) as batch,
    ):
        outcomes = [o async for o in batch]
    assert len(outcomes) == 75
    assert Counter(o.status for o in outcomes) == {"succeeded": 75}
    assert emu_b.stats.creates == 75
    assert emu_b.stats.requests_by_status[429] == 100


async def test_uncertain_create_is_reported_not_retried(client_b: QubicoClient, emu_b: Emulator) -> None:
    emu_b.faults.create_then_drop = 1
    outcomes = [o async for o in client_b.swap_many(jobs(5), concurrency=1)]
    assert Counter(o.status for o in outcomes) == {"succeeded": 4, "uncertain": 1}
    assert emu_b.stats.creates == 5  # the dropped one was created remotely, and not again


async def test_progress_callback_and_report(client_b: QubicoClient, emu_b: Emulator) -> None:
    seen: list[Progress] = []
    async with client_b.swap_many(jobs(8), concurrency=2, on_progress=seen.append) as batch:
        [o async for o in batch]
    assert [p.done for p in seen] == list(range(1, 9))
    assert seen[-1].total == 8 and seen[-1].succeeded == 8
    report = batch.report
    assert report is not None
    assert report.total == 8
    assert report.requests["create"] == 8
    assert report.requests["other"] >= 8  # at least one GET per task, plus account info
    assert report.wall_time > 0


async def test_cancelling_the_consumer_closes_everything(emu_b: Emulator, tmp_path: Path) -> None:
    import asyncio

    emu_b.processing_seconds = 1000
    journal = tmp_path / "run.sqlite"
    async with QubicoClient(api_key="k", base_url=emu_b.base_url, poll=PollPolicy.instant()) as c:
        before = asyncio.all_tasks()

        async def consume() -> None:
            async for _ in c.swap_many(jobs(10), concurrency=4, journal=journal):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            # Cancelled once all 4 slots are created and being polled (journaled), not after a delay.
            await wait_until(lambda: emu_b.stats.creates == 4 and emu_b.stats.gets >= 4)
            tg.cancel_scope.cancel()
        await anyio.sleep(0.01)
        leftover = [t for t in asyncio.all_tasks() - before if "web_protocol" not in repr(t)]
        assert leftover == []
    assert emu_b.stats.creates == 4
    # every created task is recorded with its id: a rerun polls them instead of paying again
    emu_b.advance(1000)
    emu_b.processing_seconds = 0.0
    async with QubicoClient(api_key="k", base_url=emu_b.base_url, poll=PollPolicy.instant()) as c:
        outcomes = [o async for o in c.swap_many(jobs(10), concurrency=4, journal=journal)]
    assert Counter(o.status for o in outcomes) == {"succeeded": 10}
    assert emu_b.stats.creates == 10
    assert set(creates_per_input(emu_b).values()) == {1}


async def test_rerun_skips_finished_jobs(client_b: QubicoClient, emu_b: Emulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.sqlite"
    first = [o async for o in client_b.swap_many(jobs(6), journal=journal)]
    assert Counter(o.status for o in first) == {"succeeded": 6}
    again = [o async for o in client_b.swap_many(jobs(8), journal=journal)]
    assert Counter(o.status for o in again) == {"skipped": 6, "succeeded": 2}
    replayed = [o for o in again if o.replayed]
    assert len(replayed) == 6
    assert all(o.task is not None and o.task.image_url for o in replayed)
    assert emu_b.stats.creates == 8


async def test_a_key_reused_for_different_content_is_not_replayed(
    client_b: QubicoClient, emu_b: Emulator, tmp_path: Path
) -> None:
    journal = tmp_path / "run.sqlite"
    [o async for o in client_b.swap_many([Job(FaceSwap(png(1), FACE), key="photo")], journal=journal)]
    changed = [o async for o in client_b.swap_many([Job(FaceSwap(png(2), FACE), key="photo")], journal=journal)]
    assert changed[0].status == "failed"
    assert "different content" in changed[0].reason
    assert emu_b.stats.creates == 1


async def test_uncertain_jobs_resubmitted_only_with_the_flag(
    client_b: QubicoClient, emu_b: Emulator, tmp_path: Path
) -> None:
    journal = tmp_path / "run.sqlite"
    emu_b.faults.create_then_drop = 1
    [o async for o in client_b.swap_many(jobs(3), concurrency=1, journal=journal)]
    assert emu_b.stats.creates == 3
    rerun = [o async for o in client_b.swap_many(jobs(3), concurrency=1, journal=journal)]
    assert Counter(o.status for o in rerun) == {"skipped": 2, "uncertain": 1}
    assert emu_b.stats.creates == 3
    forced = [o async for o in client_b.swap_many(jobs(3), journal=journal, resubmit_uncertain=True)]
    assert Counter(o.status for o in forced) == {"skipped": 2, "succeeded": 1}
    assert emu_b.stats.creates == 4


async def test_a_rerun_resumes_every_state_a_crash_leaves(
    client_b: QubicoClient, emu_b: Emulator, tmp_path: Path
) -> None:
    """A journal as a run killed mid-batch leaves it, resumed by `swap_many`: job 0 died between
    its intent and its task id, job 1 between its task id and its result, job 2 had finished.

    The two rows are set back with SQLite, exactly as those crashes leave them (the SIGKILL test
    below kills a real run, but never inside the intent window); each row keeps its $0.01.
    """
    journal = tmp_path / "run.sqlite"
    first = [o async for o in client_b.swap_many(jobs(3), journal=journal, ordered=True)]
    assert [o.status for o in first] == ["succeeded"] * 3 and first[1].task is not None
    conn = sqlite3.connect(journal)
    try:
        with conn:
            unfinished = "outcome = NULL, result = NULL WHERE key = ?"
            conn.execute(f"UPDATE jobs SET state = 'intent', task_id = NULL, {unfinished}", (first[0].key,))
            conn.execute(f"UPDATE jobs SET state = 'submitted', {unfinished}", (first[1].key,))
    finally:
        conn.close()
    gets = emu_b.stats.gets

    rerun = [o async for o in client_b.swap_many(jobs(4), journal=journal, budget_usd=0.03, ordered=True)]
    assert [o.status for o in rerun] == ["uncertain", "succeeded", "skipped", "skipped"]
    assert "no task id recorded" in rerun[0].reason  # maybe created: not sent again
    assert rerun[1].task is not None and rerun[1].task.task_id == first[1].task.task_id  # polled
    assert emu_b.stats.gets > gets
    assert rerun[2].replayed
    assert "budget" in rerun[3].reason  # the three rows hold $0.03: a new job does not fit
    assert emu_b.stats.creates == 3

    forced = [o async for o in client_b.swap_many(jobs(4), journal=journal, resubmit_uncertain=True, ordered=True)]
    assert [o.status for o in forced] == ["succeeded", "skipped", "skipped", "succeeded"]
    assert emu_b.stats.creates == 5


BATCH_SCRIPT = r"""
import anyio, struct, sys, zlib
from qubico_async import FaceSwap, PollPolicy, QubicoClient

def png(i, size=64):
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    def chunk(ctype: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    pixels = zlib.compress(bytes(size * (1 + 3 * size)))  # a whole, decodable black image
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return head + f"job-{i}".encode()

# Test instrumentation: say when a job enters and leaves the "intent without task id" window.
from qubico_async.journal import Journal
_intent, _submitted, _discard = Journal.record_intent, Journal.record_submitted, Journal.discard

async def record_intent(self, key, fingerprint, *args):
    print("BEGIN", key, flush=True)
    await _intent(self, key, fingerprint, *args)

async def record_submitted(self, key, task_id):
    await _submitted(self, key, task_id)
    print("END", key, flush=True)

async def discard(self, key):
    result = await _discard(self, key)
    print("END", key, flush=True)
    return result

Journal.record_intent, Journal.record_submitted, Journal.discard = record_intent, record_submitted, discard

async def main(base_url, journal, n):
    face = png(10_000_000)
    jobs = [FaceSwap(png(i), face) for i in range(n)]
    poll = PollPolicy(initial=0.01, factor=1.0, max_interval=0.01, jitter=0.0)
    async with QubicoClient(api_key="k", base_url=base_url, poll=poll) as client:
        async for outcome in client.swap_many(jobs, concurrency=6, journal=journal):
            print("OUT", outcome.index, outcome.status, flush=True)

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


async def test_sigkill_halfway_then_resume_pays_nothing_twice(emu_b: Emulator, tmp_path: Path) -> None:
    """Kill -9 a batch halfway, rerun it with its journal: no input is created twice, all results arrive.

    The kill lands while no job is between "intent journaled" and "task id journaled": a create cut
    there is honestly `uncertain` (test_uncertain_jobs_resubmitted_only_with_the_flag covers that).
    To get there deterministically the child reports each job entering and leaving that window,
    is frozen (SIGSTOP), and is killed only when no job is inside it.
    """
    emu_b.processing_seconds = 0.05  # real time: tasks are in flight when the kill lands
    journal = tmp_path / "run.sqlite"
    script = tmp_path / "batch.py"
    script.write_text(BATCH_SCRIPT)
    n = 40
    proc = await anyio.open_process(
        [sys.executable, str(script), emu_b.base_url, str(journal), str(n)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    async with proc:
        try:
            await _kill_when_settled(proc, n)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                proc.send_signal(signal.SIGCONT)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert n // 2 <= emu_b.stats.creates <= n

    async with QubicoClient(
        api_key="k", base_url=emu_b.base_url, poll=PollPolicy(initial=0.01, factor=1.0, max_interval=0.01)
    ) as c:
        outcomes = [o async for o in c.swap_many(jobs(n), concurrency=6, journal=journal)]
    assert len(outcomes) == n
    statuses = Counter(o.status for o in outcomes)
    assert statuses["succeeded"] + statuses["skipped"] == n, statuses
    assert statuses["skipped"] >= n // 2  # finished before the kill: replayed, not redone
    assert all(o.task is not None and o.task.image_url for o in outcomes)  # every result present
    per_input = creates_per_input(emu_b)
    assert len(per_input) == n
    assert max(per_input.values()) == 1  # zero duplicate creates
    assert emu_b.stats.creates == n


async def _kill_when_settled(proc: anyio.abc.Process, n: int) -> None:
    """SIGKILL the child once half the outcomes are out and no job is in its intent window."""
    assert proc.stdout is not None
    stdout = proc.stdout
    window: set[str] = set()
    outcomes = 0
    pending = b""

    def take(chunk: bytes) -> None:
        nonlocal outcomes, pending
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode().partition(" ")
            if kind == "BEGIN":
                window.add(rest)
            elif kind == "END":
                window.discard(rest)
            elif kind == "OUT":
                outcomes += 1

    with anyio.fail_after(30):
        async for chunk in stdout:
            take(chunk)
            if outcomes < n // 2:
                continue
            proc.send_signal(signal.SIGSTOP)
            with anyio.move_on_after(0.05):  # drain what it printed before it froze
                async for more in stdout:
                    take(more)
            if not window:
                proc.send_signal(signal.SIGKILL)
                return
            proc.send_signal(signal.SIGCONT)
    raise AssertionError("the batch finished before it could be killed halfway")


def test_outcome_and_report_are_plain_data() -> None:
    o = Outcome(Job(FaceSwap(png(1), FACE)), "k", 0, "skipped", reason="budget")
    assert not o.ok
    assert json.dumps({"status": o.status, "reason": o.reason})
