"""The API key and the webhook secret never show up anywhere, even when the server echoes them.

One representative session with unique markers as the key and the secret: submits with a webhook
config (the service echoes `config.webhook_config.secret` back in every task), waits by webhook
and by polling, uploads, downloads, failing requests (401, 400, 429, 500 and non-JSON 200s that
echo the key and the secret, sometimes straddling the SDK's truncation points), transport errors,
`SubmissionUncertainError`s, two `swap_many` runs with a journal file and a budget, and the CLI's
`batch` as a subprocess. Then everything a user, a log shipper or a bug report could see is
scanned: every log record (all loggers, level 1), reprs/strs of the client, tasks, outcomes,
reports and exceptions (their `__dict__`s and cause/context chains, formatted tracebacks), the
journal's raw bytes (and its -wal/-shm/-lock files), report.jsonl and the subprocess's output.
Neither marker may appear, nor any 10-character piece of their random part (a truncated echo).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from qubico_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    FaceSwap,
    InsufficientPlanError,
    Job,
    MalformedResponseError,
    Pacing,
    PollPolicy,
    QubicoClient,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    Task,
    Timeouts,
    TransportError,
    WebhookConfig,
)
from qubico_async.journal import Journal
from qubico_async.testing import Emulator, identity
from qubico_async.webhooks import WebhookHub

from ._helpers import free_port, hub_endpoint, journal_rows
from .test_batch import FACE, png

pytestmark = pytest.mark.anyio

API_KEY = "sk-SECRET-" + uuid.uuid4().hex
HOOK_SECRET = "whsec-SECRET-" + uuid.uuid4().hex
MARKERS = {"api key": API_KEY, "webhook secret": HOOK_SECRET}
WINDOW = 10  # this many characters of a marker's random part is a leak (a truncated echo)
ROOT = Path(__file__).parent.parent


def leaks(text: str) -> list[str]:
    found = []
    for name, marker in MARKERS.items():
        secret_part = marker.split("-SECRET-", 1)[1]
        pieces = {secret_part[i : i + WINDOW] for i in range(len(secret_part) - WINDOW + 1)}
        if marker in text:
            found.append(f"{name} in full")
        elif any(piece in text for piece in pieces):
            found.append(f"part of the {name}")
    return found


def echo(marker: str, at: int = 0, filler: str = "x") -> str:
    """Text with `marker` starting at offset `at` (e.g. just before a cut-off point)."""
    return filler * at + marker + " " + filler * 40


class Seen:
    """Everything rendered during the session, by label, to be scanned at the end."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, label: str, text: str) -> None:
        self.texts.append((label, text))

    def obj(self, label: str, value: object) -> None:
        self.add(f"repr({label})", repr(value))
        self.add(f"str({label})", str(value))
        if isinstance(value, BaseException):
            self.exc(label, value)

    def exc(self, label: str, exc: BaseException) -> None:
        self.add(f"traceback({label})", "".join(traceback.format_exception(exc)))
        seen: set[int] = set()
        todo: list[tuple[str, BaseException]] = [(label, exc)]
        while todo:
            where, current = todo.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            self.add(f"repr({where})", repr(current))
            self.add(f"str({where})", str(current))
            self.add(f"args({where})", repr(current.args))
            for name, value in vars(current).items():
                self.add(f"{where}.{name}", repr(value))
                self.add(f"{where}.{name}", str(value))
                if isinstance(value, BaseException):
                    todo.append((f"{where}.{name}", value))
            for name in ("__cause__", "__context__"):
                linked = getattr(current, name)
                if linked is not None:
                    todo.append((f"{where}.{name}", linked))

    def file(self, path: Path) -> None:
        self.add(f"file {path.name}", path.read_bytes().decode("latin-1"))

    def check(self) -> None:
        assert len(self.texts) > 1000, "the session should have produced plenty to scan"
        problems = [f"{label}: {', '.join(found)}" for label, text in self.texts if (found := leaks(text))]
        assert not problems, "secrets leaked:\n" + "\n".join(problems[:40])


async def expect(seen: Seen, label: str, cls: type[BaseException], coro: Any) -> BaseException:
    with pytest.raises(cls) as info:
        await coro
    seen.obj(label, info.value)
    return info.value


