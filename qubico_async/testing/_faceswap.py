"""Offline face-swap engine for the emulator: a classical OpenCV swap, not a neural one.

Haar faces on a <=640 px grey copy, Haar eyes per face, a similarity warp taking the source eyes onto the
target eyes, LAB colour transfer under an inner-face ellipse, then ``seamlessClone``: only that ellipse
changes. Needs the ``faces`` extra; without it the module imports, ``engine_available()`` is False and the
swap functions raise ``RuntimeError``. Synchronous and CPU-bound: run it in a worker thread (OpenCV releases
the GIL). ``CascadeClassifier`` is not thread-safe, so each call borrows cascades from a lock-guarded pool.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

try:
    import cv2
    import numpy as np
except ImportError:  # pragma: no cover - exercised only without the extra
    _HAVE_CV = False
else:
    _HAVE_CV = True

ENGINE_UNAVAILABLE_REASON = (
    "install qubico_async[faces] (opencv-python-headless<5, numpy) for a real swap; "
    "without it the emulator returns the target image unchanged"
)
_FACE_XML = "haarcascade_frontalface_default.xml"
_EYE_XML = "haarcascade_eye.xml"
_WORK_SIDE = 640  # detect on a copy no larger than this
_JPEG_QUALITY = 92
_WEBP_QUALITY = 92

Image = Any  # a BGR uint8 array; Any keeps --strict independent of the cv2 stubs' version


class SwapError(Exception):
    """A swap failed the way the service fails; ``str(exc)`` is the task's ``error.message``."""


class NoFaceError(SwapError):
    """No face was found in an input image."""


class FaceIndexError(SwapError):
    """A face index is out of range, or the two index lists do not pair up."""


class BadMediaError(SwapError):
    """An input could not be decoded, or a video has too many frames."""


@frozen
class Face:
    """A face box in image pixels."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


def engine_available() -> bool:
    """True when cv2 4.x with ``CascadeClassifier`` and its bundled Haar XMLs, and numpy, import."""
    if not _HAVE_CV or not hasattr(cv2, "CascadeClassifier"):
        return False
    major = str(getattr(cv2, "__version__", "0")).split(".")[0]
    return major.isdigit() and int(major) < 5 and os.path.isfile(os.path.join(_haar_folder(), _FACE_XML))


def _haar_folder() -> str:
    """The Haar XML folder inside the cv2 wheel (``cv2.data`` is untyped, and empty in OpenCV 5)."""
    return str(getattr(getattr(cv2, "data", None), "haarcascades", ""))


def _require() -> None:
    if not engine_available():
        raise RuntimeError(ENGINE_UNAVAILABLE_REASON)


_pool_lock = threading.Lock()
_pool: list[tuple[Any, Any]] = []  # idle (face, eye) cascade pairs; at most one per concurrent caller


@contextlib.contextmanager
def _cascades() -> Iterator[tuple[Any, Any]]:
    """Borrow a (face, eye) cascade pair; a new pair is loaded (~20 ms) only when none is idle."""
    with _pool_lock:
        pair = _pool.pop() if _pool else None
    if pair is None:
        folder = _haar_folder()
        pair = (
            cv2.CascadeClassifier(os.path.join(folder, _FACE_XML)),
            cv2.CascadeClassifier(os.path.join(folder, _EYE_XML)),
        )
        if pair[0].empty() or pair[1].empty():
            raise RuntimeError(f"could not load the Haar cascades from {folder}")
    try:
        yield pair
    finally:
        with _pool_lock:
            _pool.append(pair)


def _decode(data: bytes, field: str) -> Image:
    buf = np.frombuffer(data, np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    except cv2.error:
        img = None
    if img is None:
        raise BadMediaError(f"could not decode {field}: not a valid JPEG, PNG or WebP image")
    return img


def _encode_like(img: Image, original: bytes) -> bytes:
    """Encode in the original's format: PNG stays PNG, WebP stays WebP, anything else becomes JPEG."""
    if original[:8] == b"\x89PNG\r\n\x1a\n":
        ext, params = ".png", []
    elif original[:4] == b"RIFF" and original[8:12] == b"WEBP":
        ext, params = ".webp", [cv2.IMWRITE_WEBP_QUALITY, _WEBP_QUALITY]
    else:
        ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise SwapError(f"could not encode the result as {ext[1:]}")
    return bytes(buf.tobytes())


