"""One batch job's state machine: prepare, check the journal, reserve, create, wait, settle.

`JobRunner.run` turns one `Job` into exactly one `Outcome`. The journal row is written before
the paid create and the task id right after; a create on the wire when the batch is cancelled
gets `CANCEL_GRACE` seconds, then is recorded uncertain. Budget arithmetic lives in `Budget`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from attrs import frozen

from ._budget import Budget
from ._convert import structure_task, unstructure_task_record
from ._pollsched import PollScheduler
from ._uploads import UploadPolicy
from ._webhook_hub import TaskRouter
from .batch import Job, Outcome, OutcomeStatus, Prices
from .coordination import Lease
from .errors import (
    APIError,
    AuthenticationError,
    InsufficientCreditError,
    InvalidInputError,
    JournalError,
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

__all__ = ["CANCEL_GRACE", "BatchServices", "JobRunner", "is_account_error"]

logger = logging.getLogger("qubico_async")

CANCEL_GRACE = 2.0
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


def is_account_error(exc: BaseException) -> bool:
    if isinstance(exc, (AuthenticationError, PermissionDeniedError, InsufficientCreditError)):
        return True
    return isinstance(exc, APIError) and exc.status == 402


class _JournalWriteFailed(Exception):
    """A journal write failed before the create was sent: the job was not submitted."""


class JobRunner:
    """Runs jobs one at a time each (many concurrently), sharing the batch's budget, keys and stop."""

    def __init__(
        self,
        services: BatchServices,
        *,
        prices: Prices,
        budget: Budget,
        scheduler: PollScheduler,
        upload: UploadPolicy,
        resubmit_uncertain: bool,
    ) -> None:
        self._services = services
        self._prices = prices
        self.budget = budget
        self._scheduler = scheduler
        self._upload = upload
        self._resubmit = resubmit_uncertain
        self.stopped_reason: str | None = None
        """Why the batch stopped submitting (budget, account error, journal), once it did."""
        self.journal_error: JournalError | None = None
        """The first journal failure: raised once every outcome is out."""
        self.usage: dict[str, float] = {}
        """Service units consumed by finished tasks, per unit type."""
        self._keys: dict[str, int] = {}  # key -> index of the first job with it in this run
        self._create_scopes: set[anyio.CancelScope] = set()
        self._closing = False

    def close_soon(self) -> None:
        """The batch is being cancelled: creates on the wire get `CANCEL_GRACE` seconds, not forever."""
        self._closing = True
        grace = anyio.current_time() + CANCEL_GRACE
        for scope in self._create_scopes:
            scope.deadline = min(scope.deadline, grace)

    async def run(self, job: _Job, journal: Journal | None) -> Outcome:
        """The job's outcome: never raises for anything the service or the inputs did."""
        try:
            prepared = await self._services.prepare(job.job.request, self._upload)
        except QubicoError as exc:  # bad input, or an upload that failed: nothing was paid
            self.stop_if_account_error(exc)
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
            return job.done("failed", error=self.journal_failed(exc), reason=f"not submitted: {exc}")
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
        if not self.budget.try_reserve(estimate):
            self.stop(self.budget.describe())
            return job.done("skipped", reason=self.stopped_reason or "budget")
        reserved += estimate
        try:
            lease = await self._services.acquire_slot() if self._services.acquire_slot is not None else None
        except BaseException:
            self.budget.release(reserved)
            raise
        try:
            task = await self._create(prepared, job.key, estimate, journal, lease)
        except SubmissionUncertainError as exc:
            return job.done("uncertain", error=exc, reason=str(exc))  # reservation kept: it may be billed
        except _JournalWriteFailed as exc:
            self.budget.release(reserved)
            cause = exc.__cause__
            return job.done("failed", error=cause, reason=f"not submitted: {cause}")
        except InsufficientCreditError as exc:  # refused: the service could not freeze the credit
            self.budget.release(reserved)
            self.stop(f"insufficient credit: {exc.raw_message or exc}")
            return job.done("failed", task=exc.task, error=exc, reason=str(exc), usage=exc.task.meta.usage)
        except TaskFailedError as exc:  # failed at birth: recorded, never sent again
            return await self._settle(job, exc.task, reserved, journal, submitted_at=time.time())
        except QubicoError as exc:  # provably not created
            self.budget.release(reserved)
            self.stop_if_account_error(exc)
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
            self.stop_if_account_error(exc)
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
        self.budget.settle(reserved, cost)
        usage = final.meta.usage
        if usage is not None and usage.consume:
            self.usage[usage.type] = self.usage.get(usage.type, 0) + usage.consume
        status: OutcomeStatus = "succeeded" if final.status.is_success else "failed"
        reason = "" if status == "succeeded" else (final.error.summary if final.error else "") or final.status.value
        if journal is not None:
            try:
                await journal.record_finished(job.key, status, unstructure_task_record(final), cost)
            except JournalError as exc:
                self.journal_failed(exc)
                reason = f"{reason}; journal: {exc}" if reason else f"journal: {exc}"
        return job.done(status, task=final, reason=reason, spend_usd=cost, usage=usage, submitted_at=submitted_at)

    async def _create(
        self, prepared: Prepared, key: str, estimate: float, journal: Journal | None, lease: Lease | None = None
    ) -> Task:
        """Journal first, then the POST, then the task id. A cancel cannot split them: the POST
        gets `CANCEL_GRACE` seconds to answer, after which the job is recorded uncertain."""
        if journal is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await journal.record_intent(key, prepared.identity, estimate)
                except JournalError as exc:
                    if lease is not None:
                        lease.release()
                    self.journal_failed(exc)
                    raise _JournalWriteFailed() from exc
        scope = anyio.CancelScope(shield=True)
        if self._closing:
            scope.deadline = anyio.current_time() + CANCEL_GRACE
        self._create_scopes.add(scope)
        try:
            with scope:
                task = await self._services.create(prepared, self._resubmit, lease)
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
            reason = f"the batch was cancelled while this create was on the wire (after {CANCEL_GRACE:g} s)"
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
                self.journal_failed(exc)

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
            self._services.get_task,
            self._scheduler.waits(),
            timeout=timeout,
            last=last,
            hub=self._services.hub if hooked else None,
            on_seen=learn,
        )

    # -- shared state ---------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if self.stopped_reason is None:
            self.stopped_reason = reason
            logger.warning("batch stopped submitting: %s", reason)

    def stop_if_account_error(self, exc: QubicoError) -> None:
        if is_account_error(exc):
            self.stop(f"account error: {exc}")

    def journal_failed(self, exc: JournalError) -> JournalError:
        """The journal can't be trusted to prevent paying twice: stop submitting, report once at the end."""
        if self.journal_error is None:
            self.journal_error = exc
        self.stop(f"journal failed: {exc}")
        return exc


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
