"""What a processor is: a function from a `SwapJob` (the task kind and its input bytes) to the
result file's bytes. `identity`, the default, returns the target unchanged."""

from __future__ import annotations

from collections.abc import Callable

from attrs import frozen

__all__ = ["Processor", "SwapJob", "identity"]


@frozen
class SwapJob:
    """What a processor gets: the task kind and its resolved input bytes."""

    model: str
    task_type: str
    target: bytes
    """The target image, or the target video for a video task."""
    swap: bytes
    swap_faces_index: tuple[int, ...] = ()
    target_faces_index: tuple[int, ...] = ()

    @property
    def is_video(self) -> bool:
        return self.model == "Qubico/video-toolkit"


Processor = Callable[[SwapJob], bytes]
"""Turns a job into the result file's bytes. Runs in a worker thread; any exception fails the task
with `str(exc)` as the error message."""


def identity(job: SwapJob) -> bytes:
    """The default processor: the result is the target unchanged."""
    return job.target
