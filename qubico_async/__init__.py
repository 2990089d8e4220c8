"""qubico_async: an asyncio-native SDK for PiAPI's Qubico face-swap API.

async with QubicoClient() as client:
    task = await client.face_swap("target.jpg", "face.png")
    await client.download(task, "out.png")
"""

import logging as _logging

from ._config import Timeouts
from ._download import ExtensionPolicy
from ._http import HTTPRequest, HTTPResponse, HTTPTransport, MockTransport
from ._rate import Pacing
from ._version import __version__
from .batch import BatchReport, Job, JobLike, Outcome, OutcomeStatus, Prices, Progress
from .client import QubicoClient
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ClientClosedError,
    DownloadError,
    InsufficientCreditError,
    InsufficientPlanError,
    InvalidInputError,
    JournalClosedError,
    JournalError,
    MalformedResponseError,
    MalformedWebhookError,
    MissingApiKeyError,
    NotFoundError,
    OutputExistsError,
    PermissionDeniedError,
    QubicoError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    SubmissionUncertainError,
    TaskFailedError,
    TransportError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from .journal import Journal
from .media import Image, ImageInput, Video, VideoInput
from .models import (
    AccountInfo,
    Task,
    TaskConfig,
    TaskError,
    TaskMeta,
    TaskOutput,
    TaskStatus,
    TaskUsage,
    Usage,
    WebhookConfig,
)
from .polling import PollPolicy
from .requests import FaceSwap, MultiFaceSwap, RawTask, Request, RequestLike, VideoFaceSwap
from .retry import RetryPolicy
from .webhooks import WebhookEvent, WebhookHub

__all__ = [
    "APIError",
    "AccountInfo",
    "AuthenticationError",
    "BadRequestError",
    "BatchReport",
    "BudgetExceededError",
    "ClientClosedError",
    "DownloadError",
    "ExtensionPolicy",
    "FaceSwap",
    "HTTPRequest",
    "HTTPResponse",
    "HTTPTransport",
    "Image",
    "ImageInput",
    "InsufficientCreditError",
    "InsufficientPlanError",
    "InvalidInputError",
    "Job",
    "JobLike",
    "Journal",
    "JournalClosedError",
    "JournalError",
    "MalformedResponseError",
    "MalformedWebhookError",
    "MissingApiKeyError",
    "MockTransport",
    "MultiFaceSwap",
    "NotFoundError",
    "Outcome",
    "OutcomeStatus",
    "OutputExistsError",
    "Pacing",
    "PermissionDeniedError",
    "PollPolicy",
    "Prices",
    "Progress",
    "QubicoClient",
    "QubicoError",
    "RateLimitError",
    "RawTask",
    "Request",
    "RequestLike",
    "ResultExpiredError",
    "RetryPolicy",
    "ServerError",
    "SubmissionUncertainError",
    "Task",
    "TaskConfig",
    "TaskError",
    "TaskFailedError",
    "TaskMeta",
    "TaskOutput",
    "TaskStatus",
    "TaskUsage",
    "Timeouts",
    "TransportError",
    "Usage",
    "Video",
    "VideoFaceSwap",
    "VideoInput",
    "WaitTimeoutError",
    "WebhookConfig",
    "WebhookEvent",
    "WebhookHub",
    "WebhookVerificationError",
    "__version__",
]

# A library logs, the application decides where it goes: nothing is printed unless configured.
_logging.getLogger("qubico_async").addHandler(_logging.NullHandler())
