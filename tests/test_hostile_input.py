"""Hostile input: whatever a server, a file or a sender throws at the SDK, the answer is a typed
SDK error (or a model), within a bounded time and memory; never a bare exception, never a hang.

Covered: the cattrs converter (`structure_task`/`structure_account`), the same through the wire
(emulator scripts, 2xx and error statuses, hostile headers, oversized and deeply nested bodies),
the CLI's manifest reader, and the webhook parser's cases not fuzzed in test_webhooks.py
(10 MB bodies, 10,000-deep decoded mappings).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qubico_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    QubicoClient,
    RateLimitError,
    RetryPolicy,
    ServerError,
    Task,
)
from qubico_async._batch_cli_inputs import read_manifest
from qubico_async._convert import structure_account, structure_task
from qubico_async.errors import InvalidInputError
from qubico_async.models import AccountInfo
from qubico_async.testing import Emulator, identity
from qubico_async.webhooks import MalformedWebhookError, WebhookEvent, WebhookHub, parse
from tests._helpers import HANG_GUARD, Calls, count_calls

KEY = "hostile-key-5b1e"
HOOK_SECRET = "hostile-hook-secret-77c0"
# Fixed seeds (derandomize): the same examples every run, so a failure reproduces and the cost is stable.
FUZZ = settings(
    max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
WIRE_FUZZ = settings(
    max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
NO_RETRY = RetryPolicy.instant(max_attempts=1)  # also: a hostile Retry-After never pauses the next example
MB = 1 << 20
MANIFEST_CALLS = 50_000  # work bound for reading a fuzzed manifest (at most a few KB)
DEEP = 10_000
CALLS_PER_VALUE = 10  # work bound: calls per JSON value in the input (see `assert_linear_work`)
CALLS_BASE = 5_000  # plus a constant (a valid task converts in ~150 calls)


# --- strategies ----------------------------------------------------------------------------------

TASK_KEYS = (
    "task_id",
    "model",
    "task_type",
    "status",
    "output",
    "meta",
    "error",
    "logs",
    "config",
    "input",
    "detail",
    "usage",
    "created_at",
    "started_at",
    "ended_at",
    "image_url",
    "video_url",
    "message",
    "raw_message",
    "code",
    "webhook_config",
    "endpoint",
    "secret",
    "service_mode",
    "consume",
    "frozen",
    "type",
    "is_using_private_pool",
    "equivalent_in_usd",
    "id",
    "name",
    "plan",
    "is_enable",
    "max_concurrent_task_count",
    "account_id",
    "account_name",
    "data",
    "timestamp",
)
KEYS = st.sampled_from(TASK_KEYS) | st.text(max_size=12)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "",
            "pending",
            "COMPLETED",
            "failed",
            "2024-08-24T14:15:22Z",
            "2024-13-45T99:99:99.1234567890Z",
            "9" * 80,
            "http://x/y.png",
            "nan",
            "\x00",
            "\ud7ff\ufffe",
        ]
    )
)
JSON = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=12,
)


def shaped(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A dict with any subset of `schema`'s keys, each value of the right shape or of any JSON type."""
    optional = {key: (shaped(sub) if isinstance(sub, dict) else JSON) | JSON for key, sub in schema.items()}
    return st.fixed_dictionaries({}, optional=optional) | JSON


TASK_SCHEMA: dict[str, Any] = {
    "model": None,
    "task_type": None,
    "output": {"image_url": None, "video_url": None},
    "meta": {
        "created_at": None,
        "started_at": None,
        "ended_at": None,
        "usage": {"type": None, "frozen": None, "consume": None},
        "is_using_private_pool": None,
    },
    "error": {"code": None, "message": None, "raw_message": None, "detail": None},
    "logs": None,
    "config": {"service_mode": None, "webhook_config": {"endpoint": None, "secret": None}},
    "input": None,
    "detail": None,
}
STATUSES = st.sampled_from(["pending", "processing", "Completed", "FAILED", "cancelled", "success", "staged", "??"])
TASKISH = st.one_of(
    # mostly readable: a task id and a status, then anything in the other fields
    st.fixed_dictionaries(
        {"task_id": st.text(min_size=1, max_size=40) | st.integers()},
        optional={"status": STATUSES | JSON, **{k: shaped(v) if v else JSON for k, v in TASK_SCHEMA.items()}},
    ),
    # anything at all, in roughly the task's shape
    shaped({"task_id": None, "status": None, **TASK_SCHEMA}),
)
ACCOUNTISH = shaped(
    {
        key: None
        for key in (
            "equivalent_in_usd",
            "id",
            "account_id",
            "name",
            "account_name",
            "plan",
            "is_enable",
            "max_concurrent_task_count",
        )
    }
)