def _find_faces(img: Image, face_cc: Any) -> list[Face]:
    """Faces left to right by box centre (ties: top to bottom); drops a box centred inside a larger one."""
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    scale = min(1.0, _WORK_SIDE / max(grey.shape))
    if scale < 1.0:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    side = max(24, max(grey.shape) // 20)  # 24 px is the cascade's own window
    boxes = face_cc.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    height, width = img.shape[:2]
    found = []
    for bx, by, bw, bh in boxes:
        x, y = max(0, round(bx / scale)), max(0, round(by / scale))
        found.append(Face(x, y, min(round(bw / scale), width - x), min(round(bh / scale), height - y)))
    found.sort(key=lambda f: f.area, reverse=True)
    kept: list[Face] = []
    for f in found:
        cx, cy = f.x + f.w / 2, f.y + f.h / 2
        if not any(k.x <= cx <= k.x + k.w and k.y <= cy <= k.y + k.h for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: (f.x + f.w / 2, f.y + f.h / 2))


def _faces_or_raise(img: Image, face_cc: Any, field: str) -> list[Face]:
    faces = _find_faces(img, face_cc)
    if not faces:
        raise NoFaceError(f"no face detected in {field}")
    return faces


def _largest(faces: Sequence[Face]) -> int:
    return max(range(len(faces)), key=lambda i: faces[i].area)


def _eyes(img: Image, face: Face, eye_cc: Any) -> Any:
    """Eye centres (image-left first) as a 2x2 float32 array. Eyes are searched in the upper half of the box
    (upscaled for small faces); a single eye is mirrored about the box's centre line; an implausible or
    missing pair falls back to fixed proportions of the box."""
    x, y, w, h = face.x, face.y, face.w, face.h
    zoom = max(1.0, 120 / w)
    roi = cv2.cvtColor(img[y : y + h // 2, x : x + w], cv2.COLOR_BGR2GRAY)
    if zoom > 1.0:
        roi = cv2.resize(roi, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
    zw = round(w * zoom)
    found = eye_cc.detectMultiScale(
        cv2.equalizeHist(roi), 1.1, 4, minSize=(zw // 10, zw // 10), maxSize=(zw // 3, zw // 3)
    )
    centres = [(x + (ex + ew / 2) / zoom, y + (ey + eh / 2) / zoom, ew) for ex, ey, ew, eh in found]
    mid = x + w / 2
    left = max((c for c in centres if c[0] < mid), key=lambda c: c[2], default=None)
    right = max((c for c in centres if c[0] >= mid), key=lambda c: c[2], default=None)
    if left is None and right is not None:
        left = (2 * mid - right[0], right[1], right[2])
    if right is None and left is not None:
        right = (2 * mid - left[0], left[1], left[2])
    if left is not None and right is not None:
        dist = math.hypot(right[0] - left[0], right[1] - left[1])
        if 0.2 * w <= dist <= 0.6 * w and abs(right[1] - left[1]) <= 0.25 * dist:
            return np.array([left[:2], right[:2]], np.float32)
    return np.array([(x + 0.3 * w, y + 0.38 * h), (x + 0.7 * w, y + 0.38 * h)], np.float32)


def _similarity(src: Any, dst: Any) -> Any:
    """2x3 rotation + uniform scale + shift taking the two ``src`` points onto the two ``dst`` points."""
    vs, vd = src[1] - src[0], dst[1] - dst[0]
    scale = float(np.hypot(*vd)) / max(float(np.hypot(*vs)), 1e-6)
    angle = math.atan2(vd[1], vd[0]) - math.atan2(vs[1], vs[0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return np.hstack([rot, (dst[0] - rot @ src[0])[:, None]]).astype(np.float32)


def _face_mask(shape: tuple[int, ...], face: Face, eyes: Any) -> Any:
    """Inner-face ellipse in eye-distance units (independent of how loose the Haar box is), clipped to the
    box grown by 10 % (20 % below, for the chin) so the change can never leave the face."""
    (lx, ly), (rx, ry) = (float(v) for v in eyes[0]), (float(v) for v in eyes[1])
    d, angle = math.hypot(rx - lx, ry - ly), math.atan2(ry - ly, rx - lx)
    centre = (
        round((lx + rx) / 2 - 0.45 * d * math.sin(angle)),
        round((ly + ry) / 2 + 0.45 * d * math.cos(angle)),
    )
    mask = np.zeros(shape[:2], np.uint8)
    cv2.ellipse(mask, centre, (round(0.8 * d), round(1.1 * d)), math.degrees(angle), 0, 360, 255, -1)
    clip = np.zeros_like(mask)
    mx, my = face.w // 10, face.h // 10
    clip[max(0, face.y - my) : face.y + face.h + 2 * my, max(0, face.x - mx) : face.x + face.w + mx] = 255
    return cv2.bitwise_and(mask, clip)


def _match_colour(patch: Image, ref: Image, mask: Any) -> Image:
    """Reinhard mean/std transfer in LAB, statistics taken under the mask only."""
    p = cv2.cvtColor(patch, cv2.COLOR_BGR2LAB).astype(np.float32)
    r = cv2.cvtColor(ref, cv2.COLOR_BGR2LAB).astype(np.float32)
    m = mask > 0
    out = (p - p[m].mean(0)) * ((r[m].std(0) + 1e-6) / (p[m].std(0) + 1e-6)) + r[m].mean(0)
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)


def _paste(dst: Image, face: Face, dst_eyes: Any, src: Image, src_eyes: Any) -> Image:
    """Return ``dst`` with the source face (given by its eyes) blended onto ``face``."""
    mask = _face_mask(dst.shape, face, dst_eyes)
    x, y, w, h = cv2.boundingRect(mask)
    if w < 8 or h < 8:  # a face this small cannot be blended; leave it as it is
        return dst
    warp = _similarity(src_eyes, dst_eyes)
    warp[:, 2] -= (x, y)  # warp only the mask's bounding box
    patch = cv2.warpAffine(src, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    roi_mask = mask[y : y + h, x : x + w]
    patch = _match_colour(patch, dst[y : y + h, x : x + w], roi_mask)
    # seamlessClone centres the mask's bounding box on the given point, with integer halving.
    sx, sy, sw, sh = cv2.boundingRect(roi_mask)
    return cv2.seamlessClone(patch, dst, roi_mask, (x + sx + sw // 2, y + sy + sh // 2), cv2.NORMAL_CLONE)


def _pairs(
    swap_index: Sequence[int], target_index: Sequence[int], n_swap: int, n_target: int | None
) -> list[tuple[int, int]]:
    """Check the index lists and pair them up; ``n_target`` is None for video (faces vary per frame)."""
    if len(swap_index) != len(target_index):
        raise FaceIndexError(
            "swap_faces_index and target_faces_index must have the same length "
            f"(got {len(swap_index)} and {len(target_index)})"
        )
    checks = (("swap", swap_index, n_swap), ("target", target_index, n_target))
    for which, indices, count in checks:
        for i in indices:
            if i < 0 or (count is not None and i >= count):
                found = "1 face" if count == 1 else f"{count} faces"
                why = f"{found} detected in {which}_image" if count is not None else "indices start at 0"
                raise FaceIndexError(f"{which}_faces_index {i} out of range: {why}")
    return list(zip(swap_index, target_index, strict=True))


def detect_faces(image: bytes) -> list[Face]:
    """Face boxes in ``image``, in the documented stable order: left to right by box centre x (ties: top to
    bottom), like the real service's "usually left to right" numbering."""
    _require()
    img = _decode(image, "image")
    with _cascades() as (face_cc, _):
        return _find_faces(img, face_cc)


def swap_face(target: bytes, swap: bytes) -> bytes:
    """Single face-swap: the largest face of ``swap`` replaces the largest face of ``target``.
    The result is encoded like ``target`` (JPEG q92, PNG or WebP)."""
    _require()
    dst, src = _decode(target, "target_image"), _decode(swap, "swap_image")
    with _cascades() as (face_cc, eye_cc):
        t_faces = _faces_or_raise(dst, face_cc, "target_image")
        s_faces = _faces_or_raise(src, face_cc, "swap_image")
        t_face, s_face = t_faces[_largest(t_faces)], s_faces[_largest(s_faces)]
        t_eyes, s_eyes = _eyes(dst, t_face, eye_cc), _eyes(src, s_face, eye_cc)
    return _encode_like(_paste(dst, t_face, t_eyes, src, s_eyes), target)


def swap_faces(target: bytes, swap: bytes, swap_faces_index: Sequence[int], target_faces_index: Sequence[int]) -> bytes:
    """Multi face-swap: face ``swap_faces_index[i]`` of ``swap`` goes onto face ``target_faces_index[i]`` of
    ``target`` (indices in ``detect_faces`` order). Both lists empty: faces 0..min(n_swap, n_target)-1 go
    onto the same indices. Boxes and eyes all come from the original target, so pastes do not interact."""
    _require()
    dst, src = _decode(target, "target_image"), _decode(swap, "swap_image")
    with _cascades() as (face_cc, eye_cc):
        t_faces = _faces_or_raise(dst, face_cc, "target_image")
        s_faces = _faces_or_raise(src, face_cc, "swap_image")
        if not swap_faces_index and not target_faces_index:
            n = min(len(s_faces), len(t_faces))
            swap_faces_index = target_faces_index = range(n)
        pairs = _pairs(swap_faces_index, target_faces_index, len(s_faces), len(t_faces))
        s_eyes = {s: _eyes(src, s_faces[s], eye_cc) for s, _ in pairs}
        t_eyes = [_eyes(dst, t_faces[t], eye_cc) for _, t in pairs]
    out = dst
    for (s, t), eyes in zip(pairs, t_eyes, strict=True):
        out = _paste(out, t_faces[t], eyes, src, s_eyes[s])
    return _encode_like(out, target)


def swap_video(
    target_video: bytes,
    swap: bytes,
    swap_faces_index: Sequence[int] = (),
    target_faces_index: Sequence[int] = (),
    max_frames: int = 600,
) -> bytes:
    """Video face-swap, MP4 in and MP4 ('mp4v') out, frame by frame.

    Both index lists empty: the largest swap face replaces the largest face of every frame. Otherwise the
    pairs work as in ``swap_faces``, per frame; a target index beyond a frame's faces is skipped for that
    frame, and frames without a face pass through unchanged. Over ``max_frames`` frames is a BadMediaError.
    """
    _require()
    src = _decode(swap, "swap_image")
    with _cascades() as (face_cc, eye_cc):
        s_faces = _faces_or_raise(src, face_cc, "swap_image")
        pairs = _pairs(swap_faces_index, target_faces_index, len(s_faces), None)
        s_eyes = {s: _eyes(src, s_faces[s], eye_cc) for s in {*swap_faces_index, _largest(s_faces)}}

    def swap_frame(frame: Image, face_cc: Any, eye_cc: Any) -> Image:
        faces = _find_faces(frame, face_cc)
        todo = pairs or ([(_largest(s_faces), _largest(faces))] if faces else [])
        t_eyes = [(s, t, _eyes(frame, faces[t], eye_cc)) for s, t in todo if t < len(faces)]
        for s, t, eyes in t_eyes:
            frame = _paste(frame, faces[t], eyes, src, s_eyes[s])
        return frame

    with tempfile.TemporaryDirectory(prefix="qubico-faceswap-") as tmp:
        in_path, out_path = Path(tmp, "in.mp4"), Path(tmp, "out.mp4")
        in_path.write_bytes(target_video)
        _transcode(str(in_path), str(out_path), max_frames, swap_frame)
        return out_path.read_bytes()


def _transcode(in_path: str, out_path: str, max_frames: int, edit: Callable[[Image, Any, Any], Image]) -> None:
    """Decode ``in_path`` frame by frame, ``edit(frame, face_cc, eye_cc)`` each one, write an 'mp4v' MP4."""
    cap, writer = cv2.VideoCapture(in_path), None
    try:
        if not cap.isOpened():
            raise BadMediaError("could not decode target_video: not a valid MP4 video")
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # exact for MP4; the loop re-checks
        if declared > max_frames:
            raise BadMediaError(f"target_video has {declared} frames; the limit is {max_frames}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = fps if math.isfinite(fps) and fps > 0 else 25.0
        with _cascades() as cascades:
            for count in itertools.count(1):
                ok, frame = cap.read()
                if not ok:
                    break
                if count > max_frames:
                    raise BadMediaError(f"target_video has more than {max_frames} frames")
                if writer is None:
                    size = (frame.shape[1], frame.shape[0])
                    writer = cv2.VideoWriter(out_path, cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
                    if not writer.isOpened():
                        raise SwapError("could not open an MP4 writer for the result")
                writer.write(edit(frame, *cascades))
        if writer is None:
            raise BadMediaError("could not decode target_video: it has no frames")
    finally:
        cap.release()
        if writer is not None:
            writer.release()
