"""What emulated tasks cost: the task kinds the emulator knows, their prices in USD and in points."""

from __future__ import annotations

from collections.abc import Mapping

from attrs import frozen

__all__ = [
    "IMAGE_MODEL",
    "POINTS_PER_USD",
    "PRICES",
    "VIDEO_FALLBACK_FRAMES",
    "VIDEO_MODEL",
    "Price",
]

IMAGE_MODEL = "Qubico/image-toolkit"
VIDEO_MODEL = "Qubico/video-toolkit"

POINTS_PER_USD = 100_000_000
"""GUESS, published nowhere: 1,000,000 points = $0.01. Real usages are integers in points (a Qubico
Flux task froze and consumed 2,000,000); this rate only turns the emulator's USD prices and balance
into points and back. Do not rely on it for real budgets."""


@frozen
class Price:
    """What one task consumes, in USD: `usd` per task, or per frame when `per_frame`."""

    usd: float
    per_frame: bool = False

    def cost(self, frames: int | None) -> float:
        if not self.per_frame:
            return self.usd
        return round(self.usd * (frames if frames is not None else VIDEO_FALLBACK_FRAMES), 6)

    def points(self, frames: int | None) -> int:
        """The cost in points (integers, as `meta.usage` carries them), at the guessed POINTS_PER_USD."""
        return round(self.cost(frames) * POINTS_PER_USD)


VIDEO_FALLBACK_FRAMES = 100
"""Frames billed for a video whose frame count the header does not give."""

PRICES: Mapping[tuple[str, str], Price] = {
    (IMAGE_MODEL, "face-swap"): Price(0.01),
    (IMAGE_MODEL, "multi-face-swap"): Price(0.015),
    (VIDEO_MODEL, "face-swap"): Price(0.0005, per_frame=True),
}
"""(model, task_type) -> price. The known task kinds are exactly the keys."""