@asynccontextmanager
async def broken_http_server() -> AsyncIterator[str]:
    """Answers every request with invalid HTTP whose bad header line echoes the whole request."""

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            request = b""
            with anyio.move_on_after(0.3):
                while b"\r\n\r\n" not in request:
                    request += await stream.receive()
                head, _, body = request.partition(b"\r\n\r\n")
                found = re.search(rb"(?im)^content-length: *(\d+)", head)
                while found and len(body) < int(found[1]):
                    body += await stream.receive()
            flat = (head + b" | " + body).replace(b"\r\n", b" | ")
            await stream.send(b"HTTP/1.1 200 OK\r\nX-Echo: " + flat + b"\x01\r\nContent-Length: " + flat + b"\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


def api_error(status: int, message: str) -> str:
    return json.dumps({"code": status, "data": None, "message": message})


@pytest.fixture
async def emu_s() -> AsyncIterator[Emulator]:
    async with Emulator(api_key=API_KEY, processor=identity, seed=3) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookHub, str]]:
    """A webhook endpoint on loopback feeding a `WebhookHub` (aiohttp access log left on)."""
    hub = WebhookHub(HOOK_SECRET)
    async with hub_endpoint(hub, access_log=True) as url:
        yield hub, url


def scan_logs(seen: Seen, records: Iterable[logging.LogRecord], text: str) -> None:
    seen.add("caplog.text", text)
    for record in records:
        seen.add(f"log {record.name}", record.getMessage())
        seen.add(f"log args {record.name}", repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            seen.exc(f"log exc {record.name}", record.exc_info[1])


async def test_no_secret_anywhere(
    emu_s: Emulator,
    receiver: tuple[WebhookHub, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(1)  # every record of every logger
    hub, endpoint = receiver
    hook = WebhookConfig(endpoint, HOOK_SECRET)
    seen = Seen()
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    faults = emu_s.faults

    client = QubicoClient(
        API_KEY,
        base_url=emu_s.base_url,
        upload_url=emu_s.upload_url,
        retry=RetryPolicy.instant(max_attempts=2),
        pacing=Pacing.off(),  # its scripted 429s must not pause the rest of the run
        poll=PollPolicy.instant(timeout=10),
        webhooks=hub,
    )
    seen.obj("new client", client)
    async with client:
        seen.obj("open client", client)
        seen.add("vars(client)", repr(vars(client)))

        # -- success paths: the secret is echoed back in every task, and redacted as it arrives ----
        created = await client.submit(FaceSwap(png(1), face), webhook=hook)
        assert created.config.webhook is not None and created.config.webhook.secret == "***"  # echoed
        done = await client.wait(created, via="webhook")
        assert done.config.webhook is not None and done.config.webhook.secret == "***"
        swapped = await client.face_swap(png(2), face, webhook=hook)  # run() waits by webhook
        polled = await client.wait(
            await client.submit(
                {
                    "model": "Qubico/image-toolkit",
                    "task_type": "face-swap",
                    "input": {"target_image": emu_s.host_file(png(3)), "swap_image": emu_s.host_file(FACE)},
                    "config": {"webhook_config": {"endpoint": endpoint, "secret": HOOK_SECRET}},
                }
            )
        )
        fetched = await client.get_task(done.task_id)
        for label, task in (
            ("created", created),
            ("done", done),
            ("swapped", swapped),
            ("polled", polled),
            ("fetched", fetched),
        ):
            seen.obj(f"task {label}", task)
            seen.obj(f"task {label}.config", task.config)
            seen.obj(f"task {label}.config.webhook", task.config.webhook)
        url = await client.upload(png(4))
        seen.add("upload url", url)
        saved = await client.download(done, tmp_path / "dl")
        seen.obj("downloaded path", saved)
        seen.obj("account", await client.account_info())
        seen.obj("hub", hub)

        # -- error statuses that echo the key and the secret --------------------------------------
        cuts = (0, 54, 174, 274, 474, 974, 4070)  # the marker straddles 80/200/300/500/1000/4096
        for at in cuts:
            for marker in (API_KEY, HOOK_SECRET):
                faults.script("get", 401, api_error(401, echo(marker, at)))
                await expect(seen, f"401 echo at {at}", AuthenticationError, client.get_task(done.task_id))
                faults.script("get", 500, echo(marker, at), {"Content-Type": "text/plain"})
                faults.script("get", 500, echo(marker, at), {"Content-Type": "text/plain"})
                await expect(seen, f"500 text at {at}", ServerError, client.get_task(done.task_id))
                page = f"<html><title>{echo(marker, at)}</title><body>{marker}</body></html>"
                faults.script("get", 502, page)
                faults.script("get", 502, page)
                await expect(seen, f"502 html at {at}", ServerError, client.get_task(done.task_id))
                faults.script("get", 200, echo(marker, at), {"Content-Type": "text/plain"})
                faults.script("get", 200, echo(marker, at), {"Content-Type": "text/plain"})
                await expect(seen, f"200 not json at {at}", MalformedResponseError, client.get_task(done.task_id))
                faults.script("get", 200, json.dumps({"code": 403, "message": echo(marker, at)}))
                await expect(seen, f"2xx error envelope at {at}", APIError, client.get_task(done.task_id))
                faults.script("get", 200, json.dumps({"code": 200, "data": {"task_id": echo(marker, at), "status": 7}}))
                await expect(seen, f"malformed task at {at}", MalformedResponseError, client.get_task("t"))
        echoed_request = json.dumps(
            {
                "code": 400,
                "message": "invalid config",
                "data": {"config": {"webhook_config": hook_dict(endpoint)}},
                "detail": {"x-api-key": API_KEY},
            }
        )
        faults.script("create", 400, echoed_request)
        await expect(
            seen, "400 echoing the request", BadRequestError, client.submit(FaceSwap(png(5), face), webhook=hook)
        )
        faults.script("create", 429, api_error(429, f"slow down {API_KEY}"), {"Retry-After": "0"})
        faults.script("create", 429, api_error(429, f"slow down {HOOK_SECRET}"), {"Retry-After": "0"})
        await expect(seen, "429", RateLimitError, client.submit(FaceSwap(png(6), face), webhook=hook))
        faults.script("create", 500, api_error(500, f"boom for key {API_KEY} hook {HOOK_SECRET}"))
        await expect(
            seen, "500 on create", SubmissionUncertainError, client.submit(FaceSwap(png(7), face), webhook=hook)
        )
        faults.script("create", 200, f"<pre>{API_KEY} {HOOK_SECRET}</pre>", {"Content-Type": "text/html"})
        await expect(
            seen, "200 html on create", SubmissionUncertainError, client.submit(FaceSwap(png(8), face), webhook=hook)
        )
        faults.script("upload", 403, api_error(403, f"Insufficient plan level for {API_KEY}"))
        await expect(seen, "upload 403", InsufficientPlanError, client.upload(png(9)))

        # -- transport errors and uncertain creates -----------------------------------------------
        faults.create_then_drop = 1
        await expect(
            seen, "dropped create", SubmissionUncertainError, client.submit(FaceSwap(png(10), face), webhook=hook)
        )
        async with QubicoClient(
            API_KEY, base_url=emu_s.base_url, retry=RetryPolicy.none(), timeout=Timeouts(read=0.1)
        ) as impatient:
            faults.create_then_stall, faults.stall_seconds = 1, 0.3
            await expect(
                seen,
                "stalled create",
                SubmissionUncertainError,
                impatient.submit(FaceSwap(png(11), face), webhook=hook),
            )
        async with QubicoClient(
            API_KEY, base_url=f"http://127.0.0.1:{free_port()}", retry=RetryPolicy.none()
        ) as nowhere:
            await expect(seen, "refused get", TransportError, nowhere.get_task("t-1"))
            await expect(seen, "refused create", TransportError, nowhere.submit(FaceSwap(png(12), face), webhook=hook))
            seen.obj("client to nowhere", nowhere)
        async with broken_http_server() as broken_url:
            async with QubicoClient(API_KEY, base_url=broken_url, retry=RetryPolicy.none()) as broken:
                await expect(seen, "broken http get", TransportError, broken.get_task("t-1"))
                await expect(
                    seen,
                    "broken http create",
                    SubmissionUncertainError,
                    broken.submit(FaceSwap(png(13), face), webhook=hook),
                )
        async with Emulator(api_key="another-key", processor=identity) as other:
            async with QubicoClient(API_KEY, base_url=other.base_url, retry=RetryPolicy.none()) as wrong:
                await expect(seen, "real 401", AuthenticationError, wrong.get_task("t-1"))

        # -- swap_many with a journal and a budget, then a resumed run that hits a 401 -----------------
        journal = tmp_path / "run.sqlite"
        jobs = [Job(FaceSwap(png(100 + i), face, webhook=hook), key=f"job-{i}") for i in range(8)]
        faults.script("create", 500, api_error(500, f"echo {API_KEY} {HOOK_SECRET}"))
        faults.script("create", 400, api_error(400, f"bad webhook_config.secret={HOOK_SECRET}"))
        async with client.swap_many(jobs, concurrency=2, journal=journal, budget_usd=0.055) as batch:
            outcomes = [o async for o in batch]
        statuses = sorted(o.status for o in outcomes)
        assert "uncertain" in statuses and "failed" in statuses and "skipped" in statuses, statuses
        faults.script("create", 401, api_error(401, f"Invalid API key {API_KEY}"))
        async with client.swap_many(jobs, concurrency=1, journal=journal, budget_usd=1) as batch2:
            outcomes += [o async for o in batch2]
        assert any("account error" in o.reason for o in outcomes)
        for i, outcome in enumerate(outcomes):
            seen.obj(f"outcome {i}", outcome)
            seen.add(f"outcome {i} reason", outcome.reason)
            if outcome.error is not None:
                seen.exc(f"outcome {i} error", outcome.error)
        seen.obj("report", batch.report)
        seen.obj("report 2", batch2.report)
        async with await Journal.open(journal) as reopened:
            rows = journal_rows(journal)
            assert rows  # the rows rendered below are the run's, not an empty file
            seen.add("journal rows", repr(rows))
            seen.add("journal entries", repr([await reopened.get(key) for key in rows]))
            seen.obj("journal", reopened)
        seen.obj("closing client", client)
    seen.obj("closed client", client)
    for path in sorted(tmp_path.glob("run.sqlite*")):
        seen.file(path)

    # -- the CLI, as a subprocess, with a 500 and a 429 echoing the key ----------------------------
    targets = tmp_path / "targets"
    targets.mkdir()
    for i in range(5):
        (targets / f"t{i}.png").write_bytes(png(200 + i))
    out = tmp_path / "out"
    faults.script("create", 500, api_error(500, f"echo {API_KEY}"))
    faults.script("get", 429, api_error(429, f"echo {API_KEY}"), {"Retry-After": "0"})
    env = {k: v for k, v in os.environ.items() if k not in ("QUBICO_API_KEY", "PIAPI_API_KEY")}
    env.update(QUBICO_API_KEY=API_KEY, QUBICO_BASE_URL=emu_s.base_url, PYTHONPATH=str(ROOT))
    args = ["-v", "batch", "--swap", str(face), "--targets", str(targets), "--out", str(out), "--budget", "0.035"]
    cli = await anyio.run_process([sys.executable, "-m", "qubico_async", *args], env=env, check=False)
    output = (cli.stdout + cli.stderr).decode()
    assert "5 jobs" in output and "uncertain" in output, output
    assert "DEBUG" in output  # -v really logged at DEBUG
    seen.add("cli output", output)
    for path in sorted(out.iterdir()):
        if path.is_file():
            seen.file(path)
    assert (out / "report.jsonl").exists() and any(p.name.startswith(".qubico-journal") for p in out.iterdir())

    scan_logs(seen, caplog.records, caplog.text)
    assert any(r.name == "qubico_async" for r in caplog.records)
    seen.check()


def hook_dict(endpoint: str) -> dict[str, Any]:
    return {"endpoint": endpoint, "secret": HOOK_SECRET}


def test_leak_detector_sees_truncated_echoes() -> None:
    assert leaks(f"... {API_KEY}") == ["api key in full"]
    assert leaks(API_KEY[:24]) == ["part of the api key"]
    assert leaks(HOOK_SECRET[-12:]) == ["part of the webhook secret"]
    assert leaks("sk-SECRET-*** and the task id " + str(uuid.uuid4())) == []
    assert isinstance(Task(task_id="t"), Task)
