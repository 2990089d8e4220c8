"""The batch engine behind `QubicoClient.swap_many`.

One supervisor task owns everything: the job feeder, one task per job in flight, the journal.
The consumer reads outcomes from a stream. Breaking out of the loop or cancelling the consumer
cancels the supervisor, which stops submitting, lets creates already on the wire finish and
record their task ids, and closes the journal. A job's journal row is written before its create
and updated right after, so a rerun never pays twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._convert import structure_task
from ._pollsched import PollScheduler
from ._webhook_hub import TRANSIENT_POLL_ERRORS
from .batch import BatchReport, Job, Outcome, OutcomeStatus, Prices, Progress
from .errors import (
    APIError,
    AuthenticationError,
    InvalidInputError,
    PermissionDeniedError,
    QubicoError,
    SubmissionUncertainError,
    WaitTimeoutError,
)
from .journal import Journal
from .models import AccountInfo, Task
from .polling import PollPolicy
from .requests import Prepared

__all__ = ["DEFAULT_CONCURRENCY", "BatchRun"]

logger = logging.getLogger("qubico_async")

DEFAULT_CONCURRENCY = 8
"""Tasks in flight when the account does not report `max_concurrent_task_count`."""
_OUTCOME_BUFFER = 64


class BatchClient(Protocol):
    """What the engine needs from the client (the client is never imported here)."""

    poll: PollPolicy

    async def _prepare(self, request: object, upload: Any) -> Prepared: ...
    async def _create(self, prepared: Prepared, *, resubmit_uncertain: bool = False) -> Task: ...
    async def get_task(self, task_id: str) -> Task: ...
    async def account_info(self) -> AccountInfo: ...
    def _requests_sent(self) -> dict[str, int]: ...


def _is_account_error(exc: BaseException) -> bool:
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return True
    return isinstance(exc, APIError) and exc.status == 402


def _task_record(task: Task) -> dict[str, Any]:
    """What the journal keeps of a finished task: enough to replay it, no config (secrets)."""
    usage = task.meta.usage
    return {
        "task_id": task.task_id,
        "model": task.model,
        "task_type": task.task_type,
        "status": task.status.value,
        "output": None
        if task.output is None
        else {"image_url": task.output.image_url, "video_url": task.output.video_url},
        "error": None if task.error is None else {"code": task.error.code, "message": task.error.message},
        "meta": {"usage": None if usage is None else {"consume": usage.consume}},
    }


class BatchRun:
    """An async iterator of `Outcome`s (use `async with` for deterministic cleanup); `.report` at the end."""

    def __init__(
        self,
        client: BatchClient,
        jobs: Iterable[object] | AsyncIterable[object],
        *,
        concurrency: int | None,
        journal: str | None,
        budget_usd: float | None,
        ordered: bool,
        on_progress: Callable[[Progress], None] | None,
        upload: Any,
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
        self._budget = budget_usd
        self._ordered = ordered
        self._on_progress = on_progress
        self._upload = upload
        self._resubmit = resubmit_uncertain
        self._prices = prices
        self._scheduler = PollScheduler(poll or client.poll)
        self._total = len(jobs) if hasattr(jobs, "__len__") else None  # type: ignore[arg-type]
        self._supervisor: asyncio.Task[None] | None = None
        self._started = False
        self.report: BatchReport | None = None
        self.stopped_reason: str | None = None
        # live counters
        self._counts: dict[OutcomeStatus, int] = {"succeeded": 0, "failed": 0, "uncertain": 0, "skipped": 0}
        self._in_flight = 0
        self._spent = 0.0
        self._reserved = 0.0
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
                supervisor.cancel()
            await asyncio.wait([supervisor])
        if self.report is None:  # cancelled before the supervisor ever ran
            self._finish_report()

    async def _iterate(self) -> AsyncIterator[Outcome]:
        send, receive = anyio.create_memory_object_stream[Outcome](max_buffer_size=_OUTCOME_BUFFER)
        self._t0 = time.monotonic()
        self._requests_at_start = dict(self._client._requests_sent())
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(send))
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

    # -- supervisor ---------------------------------------------------------------------------

    async def _supervise(self, send: MemoryObjectSendStream[Outcome]) -> None:
        journal = await Journal.open(self._journal_path) if self._journal_path is not None else None
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
                    await journal.aclose()
                self._finish_report()

    async def _default_concurrency(self) -> int:
        try:
            info = await self._client.account_info()
        except QubicoError as exc:
            if _is_account_error(exc):
                self._stop(f"account error: {exc}")
            return DEFAULT_CONCURRENCY
        return info.max_concurrent_task_count or DEFAULT_CONCURRENCY

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
            outcome = await self._job_outcome(job, index, queued, journal)
            self._in_flight -= 1
            await self._emit(send, outcome)  # a slow consumer holds the slot: backpressure
        finally:
            slots.release()

    async def _job_outcome(self, job: Job, index: int, queued: float, journal: Journal | None) -> Outcome:
        def done(status: OutcomeStatus, **kw: Any) -> Outcome:
            return Outcome(job, key, index, status, queued_at=queued, finished_at=time.time(), **kw)

        key = job.key or ""
        try:
            prepared = await self._client._prepare(job.request, self._upload)
        except QubicoError as exc:  # bad input, or an upload that failed: nothing was paid
            if _is_account_error(exc):
                self._stop(f"account error: {exc}")
            return done("failed", error=exc, reason=str(exc))
        key = job.key or prepared.identity
        entry = await journal.get(key) if journal is not None else None
        task: Task | None = None
        submitted_at: float | None = None
        started: float | None = None  # monotonic submit time, for learning durations
        estimate = self._prices.estimate(prepared.request, prepared.frames)
        if entry is not None and entry.fingerprint != prepared.identity:
            reason = (
                f"the journal recorded key {key!r} for different content; "
                "give changed inputs a new key (or use a new journal)"
            )
            return done("failed", error=InvalidInputError(reason), reason=reason)
        if entry is not None and entry.state == "finished":
            replay = structure_task(entry.result) if entry.result and "task_id" in entry.result else None
            return done("skipped", task=replay, reason=f"already {entry.outcome} in the journal", replayed=True)
        if entry is not None and entry.state == "submitted" and entry.task_id:
            task_id = entry.task_id  # created by an earlier run: poll it, never create it again
            self._reserved += estimate
        elif entry is not None and not self._resubmit:
            return done(
                "uncertain",
                reason="an earlier run may have created this task (no task id recorded); "
                "pass resubmit_uncertain=True to submit it again",
            )
        else:
            if self.stopped_reason is not None:
                return done("skipped", reason=self.stopped_reason)
            if self._budget is not None and self._spent + self._reserved + estimate > self._budget + 1e-9:
                self._stop(f"budget: ${self._budget:.2f} would be exceeded")
                return done("skipped", reason=self.stopped_reason or "budget")
            self._reserved += estimate
            try:
                task = await self._create(prepared, key, journal)
            except SubmissionUncertainError as exc:
                return done("uncertain", error=exc, reason=str(exc))  # reservation kept: it may be billed
            except QubicoError as exc:
                self._reserved -= estimate
                if _is_account_error(exc):
                    self._stop(f"account error: {exc}")
                return done("failed", error=exc, reason=str(exc))
            task_id = task.task_id
            submitted_at = time.time()
            started = time.monotonic()
        del prepared  # release the encoded media before the long wait
        try:
            final = await self._wait(task or task_id, started)
        except QubicoError as exc:  # incl. WaitTimeoutError: the task may still finish remotely
            if _is_account_error(exc):
                self._stop(f"account error: {exc}")
            note = "; the task was created: rerun with the journal to collect it" if journal else ""
            return done(
                "failed",
                task=getattr(exc, "last_task", None),
                error=exc,
                reason=f"{exc}{note}",
                submitted_at=submitted_at,
            )
        cost = self._prices.actual(final, estimate)
        self._reserved -= estimate
        self._spent += cost
        status: OutcomeStatus = "succeeded" if final.status.is_success else "failed"
        if journal is not None:
            await journal.record_finished(key, status, _task_record(final), cost)
        reason = "" if status == "succeeded" else (final.error.message if final.error else final.status.value)
        return done(status, task=final, reason=reason, spend_usd=cost, submitted_at=submitted_at)

    async def _create(self, prepared: Prepared, key: str, journal: Journal | None) -> Task:
        """Journal first, then the POST, then the task id: shielded so a cancel cannot split them."""
        with anyio.CancelScope(shield=True):  # bounded by the transport's timeouts
            if journal is not None:
                await journal.record_intent(key, prepared.identity)
            try:
                task = await self._client._create(prepared, resubmit_uncertain=self._resubmit)
            except SubmissionUncertainError as exc:
                if journal is not None:
                    await journal.record_uncertain(key, str(exc)[:500])
                raise
            except QubicoError:
                if journal is not None:
                    await journal.discard(key)  # provably not created: a rerun may submit it
                raise
            if journal is not None:
                await journal.record_submitted(key, task.task_id)
            return task
        raise AssertionError("unreachable: a shielded scope without a deadline is never cancelled")

    async def _wait(self, task: Task | str, started: float | None) -> Task:
        task_id = task.task_id if isinstance(task, Task) else task
        last = task if isinstance(task, Task) else None
        if last is not None and last.status.is_terminal:
            return last
        policy = self._scheduler.policy
        timeout = policy.timeout_for(last)
        pending_at: float | None = None
        with anyio.move_on_after(timeout if timeout is not None else math.inf):
            for wait in self._scheduler.waits():
                await anyio.sleep(wait)
                asked_at = time.monotonic()
                try:
                    last = await self._client.get_task(task_id)
                except TRANSIENT_POLL_ERRORS as exc:
                    # The task exists (and may be paid for): a flaky poll must not turn it into a
                    # failure without its result. Keep polling until the deadline.
                    logger.warning("polling task %s failed, will retry: %s", task_id, exc)
                    continue
                if last.status.is_terminal:
                    if started is not None:  # not for tasks resumed from a journal
                        self._scheduler.observe(last, started, asked_at, pending_at)
                    return last
                pending_at = asked_at
        raise WaitTimeoutError(task_id, last, timeout)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _stop(self, reason: str) -> None:
        if self.stopped_reason is None:
            self.stopped_reason = reason
            logger.warning("batch stopped submitting: %s", reason)

    async def _emit(self, send: MemoryObjectSendStream[Outcome], outcome: Outcome) -> None:
        self._counts[outcome.status] += 1
        try:
            await send.send(outcome)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The consumer left (break, cancel) before this job's outcome: nobody can take it (the
            # journal has it). Raising would fail the supervisor with an error nobody retrieves.
            return
        if self._on_progress is not None:
            try:
                self._on_progress(self.progress())
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
            spend_usd=round(self._spent, 6),
            elapsed=time.monotonic() - self._t0,
        )

    def _finish_report(self) -> None:
        now = self._client._requests_sent()
        sent = {k: v - self._requests_at_start.get(k, 0) for k, v in now.items()}
        self.report = BatchReport(
            counts={str(k): v for k, v in self._counts.items()},
            spend_usd=round(self._spent, 6),
            requests=sent,
            wall_time=time.monotonic() - self._t0,
            stopped_reason=self.stopped_reason,
        )


async def _aiter(jobs: Iterable[object] | AsyncIterable[object]) -> AsyncIterator[object]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job
