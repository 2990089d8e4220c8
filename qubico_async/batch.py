"""What a batch takes and gives: `Job`, `Outcome`, `Progress`, `BatchReport` and `Prices`.

The engine that runs a batch lives in `_batch_runner.py`; `QubicoClient.swap_many` starts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from attrs import field, frozen, validators

from .models import Task, Usage
from .requests import VIDEO_MODEL, FaceSwap, MultiFaceSwap, RawTask, Request, RequestLike, VideoFaceSwap, coerce_request

__all__ = ["BatchReport", "Job", "JobLike", "Outcome", "OutcomeStatus", "Prices", "Progress"]

OutcomeStatus = Literal["succeeded", "failed", "uncertain", "skipped"]
"""`succeeded`/`failed`: the task finished. `uncertain`: its create may or may not have happened
(see the journal; rerun with `resubmit_uncertain=True` to pay again). `skipped`: not submitted
(budget, account error, or already done in the journal)."""


def _to_request(value: RequestLike) -> Request:
    return coerce_request(value)


@frozen
class Job:
    """A request with an optional key that identifies it across runs (default: its content)."""

    request: Request = field(converter=_to_request)
    key: str | None = field(default=None, validator=validators.optional(validators.instance_of(str)))


JobLike = Job | FaceSwap | MultiFaceSwap | VideoFaceSwap | RawTask | Mapping[str, Any]
"""What `swap_many` takes per job: a request, a unified-API dict, or a `Job` with a key."""


@frozen
class Outcome:
    """The result of one job. Exactly one per job, whatever happened."""

    job: Job
    key: str
    index: int
    status: OutcomeStatus
    task: Task | None = None
    error: BaseException | None = field(default=None, eq=False)
    reason: str = ""
    spend_usd: float = 0.0
    """Dollars counted against the budget for this job (from `Prices`)."""
    usage: Usage | None = None
    """What the service reported it charged, in its own units (`task.meta.usage`)."""
    queued_at: float = 0.0
    submitted_at: float | None = None
    finished_at: float = 0.0
    replayed: bool = False
    """True when the outcome comes from the journal of an earlier run (nothing was sent)."""

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def _rates(value: Mapping[str, float]) -> Mapping[str, float]:
    rates = dict(value)
    for unit, rate in rates.items():
        if not isinstance(unit, str) or isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0:
            raise ValueError(f"usd_per_unit must map unit names to rates >= 0, got {unit!r}: {rate!r}")
    return rates


@frozen
class Prices:
    """USD per task kind: what the budget counts. The service's usage is never read as money...

    ...unless you give a rate for its unit: `usd_per_unit={"point": 5e-9}` turns a task's reported
    `meta.usage.consume` (in points) into dollars. The service publishes no such rate, so the
    default is none: a task costs its price-table figure, or $0 when its usage shows nothing was
    charged (`consume == 0` and `frozen == 0`). The single face-swap and per-frame video prices
    are not published either: override them if your invoice says otherwise.
    """

    face_swap: float = 0.01
    multi_face_swap: float = 0.015
    video_per_frame: float = 0.002
    max_video_frames: int = 600
    usd_per_unit: Mapping[str, float] = field(factory=dict, converter=_rates)

    def estimate(self, request: Request, frames: int | None = None) -> float:
        """The most this request can cost (video: per frame, 600 frames when the count is unknown)."""
        if isinstance(request, VideoFaceSwap):
            return self.video_per_frame * (frames if frames is not None else self.max_video_frames)
        if isinstance(request, MultiFaceSwap):
            return self.multi_face_swap
        if isinstance(request, FaceSwap):
            return self.face_swap
        assert isinstance(request, RawTask)
        if request.model == VIDEO_MODEL:
            return self.video_per_frame * self.max_video_frames
        return self.multi_face_swap if request.task_type == "multi-face-swap" else self.face_swap

    def actual(self, task: Task, estimate: float) -> float:
        """What a finished task cost in USD: its estimate, unless its usage says otherwise.

        Usage showing nothing charged costs $0; usage in a unit with a rate in `usd_per_unit`
        costs `consume * rate`. Any other usage (in units without a known rate) is not money.
        """
        usage = task.meta.usage
        if usage is None:
            return estimate
        if usage.charged_nothing:
            return 0.0
        rate = self.usd_per_unit.get(usage.type)
        if rate is not None and usage.consume is not None and usage.consume >= 0:
            return float(usage.consume) * rate
        return estimate


@frozen
class Progress:
    """A snapshot for progress bars. `total` is None when the job count is unknown."""

    total: int | None
    done: int
    succeeded: int
    failed: int
    uncertain: int
    skipped: int
    in_flight: int
    spend_usd: float
    elapsed: float

    @property
    def rate(self) -> float:
        """Finished jobs per second."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, when the total is known and progress has been made."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate


@frozen
class BatchReport:
    """Counts by status, money spent, requests sent and wall time, at the end of a batch."""

    counts: Mapping[str, int]
    spend_usd: float
    """Dollars counted by the budget (from `Prices`), this run and, with a journal, earlier ones."""
    requests: Mapping[str, int]
    wall_time: float
    stopped_reason: str | None = None
    usage: Mapping[str, float] = field(factory=dict)
    """Service units consumed by this run's finished tasks, per unit type (e.g. `{"point": 4000000}`)."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())
