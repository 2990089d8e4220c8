"""The error tree. Every exception the SDK raises on purpose is a `QubicoError`.

Messages, reprs and attributes never contain the API key or a webhook secret.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Task

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ClientClosedError",
    "DownloadError",
    "InsufficientCreditError",
    "InsufficientPlanError",
    "InvalidInputError",
    "JournalClosedError",
    "JournalError",
    "MalformedResponseError",
    "MalformedWebhookError",
    "MissingApiKeyError",
    "NotFoundError",
    "OutputExistsError",
    "PermissionDeniedError",
    "QubicoError",
    "RateLimitError",
    "ResultExpiredError",
    "ServerError",
    "SubmissionUncertainError",
    "TaskFailedError",
    "TransportError",
    "WaitTimeoutError",
    "WebhookVerificationError",
]


class QubicoError(Exception):
    """Base class of every error raised by qubico_async."""


class InvalidInputError(QubicoError, ValueError):
    """An input was rejected: by the SDK before any request was sent (nothing was paid for), or,
    as its subclass `BadRequestError`, by the service with a 400 (no task was made either)."""


class MissingApiKeyError(QubicoError):
    """No API key: pass `api_key=` or set QUBICO_API_KEY (or PIAPI_API_KEY)."""


class ClientClosedError(QubicoError, RuntimeError):
    """The client is not open: use it inside `async with QubicoClient()`, and not after `aclose()`."""


class TransportError(QubicoError):
    """The request did not produce an HTTP response (connection refused, reset, timeout).

    `sent` is False only when the failure proves the request never left this machine.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class MalformedResponseError(QubicoError):
    """The service answered 2xx with a body that is not the documented shape."""


class MalformedWebhookError(MalformedResponseError):
    """The body is not a valid webhook delivery. An HTTP handler should answer 400, not 500."""


class APIError(QubicoError):
    """The service answered with an HTTP error status.

    `status` is the HTTP status, `code` the envelope's code (if any), `message` the service's text.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | None = None,
        method: str = "",
        url: str = "",
        body: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.method = method
        self.url = url
        self.body = body

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        return f"HTTP {self.status}: {self.message}{where}"


class BadRequestError(APIError, InvalidInputError):
    """400: the service rejected the request's parameters."""


class AuthenticationError(APIError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(APIError):
    """403: the account may not do this (plan, credits, or a disabled key)."""


class InsufficientPlanError(PermissionDeniedError):
    """403 from the File Upload API: uploads need the Creator plan or higher."""


class NotFoundError(APIError):
    """404: no such task (or it has expired)."""


class ResultExpiredError(NotFoundError):
    """The result file is gone from storage: results are kept about 3 days."""


class RateLimitError(APIError):
    """429: too many requests. `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the service (or a proxy in front of it) failed."""


class SubmissionUncertainError(QubicoError):
    """The create request may or may not have created a (paid) task.

    Raised instead of resubmitting when the request was sent but no answer came back.
    `fingerprint` identifies the request body; `sent_at` is when it was sent (UNIX time);
    `request` is what was submitted; `cause` is the underlying error. Reconcile before resubmitting.
    """

    def __init__(
        self,
        message: str,
        *,
        fingerprint: str,
        sent_at: float,
        request: object = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint
        self.sent_at = sent_at
        self.request = request
        self.cause = cause


class TaskFailedError(QubicoError):
    """The task reached a terminal status other than completed. `task` is the final `Task`.

    The message carries the service's `error.message` and `error.raw_message` (the actionable cause).
    """

    def __init__(self, task: Task) -> None:
        detail = task.error.summary if task.error is not None else ""
        msg = f"task {task.task_id} {task.status.value}"
        super().__init__(f"{msg}: {detail}" if detail else msg)
        self.task = task

    @property
    def raw_message(self) -> str:
        """The service's own account of the cause (`error.raw_message`), or ""."""
        return self.task.error.raw_message if self.task.error is not None else ""


class InsufficientCreditError(TaskFailedError):
    """The service refused the create for lack of credit or quota: top up the account.

    An account error: a batch stops submitting and the remaining jobs come out `skipped`. `task`
    is the refused task (it exists, failed at birth); `raw_message` is the service's cause.
    """


class WaitTimeoutError(QubicoError, TimeoutError):
    """The wait deadline passed. The remote task was not cancelled and may still finish.

    `task_id` identifies it; `last_task` is the last state seen (None if no poll succeeded).
    """

    def __init__(self, task_id: str, last_task: Task | None, timeout: float | None) -> None:
        status = last_task.status.value if last_task is not None else "unknown"
        super().__init__(
            f"task {task_id} not finished after {timeout}s (last status: {status}); "
            "it is still running remotely: wait for it again or fetch it later with get_task()"
        )
        self.task_id = task_id
        self.last_task = last_task
        self.timeout = timeout


class BudgetExceededError(QubicoError):
    """Submitting would take spend over the budget."""


class WebhookVerificationError(QubicoError):
    """A webhook delivery did not carry the expected secret."""


class DownloadError(QubicoError):
    """The result could not be saved at the destination (a local file-system error).

    `path` is where it was to be written. Nothing partial is left there.
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class OutputExistsError(DownloadError, FileExistsError):
    """The destination file exists and `overwrite` was not set. Also a `FileExistsError`."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message, path=path)
        self.errno = errno.EEXIST
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror or ""


class JournalError(QubicoError):
    """The journal could not be opened (in use by another run, not a journal, corrupt, unreadable
    folder), read or written (disk full, I/O error, writer stopped).

    Treat the call as not done. (After an I/O error during a commit SQLite may still find the
    write on the next open; for `record_intent` that errs on the safe side: the job shows up as
    not finished and without a task id, i.e. uncertain.)
    """


class JournalClosedError(JournalError):
    """The journal was closed (or failed to open) before this call."""
