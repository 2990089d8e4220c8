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
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from attrs import frozen

from ._budget import Budget
from ._convert import structure_task
from ._journal_store import JournalError
from ._pollsched import PollScheduler
from ._uploads import UploadPolicy
from ._webhook_hub import TaskRouter
from .batch import BatchReport, Job, JobLike, Outcome, OutcomeStatus, Prices, Progress
from .coordination import Lease
from .errors import (
    APIError,
    AuthenticationError,
    InsufficientCreditError,
    InvalidInputError,
    PermissionDeniedError,
    QubicoError,
    SubmissionUncertainError,
    TaskFailedError,
)
from .journal import Journal
from .models import AccountInfo, Task
from .polling import PollPolicy
from .requests import Prepared, Request
from .waiting import wait_for_task

__all__ = ["DEFAULT_CONCURRENCY", "BatchRun", "BatchServices"]

logger = logging.getLogger("qubico_async")

DEFAULT_CONCURRENCY = 8
"""Tasks in flight when the account does not report `max_concurrent_task_count`."""
_OUTCOME_BUFFER = 64
_CANCEL_GRACE = 2.0
"""Seconds a create already on the wire may still take once the batch is cancelled; after that
it is left `uncertain` in the journal (it may or may not have created a task)."""


@frozen
class BatchServices:
    """What the engine needs from the client, as plain callables (the client is never imported here)."""

    poll: PollPolicy
    prepare: Callable[[Request, UploadPolicy], Awaitable[Prepared]]
    """Check and load a request's media; nothing is sent."""
    create: Callable[[Prepared, bool, Lease | None], Awaitable[Task]]
    """The paid POST (`resubmit_uncertain` as the flag), holding the account-wide slot `lease`."""
    get_task: Callable[[str], Awaitable[Task]]
    account_info: Callable[[], Awaitable[AccountInfo]]
    requests_sent: Callable[[], Mapping[str, int]]
    hub: TaskRouter | None = None
    """Webhook deliveries race the batch's polls for jobs that asked for a webhook."""
    acquire_slot: Callable[[], Awaitable[Lease]] | None = None
    """coordination hook (issue 14): one account-wide slot per job, taken before the (shielded) POST."""


def _is_account_error(exc: BaseException) -> bool:
    if isinstance(exc, (AuthenticationError, PermissionDeniedError, InsufficientCreditError)):
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
        "error": None
        if task.error is None
        else {"code": task.error.code, "message": task.error.message, "raw_message": task.error.raw_message},
        "meta": {
            "usage": None if usage is None else {"type": usage.type, "frozen": usage.frozen, "consume": usage.consume}
        },
    }


