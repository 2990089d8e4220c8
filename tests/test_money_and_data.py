"""Money, secrets and batch data under hostile answers (issue 11): each finding, against a server
scripted here to misbehave exactly that way. Creates are counted server-side."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from qubico_async import (
    FaceSwap,
    Job,
    Outcome,
    PollPolicy,
    QubicoClient,
    RetryPolicy,
    SubmissionUncertainError,
    TaskFailedError,
    Timeouts,
    WaitTimeoutError,
)
from qubico_async.journal import Journal, JournalError

from ._helpers import journal_rows, serve
from .scripted_service import ScriptedService, envelope, real_task

pytestmark = pytest.mark.anyio

API_KEY = "sk-hostile-0123456789abcdef"
FACE = "https://example.invalid/face.jpg"


@pytest.fixture
async def service() -> AsyncIterator[ScriptedService]:
    async with ScriptedService().running() as svc:
        yield svc


def client_for(service: ScriptedService, timeout: float = 30) -> QubicoClient:
    return QubicoClient(
        api_key=API_KEY, base_url=service.base_url, retry=RetryPolicy.instant(), poll=PollPolicy.instant(timeout)
    )


def jobs(n: int) -> list[FaceSwap]:
    return [FaceSwap(f"https://example.invalid/target-{i}.jpg", FACE) for i in range(n)]


def journal_states(path: Path) -> Counter[str]:
    return Counter(row["state"] for row in journal_rows(path).values())


# -- 1. a recorded create answered 307/408/409 is uncertain: journaled, reserved, never re-sent --


@pytest.mark.parametrize("status", [307, 408, 409, 404])
async def test_a_recorded_create_with_an_odd_status_stays_uncertain(
    service: ScriptedService, tmp_path: Path, status: int
) -> None:
    def create(svc: ScriptedService, payload: object) -> tuple[int, object]:
        svc.new_id()  # the server made the task, then answered oddly
        return status, {"code": status, "message": "odd answer"}

    service.on_create = create
    journal = tmp_path / "run.sqlite"
    async with client_for(service) as client:
        batch = client.swap_many(jobs(10), concurrency=1, journal=journal, budget_usd=0.05)
        first = Counter(o.status for o in [o async for o in batch])
        assert first == {"uncertain": 5, "skipped": 5}  # reservations kept: the budget holds at 5
        assert service.creates == 5
        assert journal_states(journal) == {"uncertain": 5}
        rerun = client.swap_many(jobs(10), concurrency=1, journal=journal, budget_usd=0.05)
        second = Counter(o.status for o in [o async for o in rerun])
    assert service.creates == 5  # the rerun created nothing again: 5 maybe-paid, and the budget is spent
    assert second == {"uncertain": 5, "skipped": 5}


async def test_refusal_statuses_prove_nothing_was_created(service: ScriptedService, tmp_path: Path) -> None:
    service.on_create = lambda svc, payload: (400, {"code": 400, "message": "invalid input"})
    journal = tmp_path / "run.sqlite"
    async with client_for(service) as client:
        outcomes = [o async for o in client.swap_many(jobs(3), concurrency=1, journal=journal)]
    assert [o.status for o in outcomes] == ["failed"] * 3
    assert journal_states(journal) == {}  # nothing to reconcile: a rerun may submit them


# -- 2. the budget belongs to the journal -------------------------------------------------------


async def test_a_rerun_does_not_get_a_second_budget(service: ScriptedService, tmp_path: Path) -> None:
    journal = tmp_path / "run.sqlite"
    async with client_for(service) as client:
        first = [o async for o in client.swap_many(jobs(10), concurrency=2, journal=journal, budget_usd=0.05)]
        assert Counter(o.status for o in first) == {"succeeded": 5, "skipped": 5}
        second = [o async for o in client.swap_many(jobs(10), concurrency=2, journal=journal, budget_usd=0.05)]
    assert service.creates == 5  # was: 10, a second $0.05 spent
    assert all(o.status == "skipped" for o in second)
    assert sum(o.replayed for o in second) == 5
    assert sum("budget" in o.reason for o in second) == 5


async def test_without_a_journal_the_budget_is_per_run(service: ScriptedService) -> None:
    async with client_for(service) as client:
        for _ in range(2):
            outcomes = [o async for o in client.swap_many(jobs(4), concurrency=1, budget_usd=0.02)]
            assert Counter(o.status for o in outcomes) == {"succeeded": 2, "skipped": 2}
    assert service.creates == 4


# -- 3. duplicate keys in one run --------------------------------------------------------------


async def test_duplicate_keys_in_one_run_are_skipped_not_uncertain(service: ScriptedService, tmp_path: Path) -> None:
    two = jobs(2)
    batch_jobs = [two[i % 2] for i in range(8)] + [Job(two[0], key="explicit"), Job(two[1], key="explicit")]
    async with client_for(service) as client:
        outcomes = [
            o async for o in client.swap_many(batch_jobs, concurrency=4, journal=tmp_path / "j.sqlite", ordered=True)
        ]
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {"succeeded": 3, "skipped": 7}
    assert service.creates == 3
    assert outcomes[2].reason == "same key as job 0" and outcomes[3].reason == "same key as job 1"
    assert outcomes[9].reason == "same key as job 8"


# -- 4. a journal that can't be opened fails fast, before anything is sent ----------------------


async def test_an_unusable_journal_raises_before_any_create(service: ScriptedService, tmp_path: Path) -> None:
    garbage = tmp_path / "notes.txt"
    garbage.write_bytes(b"not a journal at all" * 100)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    held = tmp_path / "held.sqlite"
    async with client_for(service) as client, await Journal.open(held):
        for path in (garbage, folder, held):
            with anyio.fail_after(10):  # a hang guard: this hung forever before
                with pytest.raises(JournalError, match=path.name):
                    async for _ in client.swap_many(jobs(3), journal=path):
                        pass
    assert service.creates == 0


# -- 5. a create that drips ------------------------------------------------------------------


def drip_create(started: anyio.Event, seconds: float) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.post("/api/v1/task")
    async def create(request: web.Request) -> web.StreamResponse:
        await request.read()
        started.set()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        with anyio.move_on_after(seconds):
            while True:
                await resp.write(b" ")
                await anyio.sleep(0.02)
        return resp

    return routes


@pytest.fixture
async def drip_server() -> AsyncIterator[tuple[str, anyio.Event]]:
    started = anyio.Event()
    app = web.Application()
    app.add_routes(drip_create(started, 30))
    async with serve(app) as base:
        yield base, started


async def test_a_dripping_create_is_cut_by_the_total_timeout(drip_server: tuple[str, anyio.Event]) -> None:
    base_url, _ = drip_server
    async with QubicoClient(
        api_key=API_KEY, base_url=base_url, retry=RetryPolicy.instant(), timeout=Timeouts(read=5, total=0.3)
    ) as client:
        with anyio.fail_after(20), pytest.raises(SubmissionUncertainError, match="timed out"):
            await client.submit(jobs(1)[0])
    assert Timeouts().total is not None  # the default has a total too


async def test_a_cancelled_batch_leaves_a_dripping_create_uncertain(
    drip_server: tuple[str, anyio.Event], tmp_path: Path
) -> None:
    base_url, started = drip_server
    journal = tmp_path / "run.sqlite"
    async with QubicoClient(api_key=API_KEY, base_url=base_url, retry=RetryPolicy.instant()) as client:
        with anyio.fail_after(20):  # a hang guard (the create drips for 30 s): was 30-40 s before
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    async with client.swap_many(jobs(1), concurrency=1, journal=journal) as batch:
                        async for _ in batch:
                            pass

                tg.start_soon(consume)
                await started.wait()
                tg.cancel_scope.cancel()
    assert journal_states(journal) == {"uncertain": 1}


# -- 6. a key echoed inside a task's fields ---------------------------------------------------


async def test_a_key_echoed_in_task_fields_is_redacted_everywhere(service: ScriptedService, tmp_path: Path) -> None:
    error = {"code": 1, "message": f"bad key {API_KEY}", "raw_message": f"raw {API_KEY}", "detail": None}
    stuck: set[str] = set()

    def get(svc: ScriptedService, task_id: str, poll: int) -> tuple[int, object]:
        task = real_task(task_id, f"processing-{API_KEY}" if task_id in stuck else "failed", error=error)
        task["logs"] = [f"log {API_KEY}"]
        task["output"] = {"image_url": f"https://cdn.invalid/r.png?key={API_KEY}"}
        return 200, envelope(task)

    service.on_get = get
    journal = tmp_path / "run.sqlite"
    async with client_for(service, timeout=0.2) as client:
        with pytest.raises(TaskFailedError) as caught:
            await client.run(jobs(1)[0])
        seen = [str(caught.value), repr(caught.value.task)]
        pending = await client.submit(jobs(2)[1])
        stuck.add(pending.task_id)
        with pytest.raises(WaitTimeoutError) as timed_out:
            await client.wait(pending)
        seen += [str(timed_out.value), repr(timed_out.value.last_task)]
        outcomes = [o async for o in client.swap_many(jobs(3), concurrency=1, journal=journal)]
        seen += [o.reason for o in outcomes] + [repr(o) for o in outcomes]
    assert [o.status for o in outcomes] == ["failed"] * 3
    text = "\n".join(seen)
    assert text.count("***") >= 8
    assert API_KEY not in text
    for side in tmp_path.iterdir():  # the journal and its -wal/-lock files
        assert API_KEY.encode() not in side.read_bytes(), side.name


# -- 9. journal write errors during a run -------------------------------------------------------


async def test_journal_write_errors_become_outcomes_and_one_error(
    service: ScriptedService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_finished = Journal.record_finished
    calls = 0

    async def disk_full_after_three(self: Journal, *args: object, **kw: object) -> None:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise JournalError("journal 'run.sqlite': write failed: database or disk is full")
        await real_finished(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "record_finished", disk_full_after_three)
    outcomes: list[Outcome] = []

    async def run(client: QubicoClient) -> None:
        async for outcome in client.swap_many(jobs(30), concurrency=2, journal=tmp_path / "run.sqlite"):
            outcomes.append(outcome)

    async with client_for(service) as client:
        with pytest.raises(JournalError, match="disk is full"):  # one clear error, not a group
            await run(client)
    assert len(outcomes) == 30  # every job has its outcome
    assert sum("journal" in o.reason for o in outcomes) >= 1
    assert all(o.status in ("succeeded", "skipped") for o in outcomes)
    assert service.creates < 30  # it stopped submitting once the journal could not be trusted


async def test_an_intent_that_cannot_be_journaled_is_never_sent(
    service: ScriptedService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def disk_full(self: Journal, *args: object, **kw: object) -> None:
        raise JournalError("journal: write failed: database or disk is full")

    monkeypatch.setattr(Journal, "record_intent", disk_full)
    outcomes: list[Outcome] = []

    async def run(client: QubicoClient) -> None:
        async for outcome in client.swap_many(jobs(5), concurrency=1, journal=tmp_path / "run.sqlite"):
            outcomes.append(outcome)

    async with client_for(service) as client:
        with pytest.raises(JournalError):
            await run(client)
    assert service.creates == 0
    assert len(outcomes) == 5
