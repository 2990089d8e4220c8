"""Waiting for a task to finish: the one poll loop, used by `wait()`, webhook waits and batches.

`wait_task` is `QubicoClient.wait` (which policy, which deadline, poll or webhook); the loop
below it is shared.

Every waiter follows the same rules: a GET after each wait of its schedule; transient poll
errors (transport, 5xx, 429) are logged and polling goes on (after the server's `Retry-After`);
any other error ends the wait; the deadline is a cancel scope and raises `WaitTimeoutError`
with the last state seen. With a `TaskRouter` (a `WebhookHub`), a terminal delivery and the
poll race, and whichever comes first wins; the loser is cancelled and nothing is left behind.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable

import anyio

from ._naming import check_task_id
from ._webhook_hub import TaskRouter
from .errors import InvalidInputError, RateLimitError, ServerError, TransportError, WaitTimeoutError
from .models import Task
from .polling import PollPolicy

__all__ = [
    "TRANSIENT_POLL_ERRORS",
    "WEBHOOK_FALLBACK_POLL",
    "poll_until_terminal",
    "wait_first",
    "wait_for_task",
    "wait_task",
]

_JITTER = random.Random()
"""Jitter for polls whose caller brings no random source of its own."""

logger = logging.getLogger("qubico_async")

WEBHOOK_FALLBACK_POLL = PollPolicy(initial=10.0, factor=1.5, max_interval=60.0, jitter=0.2)
"""With webhooks the poll is only a safety net for lost deliveries: slow and cheap."""

TRANSIENT_POLL_ERRORS = (TransportError, ServerError, RateLimitError)
"""Poll errors a waiter logs and outlives: the task exists (and may be paid for)."""

GetTask = Callable[[str], Awaitable[Task]]
OnSeen = Callable[[Task, float], None]
"""Called with every state a poll returned and the monotonic time the poll was sent."""


async def wait_task(
    task: Task | str,
    get_task: GetTask,
    *,
    default_poll: PollPolicy,
    poll: PollPolicy | None,
    timeout: float | None,
    via: str,
    hub: TaskRouter | None,
    rng: random.Random | None = None,
) -> Task:
    """`QubicoClient.wait`: `via="poll"` polls on `poll` (else `default_poll`); `via="webhook"`
    races `hub`'s deliveries against a slow fallback poll. A terminal `task` is returned as is.
    Without a `timeout`, the first poll comes at once, so a video gets the video deadline."""
    last = task if isinstance(task, Task) else None
    if last is not None and last.status.is_terminal:
        return last
    task_id = check_task_id(task.task_id if isinstance(task, Task) else task)  # before any wait
    if via not in ("poll", "webhook"):
        raise InvalidInputError(f"via must be 'poll' or 'webhook', got {via!r}")
    policy = poll or (WEBHOOK_FALLBACK_POLL if via == "webhook" else default_poll)
    if last is None and timeout is None and via == "poll":
        last = await get_task(task_id)  # the first poll, early: a video gets the video deadline
        if last.status.is_terminal:
            if hub is not None:
                hub.resolve(last)
            return last
    if timeout is None:
        timeout = (poll if poll is not None else default_poll).timeout_for(last)
    if via == "webhook":
        if last is not None and last.config.webhook is None:
            logger.warning("task %s was created without a webhook: only the slow fallback poll will see it", task_id)
        if hub is None:
            raise InvalidInputError("wait(via='webhook') needs QubicoClient(webhooks=WebhookHub(secret))")
    intervals = policy.intervals(rng or _JITTER)
    waits = intervals if last is not None or via == "webhook" else itertools.chain([0.0], intervals)

    def resolve_terminal(task: Task, _: float) -> None:
        if hub is not None and task.status.is_terminal:
            hub.resolve(task)  # other waiters on this task learn it too

    return await wait_for_task(
        task_id,
        get_task,
        waits,
        timeout=timeout,
        last=last,
        hub=hub if via == "webhook" else None,
        on_seen=resolve_terminal,
    )


async def poll_until_terminal(task_id: str, get_task: GetTask, waits: Iterable[float], on_seen: OnSeen) -> Task:
    """GET `task_id` after each wait in `waits` until it is terminal. No deadline of its own."""
    backoff = 0.0  # the server's Retry-After, if it sent one
    for wait in waits:
        await anyio.sleep(max(wait, backoff))
        asked_at = time.monotonic()
        try:
            task = await get_task(task_id)
        except TRANSIENT_POLL_ERRORS as exc:
            logger.warning("polling task %s failed, will retry: %s", task_id, exc)
            backoff = (exc.retry_after if isinstance(exc, RateLimitError) else None) or 0.0
            continue
        backoff = 0.0
        on_seen(task, asked_at)
        if task.status.is_terminal:
            return task
    raise RuntimeError(f"the poll schedule for task {task_id} ended")  # schedules are endless


async def wait_for_task(
    task_id: str,
    get_task: GetTask,
    waits: Iterable[float],
    *,
    timeout: float | None,
    last: Task | None = None,
    hub: TaskRouter | None = None,
    on_seen: OnSeen | None = None,
) -> Task:
    """The terminal `Task`, polled on `waits` (and, with `hub`, raced against its deliveries).

    Every polled state goes through `hub.resolve()` (other waiters benefit) and `on_seen`.
    Raises `WaitTimeoutError` after `timeout` seconds; the remote task keeps running.
    """
    seen = last

    def track(task: Task, asked_at: float) -> None:
        nonlocal seen
        seen = task
        if hub is not None:
            hub.resolve(task)
        if on_seen is not None:
            on_seen(task, asked_at)

    deadline = math.inf if timeout is None else timeout
    if hub is None:
        with anyio.move_on_after(deadline):
            return await poll_until_terminal(task_id, get_task, waits, track)
        raise WaitTimeoutError(task_id, seen, timeout)

    result: Task | None = None
    failure: Exception | None = None
    with hub.subscribe(task_id) as sub:
        with anyio.move_on_after(deadline):
            async with anyio.create_task_group() as tg:

                async def by_webhook() -> None:
                    nonlocal result
                    task = await sub.terminal()
                    result = result or task
                    tg.cancel_scope.cancel()

                async def by_polling() -> None:
                    nonlocal result, failure
                    try:
                        task = await poll_until_terminal(task_id, get_task, waits, track)
                    except Exception as exc:  # raised below as itself, not inside an ExceptionGroup
                        failure = exc
                    else:
                        result = result or task
                    tg.cancel_scope.cancel()

                tg.start_soon(by_webhook)
                tg.start_soon(by_polling)
        result = result or sub.result  # resolved in the same instant as the deadline
    if result is not None:
        return result
    if failure is not None:
        raise failure
    raise WaitTimeoutError(task_id, hub.latest(task_id) or seen, timeout)


async def wait_first(
    hub: TaskRouter,
    task_id: str,
    poll: Callable[[], Awaitable[Task]],
    poll_interval: float | Iterable[float],
    timeout: float | None,
) -> Task:
    """The terminal `Task` from whichever comes first: a webhook delivery to `hub`, or `poll()`.

    `poll()` runs after each interval (a number, or an iterable such as `PollPolicy.intervals()`)
    as the fallback for dropped deliveries; its results go through `hub.resolve()`. The rules are
    `wait_for_task`'s: transient poll errors are outlived, `WaitTimeoutError` on the deadline.
    """
    if isinstance(poll_interval, (int, float)):
        if not poll_interval >= 0:
            raise ValueError(f"poll_interval must be >= 0, got {poll_interval!r}")
        waits: Iterable[float] = itertools.repeat(float(poll_interval))
    else:
        waits = poll_interval

    async def get_task(_: str) -> Task:
        return await poll()

    return await wait_for_task(task_id, get_task, waits, timeout=timeout, hub=hub)