class _JournalWriteFailed(Exception):
    """A journal write failed before the create was sent: the job was not submitted."""


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
        self._budget = Budget(budget_usd)
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
        self._usage: dict[str, float] = {}
        self._in_flight = 0
        self._t0 = time.monotonic()
        self._requests_at_start: dict[str, int] = {}
        self._next_to_yield = 0
        self._advanced = anyio.Event()
        self._window = 0
        self._keys: dict[str, int] = {}  # key -> index of the first job with it in this run
        self._create_scopes: set[anyio.CancelScope] = set()
        self._closing = False
        self._journal_error: JournalError | None = None

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
                self._closing = True
                grace = anyio.current_time() + _CANCEL_GRACE
                for scope in self._create_scopes:  # creates on the wire get a short grace, not forever
                    scope.deadline = min(scope.deadline, grace)
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
        if self._journal_error is not None:
            raise self._journal_error

    async def _open_journal(self) -> Journal | None:
        if self._journal_path is None:
            return None
        try:
            journal = await Journal.open(self._journal_path)
            try:
                self._budget.hold(await journal.total_spend())  # the budget belongs to the journal
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
                        self._journal_failed(exc)
                self._finish_report()

    async def _default_concurrency(self) -> int:
        try:
            info = await self._client.account_info()
        except QubicoError as exc:
            if _is_account_error(exc):
                self._stop(f"account error: {exc}")
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
            outcome = await self._job_outcome(_Job(job, index, queued), journal)
            self._in_flight -= 1
            await self._emit(send, outcome)  # a slow consumer holds the slot: backpressure
        finally:
            slots.release()

    async def _job_outcome(self, job: _Job, journal: Journal | None) -> Outcome:
        try:
            prepared = await self._client.prepare(job.job.request, self._upload)
        except QubicoError as exc:  # bad input, or an upload that failed: nothing was paid
            self._stop_if_account_error(exc)
            return job.done("failed", error=exc, reason=str(exc))
        job.key = job.job.key or prepared.identity
        first = self._keys.setdefault(job.key, job.index)
        if first != job.index:  # never paid twice, and never "uncertain" for want of an earlier run
            return job.done("skipped", reason=f"same key as job {first}")
        estimate = self._prices.estimate(prepared.request, prepared.frames)
        job.timeout = self._scheduler.policy.timeout_for(None, model=prepared.request.model)
        job.hooked = prepared.request.webhook is not None
        try:
            entry = await journal.get(job.key) if journal is not None else None
        except JournalError as exc:
            return job.done("failed", error=self._journal_failed(exc), reason=f"not submitted: {exc}")
        reserved = 0.0
        if entry is not None:
            if entry.fingerprint != prepared.identity:
                reason = (
                    f"the journal recorded key {job.key!r} for different content; "
                    "give changed inputs a new key (or use a new journal)"
                )
                return job.done("failed", error=InvalidInputError(reason), reason=reason)
            if entry.state == "finished":
                replay = structure_task(entry.result) if entry.result and "task_id" in entry.result else None
                return job.done("skipped", task=replay, reason=f"already {entry.outcome} in the journal", replayed=True)
            reserved = entry.spend_usd  # held by the journal's committed total since the run began
            if entry.state == "submitted" and entry.task_id:
                del prepared  # created by an earlier run: poll it, never create it again
                return await self._finish(job, entry.task_id, reserved, journal, started=None)
            if not self._resubmit:
                return job.done(
                    "uncertain",
                    reason="an earlier run may have created this task (no task id recorded); "
                    "pass resubmit_uncertain=True to submit it again",
                )
        return await self._submit(job, prepared, estimate, reserved, journal)

    async def _submit(
        self, job: _Job, prepared: Prepared, estimate: float, reserved: float, journal: Journal | None
    ) -> Outcome:
        if self.stopped_reason is not None:
            return job.done("skipped", reason=self.stopped_reason)
        if not self._budget.try_reserve(estimate):
            self._stop(self._budget.describe())
            return job.done("skipped", reason=self.stopped_reason or "budget")
        reserved += estimate
        try:
            lease = await self._client.acquire_slot() if self._client.acquire_slot is not None else None
        except BaseException:
            self._budget.release(reserved)
            raise
        try:
            task = await self._create(prepared, job.key, estimate, journal, lease)
        except SubmissionUncertainError as exc:
            return job.done("uncertain", error=exc, reason=str(exc))  # reservation kept: it may be billed
        except _JournalWriteFailed as exc:
            self._budget.release(reserved)
            cause = exc.__cause__
            return job.done("failed", error=cause, reason=f"not submitted: {cause}")
        except InsufficientCreditError as exc:  # refused: the service could not freeze the credit
            self._budget.release(reserved)
            self._stop(f"insufficient credit: {exc.raw_message or exc}")
            return job.done("failed", task=exc.task, error=exc, reason=str(exc), usage=exc.task.meta.usage)
        except TaskFailedError as exc:  # failed at birth: recorded, never sent again
            return await self._settle(job, exc.task, reserved, journal, submitted_at=time.time())
        except QubicoError as exc:  # provably not created
            self._budget.release(reserved)
            self._stop_if_account_error(exc)
            return job.done("failed", error=exc, reason=str(exc))
        del prepared  # release the encoded media before the long wait
        return await self._finish(job, task, reserved, journal, started=time.monotonic())

    async def _finish(
        self, job: _Job, task: Task | str, reserved: float, journal: Journal | None, *, started: float | None
    ) -> Outcome:
        """Wait for a created task and settle its cost."""
        submitted_at = time.time() if started is not None else None
        try:
            final = await self._wait(task, started, job.timeout, job.hooked)
        except QubicoError as exc:  # incl. WaitTimeoutError: the task may still finish remotely
            self._stop_if_account_error(exc)
            note = "; the task was created: rerun with the journal to collect it" if journal else ""
            return job.done(
                "failed",
                task=getattr(exc, "last_task", None),
                error=exc,
                reason=f"{exc}{note}",
                submitted_at=submitted_at,
            )
        return await self._settle(job, final, reserved, journal, submitted_at=submitted_at)

    async def _settle(
        self, job: _Job, final: Task, reserved: float, journal: Journal | None, *, submitted_at: float | None
    ) -> Outcome:
        cost = self._prices.actual(final, reserved)
        self._budget.settle(reserved, cost)
        usage = final.meta.usage
        if usage is not None and usage.consume:
            self._usage[usage.type] = self._usage.get(usage.type, 0) + usage.consume
        status: OutcomeStatus = "succeeded" if final.status.is_success else "failed"
        reason = "" if status == "succeeded" else (final.error.summary if final.error else "") or final.status.value
        if journal is not None:
            try:
                await journal.record_finished(job.key, status, _task_record(final), cost)
            except JournalError as exc:
                self._journal_failed(exc)
                reason = f"{reason}; journal: {exc}" if reason else f"journal: {exc}"
        return job.done(status, task=final, reason=reason, spend_usd=cost, usage=usage, submitted_at=submitted_at)

    async def _create(
        self, prepared: Prepared, key: str, estimate: float, journal: Journal | None, lease: Lease | None = None
    ) -> Task:
        """Journal first, then the POST, then the task id. A cancel cannot split them: the POST
        gets `_CANCEL_GRACE` seconds to answer, after which the job is recorded uncertain."""
        if journal is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await journal.record_intent(key, prepared.identity, estimate)
                except JournalError as exc:
                    if lease is not None:
                        lease.release()
                    self._journal_failed(exc)
                    raise _JournalWriteFailed() from exc
        scope = anyio.CancelScope(shield=True)
        if self._closing:
            scope.deadline = anyio.current_time() + _CANCEL_GRACE
        self._create_scopes.add(scope)
        try:
            with scope:
                task = await self._client.create(prepared, self._resubmit, lease)
        except SubmissionUncertainError as exc:
            await self._journal_write(journal, "record_uncertain", key, str(exc)[:500])
            raise
        except InsufficientCreditError:
            await self._journal_write(journal, "discard", key)  # nothing was frozen: a rerun may send it
            raise
        except TaskFailedError as exc:
            await self._journal_write(journal, "record_submitted", key, exc.task.task_id)
            raise
        except QubicoError:
            await self._journal_write(journal, "discard", key)  # provably not created: a rerun may submit it
            raise
        finally:
            self._create_scopes.discard(scope)
        if scope.cancelled_caught:
            reason = f"the batch was cancelled while this create was on the wire (after {_CANCEL_GRACE:g} s)"
            await self._journal_write(journal, "record_uncertain", key, reason)
            raise SubmissionUncertainError(
                f"{reason}: it may or may not have created a task",
                fingerprint=prepared.identity,
                sent_at=time.time(),
                request=prepared.request,
            )
        await self._journal_write(journal, "record_submitted", key, task.task_id)
        return task

    async def _journal_write(self, journal: Journal | None, op: str, *args: str) -> None:
        """A shielded journal write after a create; a failure is recorded, the job goes on."""
        if journal is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await getattr(journal, op)(*args)
            except JournalError as exc:
                self._journal_failed(exc)

    async def _wait(self, task: Task | str, started: float | None, timeout: float | None, hooked: bool) -> Task:
        task_id = task.task_id if isinstance(task, Task) else task
        last = task if isinstance(task, Task) else None
        if last is not None and last.status.is_terminal:
            return last
        pending_at: float | None = None

        def learn(seen: Task, asked_at: float) -> None:
            nonlocal pending_at
            if not seen.status.is_terminal:
                pending_at = asked_at
            elif started is not None:  # not for tasks resumed from a journal
                self._scheduler.observe(seen, started, asked_at, pending_at)

        return await wait_for_task(
            task_id,
            self._client.get_task,
            self._scheduler.waits(),
            timeout=timeout,
            last=last,
            hub=self._client.hub if hooked else None,
            on_seen=learn,
        )

    # -- bookkeeping ----------------------------------------------------------------------------

    def _stop(self, reason: str) -> None:
        if self.stopped_reason is None:
            self.stopped_reason = reason
            logger.warning("batch stopped submitting: %s", reason)

    def _stop_if_account_error(self, exc: QubicoError) -> None:
        if _is_account_error(exc):
            self._stop(f"account error: {exc}")

    def _journal_failed(self, exc: JournalError) -> JournalError:
        """The journal can't be trusted to prevent paying twice: stop submitting, report once at the end."""
        if self._journal_error is None:
            self._journal_error = exc
        self._stop(f"journal failed: {exc}")
        return exc

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
            spend_usd=round(self._budget.spent, 6),
            elapsed=time.monotonic() - self._t0,
        )

    def _finish_report(self) -> None:
        now = self._client.requests_sent()
        sent = {k: v - self._requests_at_start.get(k, 0) for k, v in now.items()}
        self.report = BatchReport(
            counts={str(k): v for k, v in self._counts.items()},
            spend_usd=round(self._budget.spent, 6),
            requests=sent,
            wall_time=time.monotonic() - self._t0,
            stopped_reason=self.stopped_reason,
            usage=dict(self._usage),
        )


class _Job:
    """One job while it runs: what is known of it so far, and how to make its outcome."""

    __slots__ = ("hooked", "index", "job", "key", "queued", "timeout")

    def __init__(self, job: Job, index: int, queued: float) -> None:
        self.job = job
        self.index = index
        self.queued = queued
        self.key = job.key or ""
        self.timeout: float | None = None
        self.hooked = False

    def done(self, status: OutcomeStatus, **kw: Any) -> Outcome:
        return Outcome(self.job, self.key, self.index, status, queued_at=self.queued, finished_at=time.time(), **kw)


async def _aiter(jobs: Iterable[JobLike] | AsyncIterable[JobLike]) -> AsyncIterator[JobLike]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job
