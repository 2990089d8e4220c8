"""Webhook receiving (piapi-api.md §6): verify, parse, dedupe, the hub, and the webhook-or-poll race."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, suppress
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from qubico_async import (
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    ServerError,
    Task,
    TaskStatus,
    TransportError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from qubico_async.webhooks import (
    Deduplicator,
    MalformedWebhookError,
    WebhookEvent,
    WebhookHub,
    parse,
    verify,
    wait_first,
)
from tests._helpers import HANG_GUARD, count_calls

pytestmark = pytest.mark.anyio

SECRET = "hook-s3cret-7f3a"
WRONG = "guess-0000-xyz"
TS = 1724511853


def task_data(task_id: str = "t-1", status: str = "completed", **extra: Any) -> dict[str, Any]:
    """The Get Task `data` object as documented (§5.1), with the webhook secret echoed back."""
    data: dict[str, Any] = {
        "task_id": task_id,
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "status": status,
        "config": {
            "service_mode": "public",
            "webhook_config": {"endpoint": "https://example.com/hook", "secret": SECRET},
        },
        "input": {},
        "output": {"image_url": "https://img.example/out.png"} if status == "completed" else None,
        "meta": {
            "created_at": "2019-08-24T14:15:22Z",
            "started_at": "2019-08-24T14:15:22Z",
            "ended_at": "2019-08-24T14:15:22Z",
            "usage": {"type": "point", "frozen": 0, "consume": 0},
            "is_using_private_pool": False,
        },
        "detail": None,
        "logs": [],
        "error": {"code": 0, "raw_message": "", "message": "", "detail": None},
    }
    data.update(extra)
    return data


def body(task_id: str = "t-1", status: str = "completed", ts: Any = TS, **extra: Any) -> bytes:
    return json.dumps({"timestamp": ts, "data": task_data(task_id, status, **extra)}).encode()


def task(task_id: str = "t-1", status: TaskStatus = TaskStatus.COMPLETED) -> Task:
    return Task(task_id=task_id, status=status)


HEADERS = {"x-webhook-secret": SECRET}


class StarletteLikeHeaders(Mapping[str, str]):
    """Mimics starlette.datastructures.Headers: raw lowercase pairs, case-insensitive lookups."""

    def __init__(self, raw: dict[str, str]) -> None:
        self._raw = [(k.lower(), v) for k, v in raw.items()]

    def __getitem__(self, key: str) -> str:
        for k, v in self._raw:
            if k == key.lower():
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


# --- verify ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"x-webhook-secret": SECRET},
        {"X-Webhook-Secret": SECRET, "Content-Type": "application/json"},
        {"X-WEBHOOK-SECRET": SECRET},
        CIMultiDictProxy(CIMultiDict({"X-Webhook-Secret": SECRET})),
        StarletteLikeHeaders({"X-Webhook-Secret": SECRET}),
    ],
    ids=["lower", "title", "upper", "aiohttp", "starlette"],
)
def test_verify_accepts_the_secret_in_any_header_case(headers: Mapping[str, str]) -> None:
    verify(headers, SECRET)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/json"},
        {"x-webhook-secret": WRONG},
        {"X-Webhook-Secret": WRONG},
        {"x-webhook-secret": ""},
        {"x-webhook-secret": SECRET + " "},
        {"x-webhook-secret": SECRET[:-1]},
        {"x-webhook-secret": "\ud800"},  # cannot even be encoded
        CIMultiDictProxy(CIMultiDict({"X-Webhook-Secret": WRONG})),
        StarletteLikeHeaders({"X-Other": SECRET}),
    ],
)
def test_verify_rejects_missing_or_wrong_secret_without_revealing_it(headers: Mapping[str, str]) -> None:
    with pytest.raises(WebhookVerificationError) as info:
        verify(headers, SECRET)
    for text in (str(info.value), repr(info.value)):
        assert SECRET not in text
        assert WRONG not in text


@pytest.mark.parametrize("secret", ["", None])
def test_verify_refuses_an_empty_configured_secret(secret: Any) -> None:
    with pytest.raises(ValueError, match="empty"):
        verify({"x-webhook-secret": ""}, secret)
    with pytest.raises(ValueError, match="empty"):
        WebhookHub(secret)


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    verify(HEADERS, SECRET)
    assert calls == [(SECRET.encode(), SECRET.encode())]


# --- parse ----------------------------------------------------------------------------------------


def test_parse_documented_body() -> None:
    event = parse(body())
    assert event.timestamp == TS
    assert event.task.task_id == "t-1"
    assert event.task.status is TaskStatus.COMPLETED
    assert event.task.image_url == "https://img.example/out.png"
    assert event.key == ("t-1", "completed", TS)
    assert SECRET not in repr(event)  # the echoed secret stays out of reprs


@pytest.mark.parametrize("form", ["bytes", "bytearray", "str", "mapping"])
def test_parse_accepts_raw_or_decoded_bodies(form: str) -> None:
    raw = body("t-9", "processing")
    value: Any = {
        "bytes": raw,
        "bytearray": bytearray(raw),
        "str": raw.decode(),
        "mapping": json.loads(raw),
    }[form]
    event = parse(value)
    assert event.task.task_id == "t-9" and event.task.status is TaskStatus.PROCESSING


@pytest.mark.parametrize(
    ("extra", "status", "check"),
    [
        ({}, "Completed", lambda t: t.status is TaskStatus.COMPLETED),
        ({}, "FAILED", lambda t: t.status is TaskStatus.FAILED and t.status.is_terminal),
        ({"logs": None}, "processing", lambda t: t.logs == ()),
        ({"meta": {}}, "pending", lambda t: t.meta.created_at is None),
        ({"output": None}, "completed", lambda t: t.output is None),
        ({"error": None, "config": None}, "pending", lambda t: t.error is None),
        ({"new_field": [1, 2]}, "staged", lambda t: t.status is TaskStatus.STAGED),
        ({}, "brand-new-state", lambda t: not t.status.is_known and not t.status.is_terminal),
        (
            {"error": {"code": 10000, "message": "no face", "raw_message": "", "detail": None}},
            "failed",
            lambda t: t.error is not None and t.error.message == "no face",
        ),
    ],
)
def test_parse_every_task_variant(extra: dict[str, Any], status: str, check: Any) -> None:
    event = parse(body("t-v", status, **extra))
    assert check(event.task)
    assert event.key[1] == status.lower()


def test_parse_minimal_data() -> None:
    event = parse({"timestamp": 1, "data": {"task_id": "x", "status": "pending"}})
    assert event == WebhookEvent(timestamp=1, task=Task(task_id="x"))


@pytest.mark.parametrize(("ts", "expected"), [("1724511853", TS), (" 42 ", 42), (0, 0)])
def test_parse_timestamp_as_int_or_numeric_string(ts: Any, expected: int) -> None:
    assert parse(body(ts=ts)).timestamp == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00garbage", id="bad-utf8"),
        pytest.param(b"[1, 2]", id="list"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(json.dumps({"timestamp": TS}).encode(), id="no-data"),
        pytest.param(json.dumps({"data": task_data()}).encode(), id="no-timestamp"),
        pytest.param(json.dumps({"timestamp": TS, "data": None}).encode(), id="data-null"),
        pytest.param(json.dumps({"timestamp": TS, "data": [1]}).encode(), id="data-list"),
        pytest.param(json.dumps({"timestamp": TS, "data": {"status": "x"}}).encode(), id="no-task-id"),
        pytest.param(body(status=None), id="status-null"),  # type: ignore[arg-type]
        pytest.param(body(ts=True), id="ts-bool"),
        pytest.param(body(ts=1.5), id="ts-float"),
        pytest.param(body(ts=None), id="ts-null"),
        pytest.param(body(ts="soon"), id="ts-text"),
        pytest.param(body(ts="1e9"), id="ts-exp"),
        pytest.param(body(ts="0\x1f"), id="ts-control-char"),
        pytest.param(body(ts="\u0661\u0662"), id="ts-arabic-digits"),
        pytest.param(body(ts=-1), id="ts-negative"),
        pytest.param(body(ts=2**70), id="ts-huge"),
        pytest.param(b'{"timestamp": NaN, "data": {}}', id="ts-nan"),
        pytest.param(b'{"timestamp": ' + b"9" * 5000 + b', "data": {}}', id="ts-5000-digits"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
        pytest.param(b'{"timestamp": 1, "data": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001, id="deep-data"),
    ],
)
def test_malformed_bodies(raw: bytes) -> None:
    with pytest.raises(MalformedWebhookError) as info:
        parse(raw)
    assert isinstance(info.value, MalformedResponseError)
    assert str(info.value)
    assert SECRET not in str(info.value)


def test_huge_body_is_rejected_before_parsing() -> None:
    big = body(extra_blob="x" * (1 << 20))
    with pytest.raises(MalformedWebhookError, match="limit"):
        parse(big)
    with pytest.raises(MalformedWebhookError, match="limit"):
        parse(big.decode())
    assert parse(big, max_bytes=2 << 20).task.task_id == "t-1"


def test_non_body_type_is_malformed() -> None:
    with pytest.raises(MalformedWebhookError):
        parse(12)  # type: ignore[arg-type]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
STATUS = st.sampled_from(["pending", "Processing", "COMPLETED", "failed", "cancelled", "success", ""]) | JSON
TASKISH = st.fixed_dictionaries(
    {"task_id": st.text(min_size=1, max_size=5) | st.integers() | JSON},
    optional={
        "status": STATUS,
        "output": JSON | st.fixed_dictionaries({"image_url": JSON}),
        "meta": JSON | st.fixed_dictionaries({}, optional={"created_at": JSON, "usage": JSON}),
        "error": JSON | st.fixed_dictionaries({}, optional={"code": JSON, "message": JSON}),
        "logs": JSON,
        "config": JSON | st.fixed_dictionaries({"webhook_config": JSON}),
        "input": JSON,
        "detail": JSON,
    },
)
TIMESTAMP = st.integers(min_value=0) | st.from_regex(r"[ \t]{0,2}[0-9]{1,20}[ \t]{0,2}", fullmatch=True) | JSON
BODYISH = st.one_of(
    JSON,
    st.fixed_dictionaries({"timestamp": TIMESTAMP, "data": TASKISH}),
    st.fixed_dictionaries({}, optional={"timestamp": TIMESTAMP, "data": TASKISH | JSON, "extra": JSON}),
)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(value=BODYISH, as_json=st.booleans())
def test_fuzz_parse_returns_an_event_or_malformed(value: Any, as_json: bool) -> None:
    raw: Any = json.dumps(value).encode() if as_json else value
    try:
        event = parse(raw)
    except MalformedWebhookError:
        return
    assert isinstance(event, WebhookEvent)
    assert isinstance(event.timestamp, int) and isinstance(event.task, Task)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(raw=st.binary(max_size=64) | st.text(max_size=64))
def test_fuzz_parse_raw_bytes(raw: bytes | str) -> None:
    with suppress(MalformedWebhookError):
        parse(raw)


# --- dedupe ---------------------------------------------------------------------------------------


def event(task_id: str = "t-1", status: TaskStatus = TaskStatus.COMPLETED, ts: int = TS) -> WebhookEvent:
    return WebhookEvent(timestamp=ts, task=task(task_id, status))


def test_dedupe_same_key_twice() -> None:
    d = Deduplicator()
    assert not d.seen(event())
    assert d.seen(event())
    assert not d.seen(event(ts=TS + 1))  # a new delivery, not a retry
    assert not d.seen(event(status=TaskStatus.PROCESSING))
    assert not d.seen(event(task_id="t-2"))
    assert len(d) == 4


def test_dedupe_key_ignores_status_case() -> None:
    d = Deduplicator()
    assert not d.seen(parse(body(status="completed")))
    assert d.seen(parse(body(status="Completed")))


def test_dedupe_is_a_bounded_lru() -> None:
    d = Deduplicator(maxsize=3)
    for i in range(3):
        assert not d.seen(event(ts=i))
    assert d.seen(event(ts=0))  # refreshes 0: now 1 is the oldest
    assert not d.seen(event(ts=3))  # evicts 1
    assert len(d) == 3
    assert d.seen(event(ts=0))
    assert not d.seen(event(ts=1))
    with pytest.raises(ValueError, match="maxsize"):
        Deduplicator(0)


# --- hub ------------------------------------------------------------------------------------------


def test_hub_handle_verifies_before_parsing_and_drops_duplicates() -> None:
    hub = WebhookHub(SECRET)
    with pytest.raises(WebhookVerificationError):
        hub.handle({"x-webhook-secret": WRONG}, b"not json")
    with pytest.raises(MalformedWebhookError):
        hub.handle(HEADERS, b"not json")
    first = hub.handle(HEADERS, body())
    assert first is not None and first.task.status is TaskStatus.COMPLETED
    assert hub.handle(HEADERS, body()) is None
    assert SECRET not in repr(hub)


def test_hub_rejects_forged_delivery_without_recording_it() -> None:
    hub = WebhookHub(SECRET)
    with pytest.raises(WebhookVerificationError):
        hub.handle({}, body())
    assert hub.latest("t-1") is None
    assert hub.handle(HEADERS, body()) is not None  # the forged copy did not poison dedupe


async def test_terminal_delivery_resolves_waiter() -> None:
    hub = WebhookHub(SECRET)
    got: list[Task] = []

    async def waiter() -> None:
        with hub.subscribe("t-1") as sub:
            got.append(await sub.terminal())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert hub.waiting == 1
        hub.handle(HEADERS, body("t-1", "pending", ts=1))
        hub.handle(HEADERS, body("t-1", "processing", ts=2))
        await anyio.wait_all_tasks_blocked()
        assert got == [] and hub.latest("t-1") is not None
        assert hub.latest("t-1").status is TaskStatus.PROCESSING  # type: ignore[union-attr]
        hub.handle(HEADERS, body("t-1", "completed", ts=3))
    assert [t.status for t in got] == [TaskStatus.COMPLETED]
    assert hub.waiting == 0


async def test_many_subscribers_on_one_task_and_other_tasks_untouched() -> None:
    hub = WebhookHub(SECRET)
    with ExitStack() as stack:
        subs = [stack.enter_context(hub.subscribe("a")) for _ in range(3)]
        other = stack.enter_context(hub.subscribe("b"))
        assert hub.waiting == 4
        hub.handle(HEADERS, body("a", "failed"))
        results = [await s.terminal() for s in subs]
        assert {t.status for t in results} == {TaskStatus.FAILED}
        assert other.result is None
    assert hub.waiting == 0


async def test_late_subscriber_gets_remembered_terminal_result() -> None:
    hub = WebhookHub(SECRET)
    hub.handle(HEADERS, body("t-1", "completed", ts=5))
    hub.handle(HEADERS, body("t-1", "processing", ts=4))  # late, out-of-order retry
    assert hub.latest("t-1").status is TaskStatus.COMPLETED  # type: ignore[union-attr]
    with anyio.fail_after(HANG_GUARD), hub.subscribe("t-1") as sub:
        assert (await sub.terminal()).status is TaskStatus.COMPLETED
    assert hub.waiting == 0


async def test_remembered_results_are_bounded() -> None:
    hub = WebhookHub(SECRET, remember=2)
    for i in range(3):
        hub.resolve(task(f"t-{i}"))
    assert hub.latest("t-0") is None
    assert hub.latest("t-2") is not None
    with hub.subscribe("t-0") as sub:
        assert sub.result is None  # forgotten: only a new delivery or polling can resolve it


async def test_cancelled_waiter_unsubscribes() -> None:
    hub = WebhookHub(SECRET)
    with anyio.move_on_after(0.01) as scope, hub.subscribe("t-1") as sub:
        assert hub.waiting == 1
        await sub.terminal()
    assert scope.cancelled_caught
    assert hub.waiting == 0
    assert not hub._slots  # nothing left behind for the task
    with pytest.raises(RuntimeError):
        await sub.terminal()  # outside its `with`


async def test_subscription_cannot_be_entered_twice() -> None:
    hub = WebhookHub(SECRET)
    with hub.subscribe("x") as sub, pytest.raises(RuntimeError):
        sub.__enter__()
    assert hub.waiting == 0


async def test_resolve_from_polling_resolves_the_same_waiters() -> None:
    hub = WebhookHub(SECRET)
    got: list[Task] = []

    async def waiter() -> None:
        with hub.subscribe("t-1") as sub:
            got.append(await sub.terminal())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        hub.resolve(task("t-1", TaskStatus.PROCESSING))
        await anyio.wait_all_tasks_blocked()
        assert got == []
        hub.resolve(task("t-1", TaskStatus.CANCELLED))
    assert [t.status for t in got] == [TaskStatus.CANCELLED] * 2
    # The webhook arriving afterwards changes nothing for them, and is not an error.
    assert hub.handle(HEADERS, body("t-1", "completed")) is not None
    assert hub.waiting == 0


async def test_thousand_waiters_resolved_by_thousand_deliveries_quickly() -> None:
    """Each delivery does the same, small amount of work however many waiters remain.

    Work is counted in calls (`count_calls`), which load cannot change: a hub that scanned its
    waiters would make more calls for the first delivery (999 others waiting) than for the last.
    """
    hub = WebhookHub(SECRET)
    n = 1000
    bodies = [body(f"task-{i}", "completed", ts=i) for i in range(n)]
    done: dict[str, Task] = {}
    per_delivery: list[int] = []

    async def waiter(task_id: str) -> None:
        with hub.subscribe(task_id) as sub:
            done[task_id] = await sub.terminal()

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(waiter, f"task-{i}")
        tg.start_soon(waiter, "warm-up")
        await anyio.wait_all_tasks_blocked()
        assert hub.waiting == n + 1
        hub.handle(HEADERS, body("warm-up", "completed"))  # the first wake-up fills caches: not counted
        for raw in bodies:  # no await in between: every waiter is woken by handle() itself
            with count_calls() as calls:
                hub.handle(HEADERS, raw)
            per_delivery.append(calls.total)
    assert len(done) == n + 1 and all(t.task_id == k for k, t in done.items())
    assert hub.waiting == 0
    assert max(per_delivery) == min(per_delivery), (min(per_delivery), max(per_delivery))


def _calls_per_delivery(waiters: int) -> int:
    """Calls made by resolve() for 200 terminal updates, with `waiters` other subscriptions."""
    hub = WebhookHub(SECRET)
    updates = [task(f"hit-{i}") for i in range(200)]
    with ExitStack() as stack:
        for i in range(waiters):
            stack.enter_context(hub.subscribe(f"idle-{i}"))
        hits = [stack.enter_context(hub.subscribe(f"hit-{i}")) for i in range(200)]
        with count_calls() as calls:
            for t in updates:
                hub.resolve(t)
        assert all(s.result is not None for s in hits)
        assert hub.waiting == waiters + 200
    return calls.total


def test_delivery_cost_does_not_grow_with_waiters() -> None:
    few, many = _calls_per_delivery(10), _calls_per_delivery(10_000)
    # A scan over every waiter would make `many` grow with the 10,000 idle ones; a lookup costs the same.
    assert many == few, (few, many)


# --- wait_first -----------------------------------------------------------------------------------


class FakePoll:
    """A poll function returning scripted states (or raising scripted errors), counting calls."""

    def __init__(self, *script: Task | BaseException, then: Task | None = None) -> None:
        self.script = list(script)
        self.then = then or task("t-1", TaskStatus.PROCESSING)
        self.calls = 0

    async def __call__(self) -> Task:
        self.calls += 1
        item = self.script.pop(0) if self.script else self.then
        if isinstance(item, BaseException):
            raise item
        return item


async def test_wait_first_webhook_wins_and_polling_stops() -> None:
    hub = WebhookHub(SECRET)
    poll = FakePoll()
    result: list[Task] = []

    async def waiter() -> None:
        result.append(await wait_first(hub, "t-1", poll, poll_interval=0.01, timeout=HANG_GUARD))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.035)
        assert poll.calls >= 1  # the fallback is running
        hub.handle(HEADERS, body("t-1", "completed"))
    calls = poll.calls
    await anyio.sleep(0.05)
    assert poll.calls == calls  # the poller was cancelled
    assert result[0].status is TaskStatus.COMPLETED and result[0].image_url
    assert hub.waiting == 0


async def test_wait_first_returns_at_once_for_a_remembered_delivery() -> None:
    hub = WebhookHub(SECRET)
    hub.handle(HEADERS, body("t-1", "failed"))
    poll = FakePoll()
    with anyio.fail_after(HANG_GUARD):
        got = await wait_first(hub, "t-1", poll, poll_interval=0.2, timeout=None)
    assert got.status is TaskStatus.FAILED and poll.calls == 0


async def test_wait_first_poll_wins_when_the_webhook_is_dropped() -> None:
    hub = WebhookHub(SECRET)
    final = task("t-1", TaskStatus.COMPLETED)
    poll = FakePoll(task("t-1", TaskStatus.PENDING), task("t-1", TaskStatus.PROCESSING), final)
    with anyio.fail_after(HANG_GUARD):
        got = await wait_first(hub, "t-1", poll, poll_interval=0, timeout=HANG_GUARD)
    assert got is final and poll.calls == 3
    assert hub.latest("t-1") is final  # polling fed the hub: other waiters share the result
    assert hub.waiting == 0


async def test_wait_first_trusts_a_terminal_poll_result_under_another_id() -> None:
    hub = WebhookHub(SECRET)
    final = task("T-1", TaskStatus.COMPLETED)  # e.g. the service normalised the id
    with anyio.fail_after(HANG_GUARD):
        assert await wait_first(hub, "t-1", FakePoll(final), poll_interval=0, timeout=None) is final
    assert hub.waiting == 0


async def test_wait_first_accepts_an_interval_iterable() -> None:
    hub = WebhookHub(SECRET)
    poll = FakePoll(task("t-1", TaskStatus.PENDING), task("t-1", TaskStatus.COMPLETED))
    got = await wait_first(hub, "t-1", poll, poll_interval=iter([0.0, 0.001, 0.002]), timeout=HANG_GUARD)
    assert got.status is TaskStatus.COMPLETED
    with pytest.raises(ValueError, match="poll_interval"):
        await wait_first(hub, "t-2", poll, poll_interval=-1, timeout=1)


async def test_wait_first_timeout_carries_last_task() -> None:
    hub = WebhookHub(SECRET)
    poll = FakePoll(then=task("t-1", TaskStatus.PROCESSING))
    with pytest.raises(WaitTimeoutError) as info:
        await wait_first(hub, "t-1", poll, poll_interval=0.01, timeout=0.05)
    err = info.value
    assert err.task_id == "t-1" and err.timeout == 0.05
    assert err.last_task is not None and err.last_task.status is TaskStatus.PROCESSING
    assert isinstance(err, TimeoutError)
    assert hub.waiting == 0


async def test_wait_first_timeout_with_nothing_seen() -> None:
    hub = WebhookHub(SECRET)
    with pytest.raises(WaitTimeoutError) as info:
        await wait_first(hub, "t-1", FakePoll(), poll_interval=10, timeout=0.02)
    assert info.value.last_task is None


async def test_wait_first_timeout_reports_webhook_progress() -> None:
    hub = WebhookHub(SECRET)
    hub.handle(HEADERS, body("t-1", "processing"))
    with pytest.raises(WaitTimeoutError) as info:
        await wait_first(hub, "t-1", FakePoll(), poll_interval=10, timeout=0.02)
    assert info.value.last_task is not None
    assert info.value.last_task.status is TaskStatus.PROCESSING


async def test_wait_first_keeps_polling_through_transient_errors(caplog: pytest.LogCaptureFixture) -> None:
    hub = WebhookHub(SECRET)
    poll = FakePoll(
        TransportError("connection reset"),
        ServerError("bad gateway", status=502),
        RateLimitError("slow down", status=429, retry_after=0.01),
        task("t-1", TaskStatus.COMPLETED),
    )
    with caplog.at_level(logging.WARNING, logger="qubico_async"), anyio.fail_after(HANG_GUARD):
        got = await wait_first(hub, "t-1", poll, poll_interval=0, timeout=HANG_GUARD)
    assert got.status is TaskStatus.COMPLETED and poll.calls == 4
    assert len([r for r in caplog.records if "will retry" in r.getMessage()]) == 3


@pytest.mark.parametrize(
    "error",
    [NotFoundError("no such task", status=404), MalformedResponseError("bad"), RuntimeError("bug")],
)
async def test_wait_first_propagates_other_errors_unwrapped(error: Exception) -> None:
    hub = WebhookHub(SECRET)
    poll = FakePoll(task("t-1", TaskStatus.PENDING), error)
    with pytest.raises(type(error)) as info:
        await wait_first(hub, "t-1", poll, poll_interval=0, timeout=HANG_GUARD)
    assert info.value is error
    assert hub.waiting == 0


async def test_wait_first_cancellation_leaves_nothing_behind() -> None:
    hub = WebhookHub(SECRET)
    before = len(asyncio.all_tasks())
    poll = FakePoll()
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(wait_first, hub, f"t-{i}", poll, 0.005, None)
        await anyio.sleep(0.03)
        assert hub.waiting == 20
        tg.cancel_scope.cancel()
    assert hub.waiting == 0
    assert not hub._slots
    assert len(asyncio.all_tasks()) == before
    calls = poll.calls
    await anyio.sleep(0.02)
    assert poll.calls == calls  # no poller survived
