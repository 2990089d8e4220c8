"""Network faults between the client and the service, injected by a loopback proxy (fault_proxy.py).

Every test is bounded by `anyio.fail_after`: a fault must end in a typed error or a success,
never a hang. Create-path tests check on the emulator that no create is ever sent twice; the
GET-path tests check the error type once the retries are exhausted, and recovery when a retry can.
Results are tabulated in docs/reliability.md.
"""

from __future__ import annotations

import base64
import functools
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
import pytest

from qubico_async import (
    FaceSwap,
    Job,
    MalformedResponseError,
    NotFoundError,
    Outcome,
    PollPolicy,
    QubicoClient,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    Task,
    TaskStatus,
    Timeouts,
    TransportError,
    WebhookConfig,
    _download,
)
from qubico_async._transport import Transport
from qubico_async.testing import Emulator, identity
from qubico_async.webhooks import WebhookHub

from ._helpers import HANG_GUARD, free_port, journal_rows, png
from .fault_proxy import FORWARDING_MODES, FaultProxy, Mode

pytestmark = pytest.mark.anyio

MAX_ATTEMPTS = 3
READ_TIMEOUT = 0.2
SHORT = Timeouts(connect=0.5, read=READ_TIMEOUT)
"""For the requests meant to time out (a blackhole)."""
TIMEOUTS = Timeouts(connect=0.5, read=2.0)
"""For everything else: traffic that passes must not time out on a loaded machine."""
GENEROUS = Timeouts(connect=10.0, read=10.0)
"""Where a timeout of passing traffic would change a count: no fault here ends by a timeout."""
CREATE = b"POST /api/v1/task "
GET = b"GET /api/v1/task/"
RESULT = b"GET /results/"

_F = TypeVar("_F", bound=Callable[..., Awaitable[None]])


