"""The batch engine behind `QubicoClient.swap_many`.

One supervisor task owns everything: the job feeder, one task per job in flight (each run by
`_batch_job.JobRunner`), the journal. The consumer reads outcomes from a stream, in input order
with `ordered=True`. Breaking out of the loop or cancelling the consumer cancels the supervisor,
which stops submitting, gives creates already on the wire a short grace to record their task
ids, and closes the journal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._batch_job import BatchServices, JobRunner, _Job
from ._budget import Budget
from ._pollsched import PollScheduler
from ._uploads import UploadPolicy
from .batch import BatchReport, Job, JobLike, Outcome, OutcomeStatus, Prices, Progress
from .errors import InvalidInputError, JournalError, QubicoError
from .journal import Journal
from .polling import PollPolicy

__all__ = ["DEFAULT_CONCURRENCY", "BatchRun", "BatchServices"]

logger = logging.getLogger("qubico_async")

DEFAULT_CONCURRENCY = 8
"""Tasks in flight when the account does not report `max_concurrent_task_count`."""
_OUTCOME_BUFFER = 64


class BatchRun:
    """An async iterator of `Outcome`s (use `async with` for deterministic cleanup); `.report` at the end."""

    def __init__(
        self,
        client: BatchServices,
        jobs: Iterable[JobLike] | AsyncIterable[JobLike],
        *,
        concurrency: int | None,
        journal: str | None,
        budget_usd: float | None,
        ordered: bool,
        on_progress: Callable[[Progress], None] | None,
        upload: UploadPolicy,
        resubmit_uncertain: bool,
        prices: Prices,
        poll: PollPolicy | None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise InvalidInputError("concurrency must be at least 1")
        if budget_usd is not None and budget_usd < 0:
            raise InvalidInputError("budget_usd must not be negative")
        self._client = client
        self._jobs = jobs
        self._concurrency = concurrency
        self._journal_path = journal
        self._ordered = ordered
        self._on_progress = on_progress
        self._runner = JobRunner(
            client,
            prices=prices,
            budget=Budget(budget_usd),
            scheduler=PollScheduler(poll or client.poll),
            upload=upload,
            resubmit_uncertain=resubmit_uncertain,
        )
        self._total = len(jobs) if hasattr(jobs, "__len__") else None  # type: ignore[arg-type]
        self._supervisor: asyncio.Task[None] | None = None
        self._started = False
        self.report: BatchReport | None = None
        # live counters
        self._counts: dict[OutcomeStatus, int] = {"succeeded": 0, "failed": 0, "uncertain": 0, "skipped": 0}
        self._in_flight = 0
        self._t0 = time.monotonic()
        self._requests_at_start: dict[str, int] = {}
        self._next_to_yield = 0
        self._advanced = anyio.Event()
        self._window = 0

    # -- consumer side --------------------------------------------------------------------------

    async def __aenter__(self) -> BatchRun:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Outcome]:
        if self._started:
            raise RuntimeError("a batch can be iterated only once")
        self._started = True
        return self._iterate()

    async def aclose(self) -> None:
        """Stop submitting, cancel polling, close the journal. Safe to call more than once."""
        await self._join(cancel=True)

    async def _join(self, *, cancel: bool) -> None:
        supervisor = self._supervisor
        if supervisor is None:
            return
        with anyio.CancelScope(shield=True):
            if cancel and not supervisor.done():
                self._runner.close_soon()
                supervisor.cancel()
            await asyncio.wait([supervisor])
        if self.report is None:  # cancelled before the supervisor ever ran
            self._finish_report()

    async def _iterate(self) -> AsyncIterator[Outcome]:
        self._t0 = time.monotonic()
        self._requests_at_start = dict(self._client.requests_sent())
        journal = await self._open_journal()  # before anything is submitted: a bad journal fails here
        send, receive = anyio.create_memory_object_stream[Outcome](max_buffer_size=_OUTCOME_BUFFER)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(send, journal))
        pending: dict[int, Outcome] = {}
        finished = False
        try:
            async with receive:
                async for outcome in receive:
                    if not self._ordered:
                        yield outcome
                        continue
                    pending[outcome.index] = outcome
                    while self._next_to_yield in pending:
                        ready = pending.pop(self._next_to_yield)
                        self._next_to_yield += 1
                        self._advanced.set()
                        yield ready
            finished = True
        finally:
            # Ran to the end: let the supervisor finish its bookkeeping. Left early: stop it.
            await self._join(cancel=not finished)
            send.close()  # the supervisor closes it, unless it was cancelled before it started
        supervisor = self._supervisor
        if not supervisor.cancelled() and supervisor.exception() is not None:
            raise supervisor.exception()  # type: ignore[misc]
        if self._runner.journal_error is not None:
            raise self._runner.journal_error

    async def _open_journal(self) -> Journal | None:
        if self._journal_path is None:
            return None
        try:
            journal = await Journal.open(self._journal_path)
            try:
                self._runner.budget.hold(await journal.total_spend())  # the budget belongs to the journal
            except BaseException:
                await journal.aclose()
                raise
        except BaseException:
            self._finish_report()
            raise
        return journal

    # -- supervisor ---------------------------------------------------------------------------

    async def _supervise(self, send: MemoryObjectSendStream[Outcome], journal: Journal | None) -> None:
        try:
            async with send:
                concurrency = self._concurrency or await self._default_concurrency()
                self._window = max(4 * concurrency, 64)
                slots = anyio.Semaphore(concurrency)
                async with anyio.create_task_group() as tg:
                    await self._feed(tg, slots, send, journal)
        finally:
            with anyio.CancelScope(shield=True):
                if journal is not None:
                    try:
                        await journal.aclose()
                    except JournalError as exc:
                        self._runner.journal_failed(exc)
                self._finish_report()

    async def _default_concurrency(self) -> int:
        try:
            info = await self._client.account_info()
        except QubicoError as exc:
            self._runner.stop_if_account_error(exc)
            return DEFAULT_CONCURRENCY
        return info.max_image_toolkit_concurrency or info.max_concurrent_task_count or DEFAULT_CONCURRENCY

    async def _feed(
        self,
        tg: TaskGroup,
        slots: anyio.Semaphore,
        send: MemoryObjectSendStream[Outcome],
        journal: Journal | None,
    ) -> None:
        index = 0
        async for raw in _aiter(self._jobs):
            try:
                job = raw if isinstance(raw, Job) else Job(raw)
            except InvalidInputError as exc:
                raise InvalidInputError(f"job {index}: {exc}") from None
            queued = time.time()
            if self.stopped_reason is not None:
                skipped = Outcome(job, job.key or "", index, "skipped", reason=self.stopped_reason)
                await self._emit(send, skipped)
                index += 1
                continue
            while self._ordered and index - self._next_to_yield >= self._window:
                self._advanced = anyio.Event()
                await self._advanced.wait()
            await slots.acquire()
            self._in_flight += 1
            tg.start_soon(self._run_job, job, index, queued, slots, send, journal)
            index += 1

    # -- one job --------------------------------------------------------------------------------

    async def _run_job(
        self,
        job: Job,
        index: int,
        queued: float,
        slots: anyio.Semaphore,
        send: MemoryObjectSendStream[Outcome],
        journal: Journal | None,
    ) -> None:
        try:
            outcome = await self._runner.run(_Job(job, index, queued), journal)
            self._in_flight -= 1
            await self._emit(send, outcome)  # a slow consumer holds the slot: backpressure
        finally:
            slots.release()

    # -- bookkeeping ----------------------------------------------------------------------------

    @property
    def stopped_reason(self) -> str | None:
        """Why the batch stopped submitting (budget, account error, journal), or None."""
        return self._runner.stopped_reason

    async def _emit(self, send: MemoryObjectSendStream[Outcome], outcome: Outcome) -> None:
        self._counts[outcome.status] += 1
        snapshot = self.progress()  # taken now: another job may finish while this one is being sent
        try:
            await send.send(outcome)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The consumer left (break, cancel) before this job's outcome: nobody can take it (the
            # journal has it). Raising would fail the supervisor with an error nobody retrieves.
            return
        if self._on_progress is not None:
            try:
                self._on_progress(snapshot)
            except Exception:
                logger.exception("on_progress callback failed (ignored)")

    def progress(self) -> Progress:
        return Progress(
            total=self._total,
            done=sum(self._counts.values()),
            succeeded=self._counts["succeeded"],
            failed=self._counts["failed"],
            uncertain=self._counts["uncertain"],
            skipped=self._counts["skipped"],
            in_flight=self._in_flight,
            spend_usd=round(self._runner.budget.spent, 6),
            elapsed=time.monotonic() - self._t0,
        )

    def _finish_report(self) -> None:
        now = self._client.requests_sent()
        sent = {k: v - self._requests_at_start.get(k, 0) for k, v in now.items()}
        self.report = BatchReport(
            counts={str(k): v for k, v in self._counts.items()},
            spend_usd=round(self._runner.budget.spent, 6),
            requests=sent,
            wall_time=time.monotonic() - self._t0,
            stopped_reason=self.stopped_reason,
            usage=dict(self._runner.usage),
        )


async def _aiter(jobs: Iterable[JobLike] | AsyncIterable[JobLike]) -> AsyncIterator[JobLike]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job
