"""The emulator's own judge of video inputs, as the service judges them: is this a usable MP4?

At most 600 frames (the sample count of the first video track) and 10 MB; every box must fit its
parent. A streamed MP4 (no `moov`, or fragments) has no known frame count and is let through.
Independent of the SDK's pre-check, and hostile input raises only `MediaRejected` (see `_mediacheck`).
"""

from __future__ import annotations

import struct

from attrs import frozen

from ._mediacheck import MAX_BYTES, MAX_FRAMES, MediaRejected

__all__ = ["VideoFacts", "judge_video", "read_video"]


@frozen
class VideoFacts:
    frames: int | None
    """Sample count of the first video track; None when the file has no `moov` (streamed MP4)."""


def _box_list(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, end) of each box in data[start:end]; every box must fit its parent."""
    boxes, pos = [], start
    while pos < end:
        if pos + 8 > end:
            raise MediaRejected("truncated MP4 (a box header runs past its parent)")
        size, btype = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                raise MediaRejected("truncated MP4 (a box header runs past its parent)")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        elif size == 0:  # runs to the end of its parent
            size = end - pos
        if size < head or pos + size > end:
            raise MediaRejected(f"truncated MP4 (box {btype!r} runs past its parent)")
        boxes.append((btype, pos + head, pos + size))
        pos += size
    return boxes


def _first(data: bytes, span: tuple[int, int], btype: bytes) -> tuple[int, int] | None:
    return next(((s, e) for t, s, e in _box_list(data, *span) if t == btype), None)


def read_video(data: bytes) -> VideoFacts:
    """The frame count of an MP4's first video track (None when it has no `moov`)."""
    if len(data) == 0:
        raise MediaRejected("the file is empty")
    if len(data) < 8 or data[4:8] != b"ftyp":
        raise MediaRejected("not an MP4 video")
    moov = _first(data, (0, len(data)), b"moov")
    if moov is None:
        return VideoFacts(None)
    streamed = _first(data, moov, b"mvex") is not None
    for btype, start, end in _box_list(data, *moov):
        if btype != b"trak":
            continue
        mdia = _first(data, (start, end), b"mdia")
        hdlr = _first(data, mdia, b"hdlr") if mdia else None
        if mdia is None or hdlr is None or data[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
            continue
        if streamed:
            return VideoFacts(None)
        minf = _first(data, mdia, b"minf")
        stbl = _first(data, minf, b"stbl") if minf else None
        return VideoFacts(_samples(data, stbl) if stbl else None)
    raise MediaRejected("the MP4 has no video track")


def _samples(data: bytes, stbl: tuple[int, int]) -> int | None:
    for name in (b"stsz", b"stz2"):
        box = _first(data, stbl, name)
        if box is not None:
            if box[1] - box[0] < 12:
                raise MediaRejected(f"truncated MP4 ({name.decode()} box too small)")
            return int.from_bytes(data[box[0] + 8 : box[0] + 12], "big")
    stts = _first(data, stbl, b"stts")
    if stts is None:
        return None
    if stts[1] - stts[0] < 8:
        raise MediaRejected("truncated MP4 (stts box too small)")
    entries = int.from_bytes(data[stts[0] + 4 : stts[0] + 8], "big")
    if stts[0] + 8 + 8 * entries > stts[1]:
        raise MediaRejected("truncated MP4 (stts entries run past the box)")
    return sum(int.from_bytes(data[p : p + 4], "big") for p in range(stts[0] + 8, stts[0] + 8 + 8 * entries, 8))


def judge_video(data: bytes) -> VideoFacts:
    """Accept or refuse a target video as the service would; `MediaRejected` says why."""
    if len(data) > MAX_BYTES:
        raise MediaRejected(f"{len(data)} bytes; max {MAX_BYTES} (10 MiB)")
    facts = read_video(data)
    if facts.frames is not None and facts.frames > MAX_FRAMES:
        raise MediaRejected(f"{facts.frames} frames; max {MAX_FRAMES}")
    return facts
