"""The offline face-swap engine: detection counts and order, locality of the swap, error paths, video."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")

from qubico_async.testing import _faceswap as fs  # noqa: E402
from tests._helpers import ASTRONAUT, COFFEE, GROUP, HOPPER, changed, decode, region  # noqa: E402


def assert_only_face_changed(before: Any, after: Any, face: fs.Face) -> None:
    """>99 % of pixels outside the grown face box are unchanged, and a good part of the box itself changed."""
    diff, inside = changed(before, after), region(before.shape, face)
    assert diff[~inside].mean() < 0.01
    assert diff[region(before.shape, face, grow=0.0)].mean() > 0.15


@pytest.mark.parametrize(
    ("image", "count"),
    [(ASTRONAUT, 1), (HOPPER, 1), (GROUP, 2), (COFFEE, 0)],
    ids=["astronaut", "hopper", "group", "coffee"],
)
def test_detect_counts(image: bytes, count: int) -> None:
    assert fs.engine_available()
    assert len(fs.detect_faces(image)) == count


def test_group_faces_are_numbered_left_to_right() -> None:
    left, right = fs.detect_faces(GROUP)
    assert left.x + left.w / 2 < right.x + right.w / 2
    assert left.area < right.area  # the largest face is not face 0
    assert right.x > 512 > left.x + left.w


def test_swap_face_changes_only_the_face() -> None:
    out = fs.swap_face(ASTRONAUT, HOPPER)
    assert out[:3] == b"\xff\xd8\xff"  # JPEG in, JPEG out
    before, after = decode(ASTRONAUT), decode(out)
    assert after.shape == before.shape
    (face,) = fs.detect_faces(ASTRONAUT)
    assert_only_face_changed(before, after, face)
    assert len(fs.detect_faces(out)) == 1


def test_swap_face_png_is_lossless_outside_the_face() -> None:
    ok, png = cv2.imencode(".png", decode(HOPPER))
    assert ok
    out = fs.swap_face(png.tobytes(), ASTRONAUT)
    assert out[:8] == b"\x89PNG\r\n\x1a\n"
    before, after = decode(png.tobytes()), decode(out)
    (face,) = fs.detect_faces(HOPPER)
    assert_only_face_changed(before, after, face)
    assert not changed(before, after, tolerance=0)[~region(before.shape, face)].any()  # lossless: exact


def test_swap_face_keeps_webp_format() -> None:
    webp = cv2.imencode(".webp", decode(ASTRONAUT), [cv2.IMWRITE_WEBP_QUALITY, 90])[1].tobytes()
    out = fs.swap_face(webp, HOPPER)
    assert (out[:4], out[8:12]) == (b"RIFF", b"WEBP")
    assert decode(out).shape == decode(ASTRONAUT).shape


def test_concurrent_swaps_match_a_single_swap() -> None:
    """Each thread borrows its own cascades, so parallel calls give the same bytes as a lone call."""
    expected = fs.swap_face(ASTRONAUT, HOPPER)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: fs.swap_face(ASTRONAUT, HOPPER), range(4)))
    assert results == [expected] * 4


def test_without_opencv_the_functions_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "_HAVE_CV", False)
    assert not fs.engine_available()
    assert "qubico_async[faces]" in fs.ENGINE_UNAVAILABLE_REASON
    with pytest.raises(RuntimeError, match="opencv-python-headless<5"):
        fs.swap_face(ASTRONAUT, HOPPER)
    with pytest.raises(RuntimeError, match="opencv-python-headless<5"):
        fs.detect_faces(ASTRONAUT)


def test_group_single_swap_replaces_the_largest_face_only() -> None:
    left, right = fs.detect_faces(GROUP)
    before, after = decode(GROUP), decode(fs.swap_face(GROUP, ASTRONAUT))
    assert_only_face_changed(before, after, right)
    assert changed(before, after)[region(before.shape, left)].mean() < 0.01


def test_multi_swap_follows_the_indices() -> None:
    left, right = fs.detect_faces(GROUP)
    before, after = decode(GROUP), decode(fs.swap_faces(GROUP, HOPPER, [0], [0]))
    assert_only_face_changed(before, after, left)
    assert changed(before, after)[region(before.shape, right)].mean() < 0.01


def test_multi_swap_with_empty_indices_pairs_faces_by_position() -> None:
    left, right = fs.detect_faces(GROUP)
    mirrored = cv2.imencode(".jpg", cv2.flip(decode(GROUP), 1))[1].tobytes()  # Hopper left, astronaut right
    before, after = decode(GROUP), decode(fs.swap_faces(GROUP, mirrored, [], []))  # 0->0 and 1->1
    diff = changed(before, after)
    assert diff[~(region(before.shape, left) | region(before.shape, right))].mean() < 0.01
    for face in (left, right):
        assert diff[region(before.shape, face, grow=0.0)].mean() > 0.15


@pytest.mark.parametrize(
    ("swap_index", "target_index", "message"),
    [
        ([0], [3], "target_faces_index 3 out of range: 2 faces detected in target_image"),
        ([1], [0], "swap_faces_index 1 out of range: 1 face detected in swap_image"),
        ([0], [-1], "target_faces_index -1 out of range"),
        ([0, 0], [1], "must have the same length"),
    ],
)
def test_bad_face_index(swap_index: list[int], target_index: list[int], message: str) -> None:
    with pytest.raises(fs.FaceIndexError, match=message):
        fs.swap_faces(GROUP, HOPPER, swap_index, target_index)


def test_no_face_in_target_or_swap() -> None:
    with pytest.raises(fs.NoFaceError, match="no face detected in target_image"):
        fs.swap_face(COFFEE, HOPPER)
    with pytest.raises(fs.NoFaceError, match="no face detected in swap_image"):
        fs.swap_face(ASTRONAUT, COFFEE)
    with pytest.raises(fs.NoFaceError, match="swap_image"):
        fs.swap_faces(GROUP, COFFEE, [0], [0])


@pytest.mark.parametrize("garbage", [b"", b"not an image", ASTRONAUT[:200]])
def test_undecodable_input(garbage: bytes) -> None:
    with pytest.raises(fs.BadMediaError, match="could not decode target_image"):
        fs.swap_face(garbage, HOPPER)
    with pytest.raises(fs.BadMediaError, match="could not decode swap_image"):
        fs.swap_face(ASTRONAUT, garbage)
    with pytest.raises(fs.BadMediaError):
        fs.detect_faces(garbage)
    assert issubclass(fs.BadMediaError, fs.SwapError)


# ---- video ----------------------------------------------------------------------------------------------


def read_frames(data: bytes, tmp_path: Path) -> list[Any]:
    path = tmp_path / "read.mp4"
    path.write_bytes(data)
    cap, frames = cv2.VideoCapture(str(path)), []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames
            frames.append(frame)
    finally:
        cap.release()


@pytest.fixture(scope="module")
def astronaut_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """8 frames of the astronaut at 256x256, 'mp4v'."""
    path = tmp_path_factory.mktemp("video") / "astronaut.mp4"
    frame = cv2.resize(decode(ASTRONAUT), (256, 256), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 8.0, (256, 256))
    assert writer.isOpened()
    for _ in range(8):
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def test_swap_video_round_trip(astronaut_mp4: bytes, tmp_path: Path) -> None:
    before = read_frames(astronaut_mp4, tmp_path)
    assert len(before) == 8
    out = fs.swap_video(astronaut_mp4, HOPPER)
    after = read_frames(out, tmp_path)
    assert len(after) == len(before)
    (face,) = fs.detect_faces(cv2.imencode(".png", before[0])[1].tobytes())
    for b, a in zip(before, after, strict=True):
        assert a.shape == b.shape == (256, 256, 3)
        diff = changed(b, a, tolerance=16)  # two lossy 'mp4v' generations
        assert diff[region(b.shape, face, grow=0.0)].mean() > 0.15
        assert diff[~region(b.shape, face)].mean() < 0.02


def test_swap_video_frame_limit(astronaut_mp4: bytes) -> None:
    with pytest.raises(fs.BadMediaError, match="8 frames; the limit is 5"):
        fs.swap_video(astronaut_mp4, HOPPER, max_frames=5)


def test_swap_video_errors(astronaut_mp4: bytes) -> None:
    with pytest.raises(fs.NoFaceError, match="no face detected in swap_image"):
        fs.swap_video(astronaut_mp4, COFFEE)
    with pytest.raises(fs.BadMediaError, match="target_video"):
        fs.swap_video(b"\x00\x00\x00\x18ftypmp42 but not really a video", HOPPER)
    with pytest.raises(fs.FaceIndexError, match="swap_faces_index 2 out of range"):
        fs.swap_video(astronaut_mp4, HOPPER, [2], [0])
