"""The emulator: aiohttp web servers on 127.0.0.1 that speak PiAPI's task and upload APIs.

This is its configuration, lifecycle and public surface. What each route answers is in `_routes`
(mixed in); requests go through the pipeline (`_pipeline`); tasks move along the clock
(`_processing`, and the `_ticker` for tasks with a webhook, which `_webhooks` delivers).
"""

from __future__ import annotations

import collections
import logging
import random
import types
import uuid
from collections.abc import Mapping, Sequence

import anyio
from aiohttp import web

from ._engine import EngineName, ProcessorChoice, engine_status, resolve
from ._faults import Faults
from ._inputs import own_path
from ._pipeline import Pipeline
from ._processing import TaskRunner
from ._routes import OverLimit, Routes, TaskTransform
from ._state import Clock, FileStore, Stats, StoredTask, TaskStore
from ._ticker import Ticker
from ._uploads import sniff
from ._webhooks import WebhookDelivery, WebhookDispatcher
from ._wire import DEFAULT_FAILURE_MESSAGE, task_to_wire
from ._wireshape import WireName

__all__ = ["Emulator"]

logger = logging.getLogger("qubico_async.testing")


class Emulator(Routes):
    """In-process fake of PiAPI's Qubico face-swap API, for tests, demos and benchmarks.

    ```python
    async with Emulator(api_key="emu-key") as emu:
        client = QubicoClient(emu.api_key, base_url=emu.base_url)
        ...
        emu.advance(5)          # move the emulator clock instead of sleeping
    ```

    Tasks stay `pending` for `pending_seconds`, `processing` for `processing_seconds`, then end
    `completed` (result = `processor`'s output) or `failed` (drawn at create with probability
    `failure_rate`, seeded by `seed`, or forced with `fail_next()`).

    `processor="auto"` (the default) swaps faces with the OpenCV engine when the `faces` extra is
    installed (`engine == "opencv"`), else returns the target unchanged (`"identity"`, logged as a
    WARNING at start). `processor=identity` (or None) always takes that fast path; a callable is
    run in worker threads, at most `max_workers` at a time. The upload API listens on its own port
    (`upload_port`, 0 = any free one): `upload_url`.

    The account's concurrency limit (`max_concurrent_task_count`, reported in /account/info) is
    enforced only when `over_limit` is set. A task holds a slot from create until it is completed
    or failed. `"reject"`: a create with every slot held is answered HTTP 429 (`Retry-After: 1`,
    envelope code 429) and stores no task. `"queue"`: the task is stored `pending` and starts, in
    creation order, when a slot frees (at the clock reading it freed). `stats.processing` and
    `stats.max_processing` count the tasks holding a slot, in every mode.
    """

    def __init__(
        self,
        *,
        api_key: str = "emu-key",
        host: str = "127.0.0.1",
        port: int = 0,
        upload_port: int = 0,
        pending_seconds: float = 0.0,
        processing_seconds: float = 0.0,
        failure_rate: float = 0.0,
        failure_message: str = DEFAULT_FAILURE_MESSAGE,
        seed: int = 0,
        faults: Faults | None = None,
        processor: ProcessorChoice = "auto",
        max_workers: int = 4,
        task_transform: TaskTransform | None = None,
        max_concurrent_task_count: int = 10,
        max_image_toolkit_concurrency: int | None = None,
        balance_usd: float = 1000.0,
        wire: WireName = "realistic",
        over_limit: OverLimit | None = None,
    ) -> None:
        if over_limit not in (None, "queue", "reject"):
            raise ValueError(f'over_limit must be None, "queue" or "reject", got {over_limit!r}')
        if over_limit is not None and max_concurrent_task_count < 1:
            raise ValueError(f"max_concurrent_task_count must be at least 1, got {max_concurrent_task_count!r}")
        if pending_seconds < 0 or processing_seconds < 0:
            raise ValueError("pending_seconds and processing_seconds must not be negative")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate!r}")
        if wire not in ("realistic", "plain"):
            raise ValueError(f'wire must be "realistic" or "plain", got {wire!r}')
        self._seed = seed
        self.wire: WireName = wire
        """"realistic" (each task in one of the shapes of real responses) or "plain" (one clean shape)."""
        self._api_key = api_key
        self._host = host
        self._port = port
        self._upload_port = upload_port
        self.pending_seconds = pending_seconds
        self.processing_seconds = processing_seconds
        self.failure_rate = failure_rate
        self.failure_message = failure_message
        self.faults = faults if faults is not None else Faults()
        self.task_transform = task_transform
        """Applied to every task dict just before it is sent by create and get."""
        self.max_concurrent_task_count = max_concurrent_task_count
        self._over_limit: OverLimit | None = over_limit
        self.max_image_toolkit_concurrency = max_image_toolkit_concurrency
        """Sent in /account/info when set; with the realistic wire it defaults to max_concurrent_task_count."""
        self.balance_usd = balance_usd
        """The account's credit in USD (points at the guessed POINTS_PER_USD). A create whose price
        it cannot cover (after what completed tasks consumed and running ones froze) is refused
        the way the service refuses it: HTTP 200, envelope code 500, a failed task."""

        self._failure_rng = random.Random(seed)
        self._forced_failures: collections.deque[str] = collections.deque()
        self._clock = Clock()
        self._stats = Stats()
        self._store = TaskStore(self._stats)
        self._store.on_change = self._task_changed
        self._files = FileStore(self._clock)
        self._http = Pipeline(
            api_key=api_key, stats=self._stats, clock=self._clock, faults=lambda: self.faults, seed=seed
        )
        self._auto = processor == "auto"
        resolved, self._engine = resolve(processor)
        self._tasks = TaskRunner(
            store=self._store,
            files=self._files,
            clock=self._clock,
            processor=resolved,
            max_workers=max_workers,
            is_own_url=self._own_path,
            stats=self._stats,
            queue_slots=max_concurrent_task_count if over_limit == "queue" else None,
        )
        self._ticker = Ticker(runner=self._tasks, clock=self._clock)
        self._webhooks = WebhookDispatcher(
            stats=self._stats, faults=lambda: self.faults.webhooks, rng=random.Random(f"webhooks:{seed}")
        )
        self._runner: web.AppRunner | None = None
        self._upload_runner: web.AppRunner | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving. The port is chosen by the OS unless one was given."""
        if self._runner is not None or self._closed:
            raise RuntimeError("an Emulator can be started only once")
        self._http.open()
        try:
            self._runner = await self._serve(self._build_app(), self._port)
            self._port = int(self._runner.addresses[0][1])
            self._upload_runner = await self._serve(self._build_upload_app(), self._upload_port)
            self._upload_port = int(self._upload_runner.addresses[0][1])
            await self._webhooks.start()
        except BaseException:
            await self.aclose()
            raise
        self._ticker.start()
        if self._auto and self._engine == "identity":
            logger.warning("emulator: %s", engine_status())

    async def _serve(self, app: web.Application, port: int) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def aclose(self) -> None:
        """Stop serving: stalled requests are dropped; processor jobs, webhook deliveries and the
        ticker are cancelled. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._http.close()
        with anyio.CancelScope(shield=True):  # finish cleaning up even when the caller is cancelled
            await self._ticker.aclose()
            await self._webhooks.aclose()
            await self._tasks.aclose()
            runners = (self._upload_runner, self._runner)
            self._upload_runner = self._runner = None
            for runner in runners:
                if runner is not None:
                    await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- public surface --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`, once started."""
        return self._url(self._port, self._runner)

    def _url(self, port: int, runner: web.AppRunner | None) -> str:
        if runner is None:
            raise RuntimeError("the emulator is not running: use `async with Emulator()` or `await start()`")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{port}"

    @property
    def upload_url(self) -> str:
        """Base URL of the upload API (`http://127.0.0.1:<upload port>`), once started."""
        return self._url(self._upload_port, self._upload_runner)

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def port(self) -> int:
        return self._port

    @property
    def upload_port(self) -> int:
        return self._upload_port

    @property
    def over_limit(self) -> OverLimit | None:
        """How the concurrency limit is enforced: "queue", "reject", or None (not enforced)."""
        return self._over_limit

    @property
    def engine(self) -> EngineName:
        """What makes results: "opencv" (the face-swap engine), "identity" (the target unchanged)
        or "custom" (a processor passed in)."""
        return self._engine

    @property
    def deliveries(self) -> Sequence[WebhookDelivery]:
        """Every webhook POST made so far, in order: (endpoint, status_code or None, status)."""
        return self._webhooks.deliveries

    @property
    def stats(self) -> Stats:
        """Live counters (`tasks_by_status` is brought up to date with the clock on access)."""
        self._tasks.refresh_all()
        return self._stats

    @property
    def tasks(self) -> Mapping[str, StoredTask]:
        """Read-only view of the stored tasks by id, statuses up to date with the clock."""
        self._tasks.refresh_all()
        return types.MappingProxyType(self._store.view())

    def now(self) -> float:
        """The emulator clock (monotonic seconds plus everything passed to `advance`)."""
        return self._clock.now()

    def advance(self, seconds: float) -> None:
        """Move the emulator clock forward, so tasks progress without anyone sleeping (tasks with a
        webhook are moved along, and delivered, by the ticker right away)."""
        self._clock.advance(seconds)
        self._ticker.wake()

    def fail_next(self, n: int = 1, message: str = DEFAULT_FAILURE_MESSAGE) -> None:
        """Make the next `n` created tasks end `failed` with `message`."""
        if n < 0:
            raise ValueError(f"n must not be negative, got {n!r}")
        self._forced_failures.extend([message] * n)

    def host_file(self, data: bytes, name: str | None = None, content_type: str | None = None) -> str:
        """Serve `data` at `/files/<name>` and return its URL, for URL inputs in tests."""
        guessed_ext, guessed_type = sniff(data)
        name = name or f"{uuid.uuid4().hex}.{guessed_ext}"
        if "/" in name:
            raise ValueError(f"file name must not contain '/': {name!r}")
        self._files.put(f"/files/{name}", data, content_type or guessed_type)
        return f"{self.base_url}/files/{name}"

    async def drain(self) -> None:
        """Wait for processor jobs already running (a plugged-in processor runs in threads), then
        for queued webhook deliveries (retries included; held out-of-order ones excepted)."""
        await self._tasks.drain()
        await self._webhooks.drain()

    # -- helpers ---------------------------------------------------------------------------------

    def _own_path(self, url: str) -> str | None:
        return own_path(url, (self._port, self._upload_port), frozenset({self._host.lower()}))

    def _task_changed(self, task: StoredTask) -> None:
        """Called on every status change of a task (its creation included): a task whose
        `config.webhook_config.endpoint` is set is watched by the ticker, and delivered
        `{"timestamp": <unix s>, "data": <the task as GET returns it>}` when created and when it ends."""
        if task.is_terminal and self._tasks.queued:
            self._ticker.wake()  # a slot may have freed for a waiting task with a webhook
        hook = task.config.get("webhook_config") or {}
        endpoint = hook.get("endpoint") or ""
        created = task.status == "pending"
        if not endpoint or self._closed or not (created or task.is_terminal):
            return
        if created:
            self._ticker.watch(task)
        data = task_to_wire(task, self.base_url, self._clock)
        if self.task_transform is not None:
            data = self.task_transform(data)
        payload = {"timestamp": int(self._clock.wall(self._clock.now())), "data": data}
        self._webhooks.deliver(endpoint, hook.get("secret") or "", payload, terminal=task.is_terminal)
