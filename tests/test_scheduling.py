"""The rate controller (AIMD, creates first, its own `Pacing` bounds) and the learned poll schedule."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from qubico_async import (
    HTTPRequest,
    HTTPResponse,
    MockTransport,
    Pacing,
    PollPolicy,
    QubicoClient,
    RetryPolicy,
    Task,
    TaskMeta,
    TaskStatus,
    _rate,
)
from qubico_async._pollsched import PollScheduler
from qubico_async._rate import RateController


def _done(created: float | None = None, ended: float | None = None) -> Task:
    def at(t: float | None) -> dt.datetime | None:
        return None if t is None else dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)

    return Task(task_id="t", status=TaskStatus.COMPLETED, meta=TaskMeta(created_at=at(created), ended_at=at(ended)))


def test_poll_schedule_before_learning_keeps_notice_delay_within_a_fifth() -> None:
    policy = PollPolicy(initial=1.0, factor=2.0, max_interval=8.0, jitter=0.0)
    sched = PollScheduler(policy)
    waits = list(itertools.islice(sched.waits(), 5))
    assert waits == pytest.approx([1.0, 0.2, 0.24, 0.288, 0.3456])
    elapsed = list(itertools.accumulate(waits))
    assert all(
        w <= 0.2 * e + 1e-9 for w, e in zip(waits[1:], elapsed, strict=False)
    )  # each gap is a fifth of the time so far
    long = list(itertools.islice(sched.waits(), 200))
    assert max(long) == 8.0  # capped by the policy


def test_poll_schedule_first_poll_near_the_median_then_a_fifth() -> None:
    sched = PollScheduler(PollPolicy(initial=1.0, jitter=0.0, max_interval=15.0))
    for _ in range(5):
        sched.observe(_done(100.0, 110.0), submitted_at=0.0, noticed_at=10.5, pending_at=None)
    assert sched.estimate() == pytest.approx(10.0)
    waits = list(itertools.islice(sched.waits(), 4))
    assert waits[0] == pytest.approx(10.1)
    assert waits[1:] == pytest.approx([2.0, 2.0, 2.0])


def test_server_durations_that_disagree_with_the_client_are_not_trusted() -> None:
    sched = PollScheduler(PollPolicy(jitter=0.0))
    for _ in range(3):  # server says 50 s, but the client saw it done after 2 s: clock trouble
        sched.observe(_done(0.0, 50.0), submitted_at=0.0, noticed_at=2.0, pending_at=1.0)
    assert sched.estimate() == pytest.approx(1.5)  # middle of the window the client saw


def test_estimate_can_move_down() -> None:
    sched = PollScheduler(PollPolicy(jitter=0.0))
    for _ in range(3):
        sched.observe(_done(), submitted_at=0.0, noticed_at=10.0, pending_at=None)
    assert sched.estimate() == pytest.approx(8.0)  # done at the first look: guess shorter


def test_outliers_fall_back_to_backoff() -> None:
    policy = PollPolicy(initial=1.0, factor=2.0, max_interval=4.0, jitter=0.0)
    sched = PollScheduler(policy)
    for _ in range(3):
        sched.observe(_done(0.0, 1.0), submitted_at=0.0, noticed_at=1.0, pending_at=0.9)
    waits = list(itertools.islice(sched.waits(), 40))
    assert waits[0] == pytest.approx(1.01)
    assert max(waits) <= 4.0  # never longer than the policy allows


pytestmark = pytest.mark.anyio


class VirtualTime:
    """A clock for `RateController` plus a fake `anyio.sleep` that only moves it: every pause is
    recorded, so how long the controller waits is read off a list instead of a wall clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


