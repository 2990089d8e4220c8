"""qubico_async: an asyncio-native SDK for PiAPI's Qubico face-swap API.

async with QubicoClient() as client:
    task = await client.face_swap("target.jpg", "face.png")
    await client.download(task, "out.png")
"""

import logging as _logging

from ._transport import Timeouts
from ._version import __version__
from .batch import BatchReport, Job, Outcome, OutcomeStatus, Prices, Progress
from .client import QubicoClient
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ClientClosedError,
    InsufficientCreditError,
    InsufficientPlanError,
    InvalidInputError,
    MalformedResponseError,
    MissingApiKeyError,
    NotFoundError,
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
from .media import Image, Video
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
from .requests import FaceSwap, MultiFaceSwap, RawTask, VideoFaceSwap
from .retry import RetryPolicy

__all__ = [
    "APIError",
    "AccountInfo",
    "AuthenticationError",
    "BatchReport",
    "BadRequestError",
    "BudgetExceededError",
    "ClientClosedError",
    "FaceSwap",
    "Image",
    "InsufficientCreditError",
    "InsufficientPlanError",
    "InvalidInputError",
    "Job",
    "MalformedResponseError",
    "MissingApiKeyError",
    "MultiFaceSwap",
    "NotFoundError",
    "Outcome",
    "OutcomeStatus",
    "PermissionDeniedError",
    "PollPolicy",
    "Prices",
    "Progress",
    "QubicoClient",
    "QubicoError",
    "RateLimitError",
    "RawTask",
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
    "WaitTimeoutError",
    "WebhookConfig",
    "WebhookVerificationError",
    "__version__",
]

# A library logs, the application decides where it goes: nothing is printed unless configured.
_logging.getLogger("qubico_async").addHandler(_logging.NullHandler())
