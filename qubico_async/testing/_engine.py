"""Plugs the offline face-swap engine into the emulator as its processor.

With the `faces` extra (OpenCV < 5 and numpy) the emulator really swaps faces, following the
service's rules; without it the result is the target unchanged, and `engine_status()` says so.
"""

from __future__ import annotations

from typing import Literal

from . import _faceswap
from ._job import Processor, SwapJob, identity

__all__ = [
    "EngineName",
    "ProcessorChoice",
    "engine_processor",
    "engine_status",
    "face_swap_processor",
    "resolve",
]

EngineName = Literal["opencv", "identity", "custom"]
ProcessorChoice = Processor | Literal["auto"] | None
"""What `Emulator(processor=...)` takes: "auto" (the engine when it can run, else identity), a
processor, or None / `identity` (the result is the target unchanged; no worker thread)."""


def face_swap_processor(job: SwapJob) -> bytes:
    """The service's rules: `face-swap` puts the swap image's largest face on the target's largest
    face; `multi-face-swap` maps `swap_faces_index[i]` onto `target_faces_index[i]` (faces numbered
    left to right); video swaps every frame. A rule that cannot be met raises `SwapError`, which
    fails the task with that message."""
    if job.is_video:
        return _faceswap.swap_video(job.target, job.swap, job.swap_faces_index, job.target_faces_index)
    if job.task_type == "multi-face-swap":
        return _faceswap.swap_faces(job.target, job.swap, job.swap_faces_index, job.target_faces_index)
    return _faceswap.swap_face(job.target, job.swap)


def engine_processor() -> Processor | None:
    """The real-swap processor when the engine can run here, else None (the emulator's identity)."""
    return face_swap_processor if _faceswap.engine_available() else None


def engine_status() -> str:
    """One line for logs and the demo: which engine the emulator uses."""
    if _faceswap.engine_available():
        return "Face-swap engine: OpenCV (classical swap: detect, align on the eyes, colour-match, blend)."
    return "Face-swap engine unavailable: " + _faceswap.ENGINE_UNAVAILABLE_REASON


def resolve(choice: ProcessorChoice) -> tuple[Processor | None, EngineName]:
    """(processor to run, None for the inline identity; which engine that is) for a choice."""
    if isinstance(choice, str):
        if choice != "auto":
            raise ValueError(f'processor must be "auto", a callable or None, got {choice!r}')
        choice = engine_processor()
    if choice is None or choice is identity:
        return None, "identity"
    if choice is face_swap_processor:
        return choice, "opencv"
    return choice, "custom"