def bounded(seconds: float) -> Callable[[_F], _F]:
    """Run the test body under `anyio.fail_after(seconds)`: a hang fails the test instead.

    Only a hang guard (`HANG_GUARD`): how fast a fault ends is proved by counts, never by a clock.
    """

    def decorate(test: _F) -> _F:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            with anyio.fail_after(seconds):
                await test(*args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate


FACE = png(10_000_000)


def job_of(stored_input: dict[str, Any]) -> int:
    """Which png(i) a stored task was created from."""
    uri = stored_input["target_image"]
    data = base64.b64decode(uri.split("base64,", 1)[1])
    return int(data.rsplit(b"job-", 1)[1])


def through(proxy: FaultProxy, emu: Emulator, url: str) -> str:
    """A result URL of `emu`, routed through `proxy`."""
    assert url.startswith(emu.base_url)
    return proxy.url + url[len(emu.base_url) :]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
async def proxy(emu: Emulator) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(emu.port) as p:
        yield p


def proxied(emu: Emulator, proxy: FaultProxy, **kwargs: Any) -> QubicoClient:
    options: dict[str, Any] = {
        "retry": RetryPolicy.instant(MAX_ATTEMPTS),
        "poll": PollPolicy.instant(timeout=10),
        "timeout": TIMEOUTS,
        **kwargs,
    }
    return QubicoClient(emu.api_key, base_url=proxy.url, **options)


@pytest.fixture
async def pclient(emu: Emulator, proxy: FaultProxy) -> AsyncIterator[QubicoClient]:
    """A client whose every request goes through `proxy` (conftest's `client` talks to the emulator)."""
    async with proxied(emu, proxy) as c:
        yield c


@pytest.fixture
async def task(pclient: QubicoClient, proxy: FaultProxy) -> Task:
    created = await pclient.submit(FaceSwap(png(0), FACE))
    proxy.counts.clear()
    return created


# -- the paid create -----------------------------------------------------------------------------

# (mode, the final error's cause): every one of these is cut after the body may have arrived.
CREATE_CUTS: list[tuple[Mode, type[Exception]]] = [
    ("reset_mid_request", TransportError),
    ("reset_after_headers", TransportError),
    ("reset_mid_response", TransportError),
    ("close_mid_response", TransportError),
    ("truncate_json", MalformedResponseError),
    ("html_502", ServerError),
    ("html_502_forwarded", ServerError),
    ("blackhole", TransportError),
]


@pytest.mark.parametrize(("mode", "cause"), CREATE_CUTS)
@bounded(HANG_GUARD)
async def test_create_cut_after_sending_is_uncertain_and_never_resent(
    pclient: QubicoClient, emu: Emulator, proxy: FaultProxy, mode: Mode, cause: type[Exception]
) -> None:
    reached = int(mode in FORWARDING_MODES)  # did the service see (and bill) the create?
    proxy.inject(mode, match=CREATE)
    request = FaceSwap(png(1), FACE)
    async with proxied(emu, proxy, timeout=SHORT if mode == "blackhole" else TIMEOUTS) as cut:
        with pytest.raises(SubmissionUncertainError) as info:
            await cut.submit(request)
    assert isinstance(info.value.cause, cause)
    assert info.value.request is request and len(info.value.fingerprint) == 64
    if isinstance(info.value.cause, TransportError):
        assert info.value.cause.sent is True
    assert proxy.counts == {mode: 1}  # one attempt: never resent
    assert emu.stats.create_requests == emu.stats.creates == reached
    if mode == "blackhole":  # ended by the client's read timeout (one attempt), not by the hang guard
        assert "timed out" in str(info.value.cause)
    # The client is unharmed: the next create goes through, exactly once.
    created = await pclient.submit(FaceSwap(png(2), FACE))
    assert created.task_id in emu.tasks
    assert emu.stats.creates == reached + 1


@bounded(HANG_GUARD)
async def test_create_reset_while_a_large_body_is_still_uploading(
    pclient: QubicoClient, emu: Emulator, proxy: FaultProxy
) -> None:
    """A ~4 MB body (streamed) cut after 64 KiB: the client is still writing when the RST lands."""
    proxy.inject("reset_mid_request", match=CREATE)
    with pytest.raises(SubmissionUncertainError) as info:
        await pclient.submit(FaceSwap(png(1, pad=3 * 1024 * 1024), FACE))
    assert isinstance(info.value.cause, TransportError) and info.value.cause.sent
    assert proxy.counts == {"reset_mid_request": 1}
    assert emu.stats.create_requests == emu.stats.creates == 0


@bounded(HANG_GUARD)
async def test_refused_create_is_retried_and_succeeds_once_the_proxy_listens_again(
    emu: Emulator, proxy: FaultProxy
) -> None:
    proxy.mode = "refuse"
    retry = RetryPolicy(max_attempts=100, base=0.01, cap=0.02, jitter=0.0)
    async with proxied(emu, proxy, retry=retry) as c:
        created: list[Task] = []

        async def submit() -> None:
            created.append(await c.submit(FaceSwap(png(1), FACE)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            while c._transport.requests_sent["create"] < 3:
                await anyio.sleep(0.005)
            assert emu.stats.create_requests == 0
            proxy.mode = "pass"
    assert c._transport.requests_sent["create"] >= 4  # >= 3 refused, then the one that went through
    assert proxy.counts == {"pass": 1}
    assert emu.stats.create_requests == emu.stats.creates == 1
    assert set(emu.tasks) == {created[0].task_id}


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full accept queue")
@bounded(HANG_GUARD)
async def test_connect_timeout_is_not_sent_and_the_create_is_retried(emu: Emulator, proxy: FaultProxy) -> None:
    timeouts = Timeouts(connect=0.1, read=TIMEOUTS.read)
    proxy.mode = "drop_syn"
    async with proxied(emu, proxy, timeout=timeouts, retry=RetryPolicy.instant(2)) as one:
        with pytest.raises(TransportError, match="could not connect") as info:
            await one.get_task("t-1")
        assert info.value.sent is False
        assert one._transport.requests_sent["read"] == 2  # both attempts ended by the connect timeout
    assert emu.stats.gets == 0
    retry = RetryPolicy(max_attempts=100, base=0.0, cap=0.0, jitter=0.0)
    async with proxied(emu, proxy, timeout=timeouts, retry=retry) as c:
        created: list[Task] = []

        async def submit() -> None:
            created.append(await c.submit(FaceSwap(png(1), FACE)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            while c._transport.requests_sent["create"] < 2:
                await anyio.sleep(0.01)
            proxy.mode = "pass"
    assert emu.stats.create_requests == emu.stats.creates == 1
    assert set(emu.tasks) == {created[0].task_id}


# -- reads (GET) ------------------------------------------------------------------------------------

# (mode, the error once every attempt hit it)
GET_FAULTS: list[tuple[Mode, type[Exception]]] = [
    ("reset_mid_request", TransportError),
    ("reset_after_headers", TransportError),
    ("reset_mid_response", TransportError),
    ("close_mid_response", TransportError),
    ("truncate_json", MalformedResponseError),
    ("html_502", ServerError),
    ("html_502_forwarded", ServerError),
    ("blackhole", TransportError),
]


@pytest.mark.parametrize("mode", [m for m, _ in GET_FAULTS])
@bounded(HANG_GUARD)
async def test_get_recovers_when_a_retry_can(emu: Emulator, proxy: FaultProxy, task: Task, mode: Mode) -> None:
    proxy.inject(mode, match=GET)
    async with proxied(emu, proxy, timeout=SHORT if mode == "blackhole" else TIMEOUTS) as c:
        got = await c.get_task(task.task_id)
    assert got.task_id == task.task_id
    assert proxy.counts[mode] == 1
    passed = proxy.counts["pass"]
    assert passed == 1 or (mode == "blackhole" and passed == 2)  # under load, 0.2 s may be too short
    assert emu.stats.gets == passed + int(mode in FORWARDING_MODES)


@pytest.mark.parametrize(("mode", "error"), GET_FAULTS)
@bounded(HANG_GUARD)
async def test_get_gives_up_with_the_right_type_after_the_retries(
    emu: Emulator, proxy: FaultProxy, task: Task, mode: Mode, error: type[Exception]
) -> None:
    proxy.mode = mode
    async with proxied(emu, proxy, timeout=SHORT if mode == "blackhole" else TIMEOUTS) as c:
        with pytest.raises(error) as info:
            await c.get_task(task.task_id)
    # aiohttp itself resends an idempotent GET once when the connection is reset before the
    # response (ClientOSError/ServerDisconnectedError), so a reset attempt may use two connections.
    assert MAX_ATTEMPTS <= proxy.counts[mode] <= 2 * MAX_ATTEMPTS
    assert set(proxy.counts) == {mode}
    if isinstance(info.value, TransportError):
        assert info.value.sent is True
    if isinstance(info.value, ServerError):
        assert info.value.status == 502 and "HTML page" in str(info.value) and "<center>" not in str(info.value)
    if mode == "blackhole":  # each attempt ended by the read timeout: exactly MAX_ATTEMPTS connections
        assert "timed out" in str(info.value)
        assert proxy.counts[mode] == MAX_ATTEMPTS


@bounded(HANG_GUARD)
async def test_get_during_the_outage_fails_fast_and_works_again_afterwards(
    pclient: QubicoClient, proxy: FaultProxy, task: Task
) -> None:
    proxy.mode = "refuse"
    with pytest.raises(TransportError) as info:
        await pclient.get_task(task.task_id)
    assert info.value.sent is False
    proxy.mode = "pass"
    assert (await pclient.get_task(task.task_id)).task_id == task.task_id


# -- a whole batch through a flaky network ------------------------------------------------------------


def journal_states(path: Path) -> dict[str, tuple[str, str | None, str | None]]:
    return {key: (row["state"], row["outcome"], row["task_id"]) for key, row in journal_rows(path).items()}


def assert_journal_matches(outcomes: list[Outcome], journal: Path) -> None:
    """Each job's journal row says what its outcome says."""
    rows = journal_states(journal)
    for o in outcomes:
        row = rows.get(o.key)
        if o.status == "succeeded":
            assert o.task is not None
            assert row == ("finished", "succeeded", o.task.task_id), (o, row)
        elif o.status == "uncertain":
            assert row is not None and row[0] == "uncertain" and row[2] is None, (o, row)
        elif o.status == "failed" and o.submitted_at is not None:  # created, then lost
            assert row is not None and row[0] == "submitted" and row[2], (o, row)
        elif o.status == "failed":  # provably never created
            assert row is None, (o, row)
        else:
            raise AssertionError(f"unexpected outcome {o}")
    assert set(rows) <= {o.key for o in outcomes}


@bounded(HANG_GUARD)
async def test_batch_through_a_flaky_proxy_loses_nothing(emu: Emulator, proxy: FaultProxy, tmp_path: Path) -> None:
    """Faults on ~1/3 of all connections: every job is accounted for, none is paid twice, and a
    rerun with the journal (and `resubmit_uncertain=True`) gets every result.

    The injected faults are the only source of uncertainty: no blackhole here (it can only end by
    a client timeout, and a timeout short enough for it also fires on a loaded machine for a create
    that went through, which is then honestly "uncertain" too). Timeouts are hang guards only.
    Blackholes are covered per request kind by the tests above.
    """
    n = 40
    jobs = [Job(FaceSwap(png(i), FACE), key=f"job-{i}") for i in range(n)]
    journal = tmp_path / "run.sqlite"
    proxy.chaos(
        {
            "reset_mid_request": 0.05,
            "reset_after_headers": 0.05,
            "reset_mid_response": 0.05,
            "close_mid_response": 0.05,
            "html_502": 0.05,
            "html_502_forwarded": 0.05,
        }
    )
    poll = PollPolicy(initial=0.01, factor=1.0, max_interval=0.01, jitter=0.0, timeout=HANG_GUARD)
    async with proxied(emu, proxy, poll=poll, timeout=GENEROUS) as c:
        outcomes = [o async for o in c.swap_many(jobs, concurrency=8, journal=journal)]
    assert sorted(o.index for o in outcomes) == list(range(n))
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {"succeeded", "uncertain"}, [o.reason for o in outcomes if o.status == "failed"]
    # A create is uncertain exactly when a fault hit it; none was resent.
    create_faults = [mode for line, mode in proxy.log if line.startswith(CREATE) and mode != "pass"]
    assert statuses["uncertain"] == len(create_faults) > 0
    assert sum(1 for line, _ in proxy.log if line.startswith(CREATE)) == n
    per_job = Counter(job_of(t.input) for t in emu.tasks.values())
    assert max(per_job.values()) == 1
    assert emu.stats.creates == n - sum(1 for m in create_faults if m not in FORWARDING_MODES)
    assert_journal_matches(outcomes, journal)
    assert sum(1 for line, mode in proxy.log if line.startswith(GET) and mode != "pass") > 0

    # The rerun: finished jobs are replayed, uncertain ones are paid again only when asked.
    proxy.clear()
    async with proxied(emu, proxy, poll=poll, timeout=GENEROUS) as c:
        again = [o async for o in c.swap_many(jobs, concurrency=8, journal=journal)]
        assert Counter(o.status for o in again) == {
            "skipped": statuses["succeeded"],
            "uncertain": statuses["uncertain"],
        }
        forced = [o async for o in c.swap_many(jobs, concurrency=8, journal=journal, resubmit_uncertain=True)]
    assert Counter(o.status for o in forced) == {"skipped": statuses["succeeded"], "succeeded": statuses["uncertain"]}
    assert all(o.task is not None and o.task.image_url for o in forced)  # every result is there
    assert emu.stats.creates == n + sum(1 for m in create_faults if m in FORWARDING_MODES)  # accepted re-pays only


@bounded(HANG_GUARD)
async def test_poll_errors_in_a_batch_do_not_lose_a_created_task(
    emu: Emulator, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Every attempt of one poll fails (a 502 storm): the batch keeps polling until its deadline
    instead of reporting a created, paid task as failed (without its task id)."""
    proxy.inject("html_502", times=4 * MAX_ATTEMPTS, match=GET)
    poll = PollPolicy(initial=0.01, factor=1.0, max_interval=0.01, jitter=0.0, timeout=5)
    async with proxied(emu, proxy, poll=poll) as c:
        outcomes = [o async for o in c.swap_many([FaceSwap(png(1), FACE)], journal=tmp_path / "j.sqlite")]
    assert [o.status for o in outcomes] == ["succeeded"], outcomes[0].reason
    assert proxy.counts["html_502"] == 4 * MAX_ATTEMPTS
    assert emu.stats.creates == 1


@bounded(HANG_GUARD)
async def test_emulator_killed_and_restarted_mid_batch(tmp_path: Path) -> None:
    """The service dies mid-batch and comes back empty on the same port: no hang, one outcome per
    job, a journal that says what happened, and no input created twice."""
    port = free_port()
    n = 30
    jobs = [Job(FaceSwap(png(i), FACE), key=f"job-{i}") for i in range(n)]
    journal = tmp_path / "run.sqlite"

    def service() -> Emulator:
        return Emulator(api_key="k", port=port, processor=identity, processing_seconds=0.2)

    first, second = service(), service()
    retry = RetryPolicy(max_attempts=15, base=0.02, cap=0.05, jitter=0.0)
    poll = PollPolicy(initial=0.01, factor=1.0, max_interval=0.01, jitter=0.0, timeout=10)
    outcomes: list[Outcome] = []
    unfinished: set[int] = set()  # jobs whose task was still processing on the first instance
    await first.start()
    try:
        async with QubicoClient(
            "k", base_url=f"http://127.0.0.1:{port}", retry=retry, poll=poll, timeout=GENEROUS
        ) as c:
            async with c.swap_many(jobs, concurrency=6, journal=journal) as batch:
                async for outcome in batch:
                    outcomes.append(outcome)
                    if len(outcomes) == n // 3:
                        while first.stats.creates < len(outcomes) + 5:  # a new wave is processing
                            await anyio.sleep(0.005)
                        unfinished = {job_of(t.input) for t in first.tasks.values() if not t.is_terminal}
                        await first.aclose()  # killed: its tasks are gone with it
                        await anyio.sleep(0.1)  # requests meanwhile are refused (and retried)
                        await second.start()
        assert batch.report is not None
        assert sum(batch.report.counts.values()) == n
    finally:
        await first.aclose()
        await second.aclose()
    assert sorted(o.index for o in outcomes) == list(range(n))
    statuses = Counter(o.status for o in outcomes)
    assert statuses["succeeded"] >= n // 3
    assert len(unfinished) >= 3
    on_first = {job_of(t.input) for t in first.tasks.values()}
    on_second = {job_of(t.input) for t in second.tasks.values()}
    for o in outcomes:
        if o.status == "failed":  # created on the first instance, unknown to the second: honest 404
            assert isinstance(o.error, NotFoundError), o.reason
            assert o.submitted_at is not None and "rerun with the journal" in o.reason
            assert o.index in on_first - on_second
        if o.index in unfinished:  # its task died, unfinished, with the first instance
            assert o.status in ("failed", "uncertain"), o
    assert_journal_matches(outcomes, journal)
    created = Counter(job_of(t.input) for emu in (first, second) for t in emu.tasks.values())
    status_of = {o.index: o.status for o in outcomes}
    assert all(count == 1 or status_of[i] == "uncertain" for i, count in created.items()), created
    assert second.stats.creates > 0  # the batch went on after the restart
    known = set(first.tasks) | set(second.tasks)
    assert all(o.task is not None and o.task.task_id in known for o in outcomes if o.status == "succeeded")


# -- webhooks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint_fault", ["refuse", "html_502"])
@bounded(HANG_GUARD)
async def test_webhook_endpoint_down_wait_resolves_by_polling(emu: Emulator, endpoint_fault: Mode) -> None:
    """The app's webhook endpoint is down (refused, or a proxy's 502): the emulator retries its
    deliveries and gives up; `wait(via="webhook")` still resolves through its fallback poll."""
    emu.processing_seconds = 0.1
    emu.faults.webhooks.retries = 2
    secret = "whsec-test-0123456789"
    async with FaultProxy(free_port()) as endpoint:  # nothing listens upstream
        endpoint.mode = endpoint_fault
        hub = WebhookHub(secret)
        async with QubicoClient(emu.api_key, base_url=emu.base_url, webhooks=hub, retry=RetryPolicy.instant()) as c:
            created = await c.submit(FaceSwap(png(1), FACE, webhook=WebhookConfig(endpoint.url + "/hook", secret)))
            fallback = PollPolicy(initial=0.05, factor=1.0, max_interval=0.05, jitter=0.0)
            done = await c.wait(created, via="webhook", poll=fallback, timeout=HANG_GUARD)
        assert done.status is TaskStatus.COMPLETED
        await emu.drain()
        assert endpoint.counts.get("html_502", 0) == (6 if endpoint_fault == "html_502" else 0)
    assert emu.stats.webhooks_sent == 0
    assert emu.stats.webhooks_failed == 2  # the creation and the terminal delivery, each given up
    assert emu.stats.webhook_attempts == 2 * 3  # first try + 2 retries each
    assert {d.status for d in emu.deliveries} == {"pending", "completed"}
    assert hub.waiting == 0


# -- downloads ------------------------------------------------------------------------------------------


@pytest.fixture
async def result(pclient: QubicoClient, emu: Emulator, proxy: FaultProxy) -> tuple[str, bytes]:
    """A finished task's result URL, through the proxy, and its content."""
    done = await pclient.run(FaceSwap(png(1, pad=512 * 1024), FACE))
    assert done.image_url is not None
    content = await pclient.download_bytes(done)  # directly from the emulator
    proxy.counts.clear()
    return through(proxy, emu, done.image_url), content


@pytest.mark.parametrize("mode", ["reset_after_headers", "reset_mid_response", "close_mid_response"])
@bounded(HANG_GUARD)
async def test_download_cut_mid_body_is_retried(
    pclient: QubicoClient, proxy: FaultProxy, result: tuple[str, bytes], tmp_path: Path, mode: Mode
) -> None:
    url, content = result
    proxy.inject(mode, match=RESULT)
    out = await pclient.download(url, tmp_path / "out.png")
    assert out.read_bytes() == content
    assert proxy.counts == {mode: 1, "pass": 1}
    assert leftovers(tmp_path) == ["out.png"]


@bounded(HANG_GUARD)
async def test_download_cut_every_time_leaves_no_file(
    pclient: QubicoClient, proxy: FaultProxy, result: tuple[str, bytes], tmp_path: Path
) -> None:
    url, _ = result
    proxy.mode = "reset_mid_response"
    with pytest.raises(TransportError):
        await pclient.download(url, tmp_path / "out.png")
    assert MAX_ATTEMPTS <= proxy.counts["reset_mid_response"] <= 2 * MAX_ATTEMPTS
    assert leftovers(tmp_path) == []


@bounded(HANG_GUARD)
async def test_download_stream_honours_a_read_timeout(
    proxy: FaultProxy, result: tuple[str, bytes], tmp_path: Path
) -> None:
    """`_download` with a read timeout: a blackholed result host is a typed error, no file left."""
    url, _ = result
    proxy.mode = "blackhole"
    async with aiohttp.ClientSession() as session:
        transport = Transport(api_key=None, retry=RetryPolicy.instant(2), timeouts=SHORT, session=lambda: session)
        with pytest.raises(TransportError):
            await _download.fetch_to_file(transport, url, tmp_path / "out.png", name_hint=None, overwrite=False)
    assert proxy.counts["blackhole"] == 2  # each attempt ended by its read timeout
    assert leftovers(tmp_path) == []


@bounded(HANG_GUARD)
async def test_download_blackhole_is_a_typed_error_within_the_client_timeout(
    emu: Emulator, proxy: FaultProxy, result: tuple[str, bytes], tmp_path: Path
) -> None:
    url, _ = result
    proxy.mode = "blackhole"
    async with proxied(emu, proxy, timeout=Timeouts(connect=0.5, read=0.2)) as client:
        with pytest.raises(TransportError):
            await client.download(url, tmp_path / "out.png")  # 3 attempts x 0.2 s of silence
    assert leftovers(tmp_path) == []