@pytest.fixture
def vtime(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    virtual = VirtualTime()
    monkeypatch.setattr(_rate.anyio, "sleep", virtual.sleep)
    return virtual


async def test_rate_controller_is_free_until_a_429(vtime: VirtualTime) -> None:
    rc = RateController(clock=vtime.clock)
    for _ in range(1000):
        await rc.acquire()
    assert vtime.sleeps == []  # not one pause
    assert rc.rate is None and not rc.limited


async def test_retry_after_pauses_everyone(vtime: VirtualTime) -> None:
    rc = RateController(clock=vtime.clock)
    rc.on_rate_limited(0.1)
    await rc.acquire("create")
    assert sum(vtime.sleeps) == pytest.approx(0.1)  # paused for the whole Retry-After
    assert rc.rate is not None


async def test_one_decrease_per_burst_and_slow_recovery() -> None:
    now = [0.0]
    rc = RateController(increase_per_second=2.0, min_rate=0.5, clock=lambda: now[0])
    for _ in range(50):
        await rc.acquire()
    rc.on_rate_limited(None)
    first = rc.rate
    assert first is not None
    for _ in range(20):  # the rest of the same burst
        rc.on_rate_limited(None)
    assert rc.rate == first
    now[0] += 2.0
    rc.on_rate_limited(None)  # a new burst, later: halve again
    assert rc.rate == pytest.approx(first / 2)
    now[0] += 1.0
    rc._recover(now[0])
    assert rc.rate == pytest.approx(first / 2 + 2.0)


async def test_creates_go_before_polls() -> None:
    rc = RateController(min_rate=20.0)
    rc.on_rate_limited(None)
    rc.rate = 20.0  # one request per 50 ms
    order: list[str] = []

    async def take(kind: str) -> None:
        await rc.acquire(kind)  # type: ignore[arg-type]
        order.append(kind)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(take, "poll")
        await anyio.lowlevel.checkpoint()
        for _ in range(3):
            tg.start_soon(take, "create")
    # the first poll may already hold the slot; every create then goes before the other polls
    assert order[-2:] == ["poll", "poll"]
    assert order.count("create") == 3


async def test_max_wait_bounds_the_pause(vtime: VirtualTime) -> None:
    rc = RateController(clock=vtime.clock)
    rc.on_rate_limited(60.0)
    await rc.acquire(max_wait=0.05)
    assert sum(vtime.sleeps) == pytest.approx(0.05)  # not the 60 s the 429 asked for


# -- Pacing: its own knob, not the retry policy's ---------------------------------------------------


def _scripted(vtime: VirtualTime, statuses: list[int]) -> tuple[MockTransport, list[float]]:
    """A mock API answering `statuses` in turn (then 200s), noting the virtual time of each request."""
    sent_at: list[float] = []
    queue = list(statuses)

    def handler(request: HTTPRequest) -> HTTPResponse:
        sent_at.append(vtime.now)
        status = queue.pop(0) if queue else 200
        if status == 429:
            return HTTPResponse.json(429, '{"code": 429, "message": "slow down"}', {"Retry-After": "5"})
        body = {"code": 200, "data": {"task_id": "t-1", "status": "processing"}, "message": "success"}
        return HTTPResponse.json(200, json.dumps(body))

    return MockTransport(handler), sent_at


async def _polls(vtime: VirtualTime, n: int, **options: Any) -> list[float]:
    mock, sent_at = _scripted(vtime, [429])
    async with QubicoClient(api_key="k", base_url="http://127.0.0.1:9", transport=mock, **options) as c:
        c._transport.limiter._clock = vtime.clock  # the controller reads the virtual clock
        for _ in range(n):
            await c.get_task("t-1")
        assert c.requests_sent["read"] == n + 1  # the 429, retried at once, then one per poll
    return sent_at


async def test_instant_retries_still_pace_after_a_429(vtime: VirtualTime) -> None:
    """`RetryPolicy.instant()` has cap=0; the limiter's bound used to be `retry.cap`, so it never waited."""
    sent_at = await _polls(vtime, 4, retry=RetryPolicy.instant())
    assert sent_at[0] == 0.0
    assert sent_at[1] >= 5.0  # the retry waited out the Retry-After pause (on the controller's clock)
    gaps = [b - a for a, b in itertools.pairwise(sent_at[1:])]
    assert all(gap > 0 for gap in gaps)  # and the polls after it were spaced by the halved rate
    assert sum(vtime.sleeps) >= 5.0


async def test_pacing_off_never_waits(vtime: VirtualTime) -> None:
    sent_at = await _polls(vtime, 4, retry=RetryPolicy.instant(), pacing=Pacing.off())
    assert sent_at == [0.0] * 5 and sum(vtime.sleeps) == 0  # (the instant retry sleeps 0 s)


async def test_pacing_bounds_are_its_own(vtime: VirtualTime) -> None:
    """`max_wait` bounds each request's wait, whatever the retry policy's `cap` (here 0)."""
    sent_at = await _polls(vtime, 1, retry=RetryPolicy.instant(), pacing=Pacing(max_wait=1.0))
    assert sent_at[1] == pytest.approx(1.0)  # waited its 1 s, not the 5 s the 429 asked for


def test_pacing_checks_its_bounds() -> None:
    with pytest.raises(ValueError, match="max_rate"):
        Pacing(min_rate=10.0, max_rate=1.0)
    with pytest.raises(ValueError, match="max_wait"):
        Pacing(max_wait=-1.0)