# --- helpers -------------------------------------------------------------------------------------


def deep_list(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_dict(depth: int, key: str = "a", leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {key: value}
    return value


def json_values(data: Any) -> int:
    """How many values (containers, keys and leaves) `data` holds; iterative, for 10,000-deep input."""
    count, stack = 0, [data]
    while stack:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            count += len(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def assert_linear_work(calls: Calls, data: Any) -> None:
    """The work done (counted in calls, which load cannot change) is linear in the number of JSON
    values: never per character of a huge string, never per level for every level (quadratic)."""
    bound = CALLS_PER_VALUE * json_values(data) + CALLS_BASE
    assert calls.total <= bound, f"{calls.total} calls for {json_values(data)} values"


def model_or_malformed(fn: Callable[[Any], Any], data: Any, model: type) -> Any:
    """Call the converter: a model or `MalformedResponseError` (anything else fails the test), with
    work linear in the input."""
    with count_calls() as calls:
        try:
            result = fn(data)
        except MalformedResponseError as exc:
            result = exc
    assert_linear_work(calls, data)
    if isinstance(result, MalformedResponseError):
        assert len(str(result)) <= 400, "error messages stay short, whatever the input"
    else:
        assert isinstance(result, model)
    return result


class Peak:
    """Peak Python memory allocated inside the block, in bytes (tracemalloc)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __enter__(self) -> Peak:
        tracemalloc.start()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# --- the converter -------------------------------------------------------------------------------


@FUZZ
@given(data=TASKISH)
def test_fuzz_structure_task_gives_a_task_or_malformed(data: Any) -> None:
    result = model_or_malformed(structure_task, data, Task)
    event("a task" if isinstance(result, Task) else "malformed")
    if isinstance(result, Task):
        assert isinstance(result.task_id, str) and result.task_id
        assert isinstance(result.logs, tuple)
        assert result.meta.usage is None or all(
            v is None or isinstance(v, float | int) for v in (result.meta.usage.frozen, result.meta.usage.consume)
        )


@FUZZ
@given(data=ACCOUNTISH)
def test_fuzz_structure_account_gives_info_or_malformed(data: Any) -> None:
    model_or_malformed(structure_account, data, AccountInfo)


WRONG_TYPES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**4000,
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 100,
    "9" * 5000,
    [],
    [1, "a", None],
    {},
    {"a": 1},
    {"task_id": "inner"},
]
FIELDS: list[tuple[str, ...]] = [
    (key,)
    for key in (
        "task_id",
        "model",
        "task_type",
        "status",
        "output",
        "meta",
        "error",
        "logs",
        "config",
        "input",
        "detail",
    )
] + [
    ("output", "image_url"),
    ("output", "video_url"),
    ("meta", "created_at"),
    ("meta", "ended_at"),
    ("meta", "usage"),
    ("meta", "usage", "consume"),
    ("meta", "usage", "frozen"),
    ("meta", "is_using_private_pool"),
    ("error", "code"),
    ("error", "message"),
    ("error", "raw_message"),
    ("config", "service_mode"),
    ("config", "webhook_config"),
    ("config", "webhook_config", "endpoint"),
    ("config", "webhook_config", "secret"),
]
ACCOUNT_FIELDS = [
    "equivalent_in_usd",
    "id",
    "account_id",
    "name",
    "plan",
    "is_enable",
    "max_concurrent_task_count",
]


def valid_task() -> dict[str, Any]:
    return {
        "task_id": "t-1",
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "status": "completed",
        "output": {"image_url": "https://img.example/out.png"},
        "meta": {"created_at": "2024-08-24T14:15:22Z", "usage": {"type": "point", "frozen": 0, "consume": 0.01}},
        "error": {"code": 0, "message": "", "raw_message": ""},
        "logs": [],
        "config": {"service_mode": "public", "webhook_config": {"endpoint": "https://h.example/", "secret": "s"}},
        "input": {},
        "detail": None,
    }


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = valid_task()
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
    return data


@pytest.mark.parametrize("path", FIELDS, ids=".".join)
def test_wrong_type_in_every_task_field(path: tuple[str, ...]) -> None:
    for value in [*WRONG_TYPES, deep_list(50), deep_dict(50, path[-1])]:
        result = model_or_malformed(structure_task, with_value(path, value), Task)
        bookkeeping = path[0] in ("model", "task_type", "meta", "logs", "detail") or (
            path[:1] == ("output",) and len(path) > 1
        )
        if bookkeeping and not isinstance(result, Task):
            # A malformed bookkeeping field never costs the caller a (paid) result.
            pytest.fail(f"{'.'.join(path)}={value!r:.60}: {result}")


@pytest.mark.parametrize("field", ACCOUNT_FIELDS)
def test_wrong_type_in_every_account_field(field: str) -> None:
    base = {"equivalent_in_usd": 5.0, "id": 1, "name": "n", "plan": "creator", "is_enable": True}
    for value in [*WRONG_TYPES, deep_list(50), deep_dict(50)]:
        model_or_malformed(structure_account, {**base, field: value}, AccountInfo)


@pytest.mark.parametrize("path", [*FIELDS, ("unknown_field",)], ids=".".join)
def test_one_megabyte_strings_in_every_field(path: tuple[str, ...]) -> None:
    huge = "\u00e9" * MB  # 1 Mi characters, 2 MB of UTF-8
    data = with_value(path, huge)
    with Peak() as peak:
        result = model_or_malformed(structure_task, data, Task)
    del result
    assert peak.bytes < 16 * MB, f"{peak.bytes / MB:.1f} MB to convert a 1 MB field"


def test_one_megabyte_keys_and_many_keys() -> None:
    many = {f"k{i}": i for i in range(200_000)}
    for data in (
        {**valid_task(), "x" * MB: 1},
        {**valid_task(), **many},
        {**valid_task(), "output": {"image_url": "http://x/y.png", **many}},
        {**valid_task(), "logs": list(range(200_000))},
    ):
        model_or_malformed(structure_task, data, Task)
    model_or_malformed(structure_account, {"x" * MB: "y" * MB, **many}, AccountInfo)


@pytest.mark.parametrize("shape", ["list", "dict"])
@pytest.mark.parametrize("path", [(), *FIELDS], ids=lambda p: ".".join(p) or "top")
def test_ten_thousand_deep_nesting_in_every_field(shape: str, path: tuple[str, ...]) -> None:
    deep = deep_list(DEEP) if shape == "list" else deep_dict(DEEP, path[-1] if path else "task_id")
    data = deep if not path else with_value(path, deep)
    model_or_malformed(structure_task, data, Task)
    model_or_malformed(structure_account, deep if not path else {path[0]: deep}, AccountInfo)


# --- through the wire ----------------------------------------------------------------------------


class Wire:
    """One emulator on a loop in a background thread, so hypothesis examples stay synchronous."""

    def __init__(self, portal: BlockingPortal, emu: Emulator) -> None:
        self.portal = portal
        self.emu = emu

    def get_task(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> Task | BaseException:
        """Script one GET answer, fetch it with a fresh client; the result or the exception (one GET)."""

        async def go() -> Task | BaseException:
            self.emu.faults.clear_scripts()
            self.emu.faults.script("get", status, body, headers or {"Content-Type": "application/octet-stream"})
            gets = self.emu.stats.gets
            async with QubicoClient(KEY, base_url=self.emu.base_url, retry=NO_RETRY) as client:
                with anyio.fail_after(HANG_GUARD):  # a hang fails here, not at the suite's timeout
                    try:
                        result: Task | BaseException = await client.get_task("t-1")
                    except Exception as exc:  # judged by the caller
                        result = exc
            # One GET, answered: no retry, no pause for a hostile Retry-After, no second request.
            assert self.emu.stats.gets == gets + 1
            return result

        return self.portal.call(go)


@pytest.fixture(scope="module")
def wire() -> Iterator[Wire]:
    with start_blocking_portal("asyncio") as portal:
        emu = portal.call(lambda: Emulator(api_key=KEY, processor=identity))
        with portal.wrap_async_context_manager(emu):
            yield Wire(portal, emu)


def envelope(data: Any, code: Any = 200) -> bytes:
    return json.dumps({"code": code, "data": data, "message": "success"}).encode()


WIRE_BODIES = st.one_of(
    TASKISH.map(envelope),
    st.builds(envelope, TASKISH, st.sampled_from([0, 200, 400, 401, 404, 429, 500, 503, 600, -1, "200", None])),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/html", "text/plain", "application/octet-stream"]
)


@WIRE_FUZZ
@given(status=st.sampled_from([200, 201, 202]), body=WIRE_BODIES, content_type=CONTENT_TYPES)
def test_fuzz_get_task_2xx_gives_a_task_or_a_typed_error(
    wire: Wire, status: int, body: bytes, content_type: str
) -> None:
    result = wire.get_task(status, body, {"Content-Type": content_type})
    event(type(result).__name__)
    assert isinstance(result, Task | MalformedResponseError | APIError), repr(result)
    if isinstance(result, Task):
        assert isinstance(repr(result), str)
    else:
        assert KEY not in str(result)


STATUS_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def expected_class(status: int) -> type[APIError]:
    return STATUS_CLASSES.get(status) or (ServerError if status >= 500 else APIError)


def check_api_error(result: Task | BaseException, status: int) -> APIError:
    assert type(result) is expected_class(status), f"{status}: {result!r}"
    assert isinstance(result, APIError)
    assert result.status == status
    assert result.code is None or type(result.code) is int
    assert len(result.message) <= 500, len(result.message)
    assert len(str(result)) <= 600
    assert len(result.body) <= 1000
    assert KEY not in str(result) and KEY not in result.body
    return result


ERROR_BODIES = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=500).map(lambda s: s.encode("utf-8", "surrogatepass")),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"code": JSON, "message": JSON, "error": JSON, "detail": JSON}).map(
        lambda v: json.dumps(v).encode()
    ),
    st.text(max_size=300).map(lambda s: f"<html><title>{s}</title><body>{s * 20}</body></html>".encode()),
)


@WIRE_FUZZ
@given(status=st.integers(400, 599), body=ERROR_BODIES, content_type=CONTENT_TYPES)
def test_fuzz_error_statuses_give_the_right_api_error(wire: Wire, status: int, body: bytes, content_type: str) -> None:
    check_api_error(wire.get_task(status, body, {"Content-Type": content_type}), status)


RETRY_AFTER = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
    st.integers().map(str),
    st.floats().map(str),
    st.builds(
        "{}, {:02d} {} {} {}:{}:{} {}".format,
        st.sampled_from(["Mon", "Fri", "Xyz"]),
        st.integers(0, 99),
        st.sampled_from(["Jan", "Dec", "Foo"]),
        st.integers(-(10**30), 10**30),
        st.integers(-(10**20), 10**20),
        st.integers(0, 99),
        st.integers(0, 99),
        st.sampled_from(["GMT", "+0000", "-9999", "+99999999999999999999", "EST"]),
    ),
)


@WIRE_FUZZ
@given(retry_after=RETRY_AFTER)
def test_fuzz_retry_after_header_on_429(wire: Wire, retry_after: str) -> None:
    headers = {"Content-Type": "application/json", "Retry-After": retry_after.strip() or "x"}
    error = check_api_error(wire.get_task(429, b'{"code": 429, "message": "slow down"}', headers), 429)
    assert isinstance(error, RateLimitError)
    assert error.retry_after is None or 0 <= error.retry_after < float("inf")


@pytest.mark.parametrize(
    "retry_after",
    [
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",  # year beyond a C long
        "Mon, 01 Jan 2020 00:00:00 +9999999999999999999999",  # UTC offset beyond a C int
        "Mon, 01 Jan 99999 00:00:00 GMT",
        "1e400",
        "-5",
        "nan",
    ],
)
def test_hostile_retry_after_dates(wire: Wire, retry_after: str) -> None:
    result = wire.get_task(429, b"{}", {"Content-Type": "application/json", "Retry-After": retry_after})
    error = check_api_error(result, 429)
    assert isinstance(error, RateLimitError)


def test_deeply_nested_bodies_through_the_wire(wire: Wire) -> None:
    for depth in (900, 990, 1000, 5_000, 100_000):
        nested_list = b"[" * depth + b"]" * depth
        nested_dict = b'{"a":' * depth + b"1" + b"}" * depth
        bodies = [
            nested_list,
            nested_dict,
            b'{"code":200,"data":{"task_id":"t-1","logs":' + nested_list + b"}}",
            b'{"code":200,"data":{"task_id":"t-1","error":' + nested_dict + b"}}",
            b'{"code":200,"data":{"task_id":"t-1","output":' + nested_dict + b"}}",
            b'{"code":500,"message":' + nested_list + b"}",
        ]
        for body in bodies:
            result = wire.get_task(200, body)
            assert isinstance(result, Task | MalformedResponseError | APIError), f"{depth}: {result!r}"
            if isinstance(result, Task):
                assert isinstance(repr(result), str)
        for status in (400, 500):
            for body in [
                nested_list,
                nested_dict,
                b'{"message":' + nested_list + b"}",
                b'{"message":' + nested_dict + b"}",
                b'{"message":{"message":' + nested_dict + b"}}",
                b'{"error":' + nested_dict + b"}",
            ]:
                check_api_error(wire.get_task(status, body), status)


def test_huge_bodies_through_the_wire(wire: Wire) -> None:
    one_mb = envelope({"task_id": "t-1", "status": "x" * MB, "detail": "y" * MB, "logs": ["z" * MB]})
    result = wire.get_task(200, one_mb)
    assert isinstance(result, Task) and len(result.status.value) == MB
    over_cap = b'{"code":200,"data":{"task_id":"t-1","detail":"' + b"x" * (9 * MB) + b'"}}'
    result = wire.get_task(200, over_cap)
    assert isinstance(result, MalformedResponseError) and "larger than" in str(result)
    html = b"<html><title>" + b"Bad Gateway " * 1000 + b"</title>" + b"<p>x</p>" * (2 * MB // 8) + b"</html>"
    check_api_error(wire.get_task(502, html), 502)
    check_api_error(wire.get_task(400, b'{"message":"' + b"m" * (2 * MB) + b'"}'), 400)
    # A broken proxy's multi-megabyte error page is still the error its status says it is.
    check_api_error(wire.get_task(502, b"<html>" + b"x" * (9 * MB) + b"</html>"), 502)
    check_api_error(wire.get_task(404, b"n" * (9 * MB)), 404)


# --- the CLI's manifest reader -------------------------------------------------------------------

CELL = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20) | st.sampled_from(
    ["target", "swap", "key", " TARGET ", "http://x/a.png", "data:image/png;base64,AAAA", "/abs/t.jpg", '"', "\x00"]
)
HEADER_CELL = st.sampled_from(["target", "Target", " target ", "swap", "key", "", "tar get"]) | CELL


def _csv_text(header: list[str], rows: list[list[str]], dialect: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, dialect=dialect)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


CSV_TEXT = st.builds(
    _csv_text,
    st.lists(HEADER_CELL, max_size=5),
    st.lists(st.lists(CELL, max_size=6), max_size=8),
    st.sampled_from(["excel", "excel-tab", "unix"]),
)
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"])


def rows_or_invalid(path: Path) -> None:
    with count_calls() as calls:
        try:
            rows: list[tuple[str, str | None, str | None]] | InvalidInputError = read_manifest(path)
        except InvalidInputError as exc:
            rows = exc
    # Bounded work for a file of at most a few KB: per line, never per byte, never a retry loop.
    assert calls.total <= MANIFEST_CALLS, calls
    if isinstance(rows, InvalidInputError):
        assert str(rows)
    else:
        assert rows and all(
            isinstance(t, str) and t and (s is None or isinstance(s, str)) and (k is None or isinstance(k, str))
            for t, s, k in rows
        )


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file, rewritten by every example."""
    return tmp_path_factory.mktemp("manifest") / "jobs.csv"


@FUZZ
@given(raw=st.binary(max_size=2000))
def test_fuzz_manifest_random_bytes(manifest: Path, raw: bytes) -> None:
    manifest.write_bytes(raw)
    rows_or_invalid(manifest)


@FUZZ
@given(text=CSV_TEXT, encoding=ENCODINGS, mangle=st.sampled_from(["", '"', "\r", "\x00", "\ufeff", ",,,"]))
def test_fuzz_manifest_random_csv(manifest: Path, text: str, encoding: str, mangle: str) -> None:
    middle = len(text) // 2
    manifest.write_bytes((text[:middle] + mangle + text[middle:]).encode(encoding, "replace"))
    rows_or_invalid(manifest)


def test_manifest_field_over_csv_limit(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("target\n" + '"' + "a" * (1 << 18) + "\n")  # an unterminated quote, 256 KiB long
    with pytest.raises(InvalidInputError):
        read_manifest(path)


def test_manifest_over_64_mb_is_refused_fast_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    with path.open("wb") as f:
        f.truncate(65 * MB)  # sparse: no disk space used
    with count_calls() as calls, Peak() as peak, pytest.raises(InvalidInputError, match="64 MB"):
        read_manifest(path)
    assert calls.total <= MANIFEST_CALLS  # refused by its size, not parsed
    assert peak.bytes < 4 * MB, f"{peak.bytes / MB:.0f} MB read for a manifest refused by its size"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_manifest_that_never_ends_is_refused(tmp_path: Path) -> None:
    """A `.csv` symlink to /dev/zero (size 0, endless) must not be read to the end of memory.

    Run in a child with a 1 GiB address-space limit, so a regression fails instead of swapping.
    """
    link = tmp_path / "jobs.csv"
    link.symlink_to("/dev/zero")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from pathlib import Path\n"
        "from qubico_async._batch_cli_inputs import read_manifest\n"
        "from qubico_async.errors import InvalidInputError\n"
        "try:\n"
        "    read_manifest(Path(sys.argv[1]))\n"
        "except InvalidInputError as exc:\n"
        "    print('refused:', exc)\n"
    )
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(link)], capture_output=True, text=True, timeout=30, env=env, check=False
    )
    assert done.returncode == 0 and "refused:" in done.stdout, done.stdout + done.stderr


# --- the webhook parser (the cases test_webhooks.py does not fuzz) -------------------------------


def delivery(data: Any) -> dict[str, Any]:
    return {"timestamp": 1724511853, "data": data}


@pytest.mark.parametrize("as_type", [bytes, str])
def test_webhook_ten_megabyte_body_is_refused_unparsed(as_type: type, monkeypatch: pytest.MonkeyPatch) -> None:
    text = json.dumps(delivery({"task_id": "t-1", "detail": "x" * (10 * MB)}))
    body = text.encode() if as_type is bytes else text
    hub = WebhookHub(HOOK_SECRET)
    decoded: list[object] = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **kw: decoded.append(a) or real_loads(*a, **kw))
    with pytest.raises(MalformedWebhookError, match="limit"):
        parse(body)
    with pytest.raises(MalformedWebhookError, match="limit"):
        hub.handle({"x-webhook-secret": HOOK_SECRET}, body)
    assert decoded == []  # refused by its size: the 10 MB were never handed to the JSON decoder
    garbage = b"\xff" * (10 * MB)  # not even UTF-8: refused by size before decoding
    with pytest.raises(MalformedWebhookError, match="limit"):
        parse(garbage)
    assert decoded == []


@pytest.mark.parametrize("shape", ["list", "dict"])
@pytest.mark.parametrize("where", ["data", "output", "error", "logs", "meta", "config", "detail", "timestamp"])
def test_webhook_ten_thousand_deep_decoded_mapping(shape: str, where: str) -> None:
    """A framework that decoded the JSON itself hands `parse` a Mapping: no json.loads depth limit."""
    deep = deep_list(DEEP) if shape == "list" else deep_dict(DEEP, where)
    if where == "data":
        body: dict[str, Any] = delivery(deep)
    elif where == "timestamp":
        body = {"timestamp": deep, "data": {"task_id": "t-1"}}
    else:
        body = delivery({"task_id": "t-1", "status": "completed", where: deep})
    with count_calls() as calls:
        try:
            event = parse(body)
        except MalformedWebhookError:
            event = None
    if event is not None:
        assert isinstance(event, WebhookEvent) and event.task.task_id == "t-1"
    assert_linear_work(calls, body)
