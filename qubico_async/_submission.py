"""The paid create: sent once unless the failure proves no task was made, holding an account slot.

With a shared coordination (issue 14) every create takes one account-wide slot (a `Lease`) and
keeps it until the task is seen terminal (by a poll or a webhook), at most its deadline; a create
whose outcome is unknown keeps it for the whole deadline, since the task may be running.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._batch_runner import DEFAULT_CONCURRENCY
from ._convert import structure_task
from ._payloads import encode_json
from ._responses import envelope_data
from .coordination import Coordination, Lease, LocalCoordination
from .errors import (
    InsufficientCreditError,
    MalformedResponseError,
    QubicoError,
    SubmissionUncertainError,
    TaskFailedError,
)
from .models import AccountInfo, Task
from .polling import PollPolicy
from .requests import Prepared

__all__ = ["Submitter"]

SendRequest = Callable[..., Awaitable[dict[str, Any]]]
"""`(method, path, **options)` -> the decoded envelope: the client's API request."""

_DEFAULT_HOLD = 3600.0
_CREDIT_CAUSE = re.compile(r"credit|quota|balance", re.IGNORECASE)


class Submitter:
    """Creates tasks for one client and holds their account-wide slots."""

    def __init__(
        self,
        *,
        request: SendRequest,
        coordination: Coordination,
        account_info: Callable[[], Awaitable[AccountInfo]],
        poll: Callable[[], PollPolicy],
    ) -> None:
        self._request = request
        self._coordination = coordination
        self._account_info = account_info
        self._poll = poll
        self._limit: int | None = None
        self._limit_lock = asyncio.Lock()
        self._leases: dict[str, tuple[Lease, asyncio.TimerHandle | None]] = {}

    async def acquire_slot(self) -> Lease:
        """coordination hook (issue 14): one account-wide slot (no-op without a shared coordination)."""
        if isinstance(self._coordination, LocalCoordination):
            return await self._coordination.acquire(1)
        async with self._limit_lock:  # the account's limit, asked once
            if self._limit is None:
                limit = getattr(self._coordination, "limit", None)
                if limit is None:
                    try:
                        info = await self._account_info()
                        limit = info.max_image_toolkit_concurrency or info.max_concurrent_task_count
                    except QubicoError:
                        limit = None
                self._limit = limit or DEFAULT_CONCURRENCY
        return await self._coordination.acquire(self._limit)

    async def create(self, prepared: Prepared, resubmit_uncertain: bool = False, lease: Lease | None = None) -> Task:
        """The paid POST: sent once unless the failure proves no task was created.

        The POST holds an account-wide slot (`lease`, else one is taken here) until the task is
        seen terminal.
        """
        if lease is None:
            lease = await self.acquire_slot()
        hold_for = self._poll().timeout_for(None, model=prepared.request.model) or _DEFAULT_HOLD
        try:
            task = await self._create_unleased(prepared, resubmit_uncertain)
        except (SubmissionUncertainError, TaskFailedError) as exc:
            self._hold(exc.task if isinstance(exc, TaskFailedError) else None, lease, hold_for)
            raise
        except BaseException:
            lease.release()
            raise
        self._hold(task, lease, hold_for)
        return task

    def seen_terminal(self, task: Task) -> None:
        """The task is finished: its slot is free again."""
        held = self._leases.pop(task.task_id, None)
        if held is not None:
            held[0].release()
            if held[1] is not None:
                held[1].cancel()

    def release_all(self) -> None:
        """Give back every slot still held (the client is closing)."""
        for lease, timer in self._leases.values():
            lease.release()
            if timer is not None:
                timer.cancel()
        self._leases.clear()

    def _hold(self, task: Task | None, lease: Lease, hold_for: float) -> None:
        """Keep `lease` until the task is seen terminal, at most `hold_for` seconds."""
        if task is None:  # uncertain: it may run; the slot is held for its deadline
            asyncio.get_running_loop().call_later(hold_for, lease.release)
            return
        if task.status.is_terminal:
            lease.release()
            return
        timer = asyncio.get_running_loop().call_later(hold_for, self.seen_terminal, task)
        self._leases[task.task_id] = (lease, timer)

    async def _create_unleased(self, prepared: Prepared, resubmit_uncertain: bool) -> Task:
        body = await encode_json(prepared.payload)
        sent_at = time.time()
        envelope = await self._request(
            "POST",
            "/api/v1/task",
            body=body,
            kind="create",
            fingerprint=prepared.identity,
            request=prepared.request,
            resubmit_uncertain=resubmit_uncertain,
        )
        try:
            task = structure_task(envelope_data(envelope, "create task"))
        except MalformedResponseError as exc:
            # The service said yes but we cannot read the task: it probably exists and is paid for.
            raise SubmissionUncertainError(
                f"the task was probably created but its id is unreadable ({exc})",
                fingerprint=prepared.identity,
                sent_at=sent_at,
                request=prepared.request,
                cause=exc,
            ) from exc
        if task.status.is_terminal and not task.status.is_success:  # failed at birth: never resent
            raise InsufficientCreditError(task) if is_credit_refusal(task) else TaskFailedError(task)
        return task


def is_credit_refusal(task: Task) -> bool:
    """A task failed at birth because the account cannot pay for it (piapi-api.md §18)."""
    err = task.error
    return err is not None and bool(_CREDIT_CAUSE.search(f"{err.message} {err.raw_message}"))
