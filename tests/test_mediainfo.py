"""Header probing: exact sizes from real and generated files, hand-built edge cases, and fuzzing.

The property everywhere: `probe_image`/`probe_video` return a result or raise `InvalidInputError`,
never another exception, and always finish quickly.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qubico_async._mediainfo import _MAX_JPEG_SEGMENTS, ImageInfo, VideoInfo, probe_image, probe_video
from qubico_async.errors import InvalidInputError
from tests._helpers import count_calls

FIXTURES = Path(__file__).parent / "fixtures"
# Fixed seeds (derandomize): the same examples every run, so a failure reproduces and the cost is stable.
FUZZ = settings(
    max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _cv2() -> Any:
    return pytest.importorskip("cv2")


def _encode(ext: str, img: Any, params: list[int] | None = None) -> bytes:
    ok, buf = _cv2().imencode(ext, img, params or [])
    assert ok
    return bytes(buf.tobytes())


def _random_image(rng: random.Random, h: int, w: int, channels: int = 3) -> Any:
    np = pytest.importorskip("numpy")
    return np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (h, w, channels), dtype=np.uint8)


# ---------------------------------------------------------------- hand-built images


def jpeg(width: int, height: int, sof: int = 0xC0, before_sof: bytes = b"") -> bytes:
    """SOI, optional segments, a SOFn frame header with one component, SOS, EOI (no real scan data)."""
    sof_seg = b"\xff" + bytes([sof]) + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + before_sof + sof_seg + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\xff\xd9"


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II5B", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def riff(chunk: bytes, payload: bytes, riff_size: int | None = None) -> bytes:
    body = b"WEBP" + chunk + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def vp8x(width: int, height: int) -> bytes:
    sizes = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return riff(b"VP8X", b"\x10\0\0\0" + sizes)


def vp8(width: int, height: int, tag: int = 0x10) -> bytes:
    return riff(b"VP8 ", bytes([tag, 0, 0]) + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\0" * 4)


def vp8l(width: int, height: int) -> bytes:
    return riff(b"VP8L", b"\x2f" + struct.pack("<I", (width - 1) | (height - 1) << 14) + b"\0" * 4)


# ---------------------------------------------------------------- hand-built MP4


def box(btype: bytes, *children: bytes, large: bool = False, to_end: bool = False) -> bytes:
    payload = b"".join(children)
    if large:
        return struct.pack(">I4sQ", 1, btype, 16 + len(payload)) + payload
    size = 0 if to_end else 8 + len(payload)
    return struct.pack(">I4s", size, btype) + payload


def full(btype: bytes, version: int, payload: bytes) -> bytes:
    return box(btype, bytes([version, 0, 0, 0]) + payload)


def tkhd(width: float, height: float, version: int = 0) -> bytes:
    times = b"\0" * (32 if version == 1 else 20)
    fixed = struct.pack(">II", int(width * 65536), int(height * 65536))
    return full(b"tkhd", version, times + b"\0" * 16 + b"\0" * 36 + fixed)


def hdlr(handler: bytes) -> bytes:
    return full(b"hdlr", 0, b"\0" * 4 + handler + b"\0" * 12 + b"name\0")


def stsd(width: int, height: int) -> bytes:
    entry = box(b"mp4v", b"\0" * 6 + b"\0\x01" + b"\0" * 16 + struct.pack(">HH", width, height) + b"\0" * 50)
    return full(b"stsd", 0, struct.pack(">I", 1) + entry)


def stsz(frames: int) -> bytes:
    return full(b"stsz", 0, struct.pack(">II", 100, frames))


def stts(*counts: int) -> bytes:
    return full(b"stts", 0, struct.pack(f">I{2 * len(counts)}I", len(counts), *(x for c in counts for x in (c, 1))))


def trak(
    width: float = 64,
    height: float = 48,
    *,
    handler: bytes = b"vide",
    tkhd_version: int = 0,
    table: bytes | None = None,
    sample_entry: bytes = b"",
) -> bytes:
    stbl = box(b"stbl", sample_entry, *((stts(10), stsz(10)) if table is None else (table,)))
    minf = box(b"minf", box(b"vmhd", b"\0" * 12), stbl)
    return box(
        b"trak",
        tkhd(width, height, tkhd_version),
        box(b"mdia", full(b"mdhd", 0, b"\0" * 20), hdlr(handler), minf),
    )


FTYP = box(b"ftyp", b"isom\0\0\x02\0isomiso2mp41")
MDAT = box(b"mdat", b"\0\0\0\x10" * 64)


def mp4(*boxes: bytes) -> bytes:
    return FTYP + b"".join(boxes)


MINIMAL_MP4 = mp4(box(b"moov", full(b"mvhd", 0, b"\0" * 96), trak()), MDAT)


# ---------------------------------------------------------------- real fixtures


@pytest.mark.parametrize(
    ("name", "fmt", "width", "height"),
    [
        ("astronaut.jpg", "jpeg", 512, 512),
        ("grace_hopper.jpg", "jpeg", 512, 600),
        ("group-two-faces.jpg", "jpeg", 1024, 640),
        ("coffee-no-face.jpg", "jpeg", 600, 400),
        ("too-wide-2049.png", "png", 2049, 1000),
    ],
)
def test_real_fixtures_exact_size(name: str, fmt: str, width: int, height: int) -> None:
    info = probe_image((FIXTURES / name).read_bytes())
    assert info == ImageInfo(fmt, width, height)  # type: ignore[arg-type]
    assert info.mime == f"image/{fmt}"


def test_real_fixtures_truncated_at_every_length() -> None:
    for name in ("astronaut.jpg", "too-wide-2049.png"):
        data = (FIXTURES / name).read_bytes()
        want = probe_image(data)
        for n in range(min(len(data), 2048)):
            _probe_prefix(probe_image, data[:n], {want})


# ---------------------------------------------------------------- generated with OpenCV


@pytest.mark.parametrize(
    ("ext", "params", "chunk"),
    [
        (".png", [], b"IHDR"),
        (".jpg", [], b"\xff\xc0"),
        (".jpg", [1, 80, 2, 1], b"\xff\xc2"),  # IMWRITE_JPEG_QUALITY, IMWRITE_JPEG_PROGRESSIVE
        (".webp", [64, 80], b"VP8 "),  # IMWRITE_WEBP_QUALITY 80: lossy
        (".webp", [64, 101], b"VP8L"),  # quality above 100: lossless
    ],
)
def test_opencv_images_random_sizes(ext: str, params: list[int], chunk: bytes) -> None:
    cv2 = _cv2()
    assert (cv2.IMWRITE_JPEG_PROGRESSIVE, cv2.IMWRITE_WEBP_QUALITY) == (2, 64)
    rng = random.Random(f"{ext}{params}")
    sizes = [(1, 1), (1, 300), (300, 1), (2049, 3)] + [(rng.randint(1, 700), rng.randint(1, 700)) for _ in range(6)]
    for h, w in sizes:
        data = _encode(ext, _random_image(rng, h, w), params)
        assert chunk in data[:4096]
        info = probe_image(data)
        assert (info.format, info.width, info.height) == ({".jpg": "jpeg"}.get(ext, ext[1:]), w, h)


def test_opencv_webp_with_alpha_is_vp8x() -> None:
    """libwebp writes a lossy image with alpha as VP8X + ALPH + VP8."""
    cv2 = _cv2()
    rng = random.Random(4)
    for h, w in [(37, 53), (1, 1), (600, 2)]:
        data = _encode(".webp", _random_image(rng, h, w, 4), [cv2.IMWRITE_WEBP_QUALITY, 80])
        assert data[12:16] == b"VP8X"
        assert probe_image(data) == ImageInfo("webp", w, h)


def test_opencv_jpeg_with_big_app2_segment_before_sof() -> None:
    """A 60 KB ICC-profile-like APP2 right after SOI is skipped by its length, not scanned."""
    data = _encode(".jpg", _random_image(random.Random(2), 123, 77))
    payload = b"ICC_PROFILE\0\x01\x01" + bytes(range(256)) * 236  # includes fake SOF markers inside
    app2 = b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload
    assert len(app2) > 60_000
    assert probe_image(data[:2] + app2 + data[2:]) == ImageInfo("jpeg", 77, 123)


def test_opencv_mp4(tmp_path: Path) -> None:
    cv2 = _cv2()
    np = pytest.importorskip("numpy")
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write mp4v")
    for i in range(12):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    data = path.read_bytes()
    info = probe_video(data)
    assert info == VideoInfo("mp4", 64, 48, 12)
    assert info.mime == "video/mp4"
    for n in range(len(data)):
        _probe_prefix(probe_video, data[:n], {info, VideoInfo("mp4", None, None, None)})


# ---------------------------------------------------------------- JPEG edge cases


@pytest.mark.parametrize("sof", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
def test_jpeg_every_sof_marker(sof: int) -> None:
    assert probe_image(jpeg(321, 123, sof)) == ImageInfo("jpeg", 321, 123)


def test_jpeg_dht_jpg_dac_are_not_frame_headers() -> None:
    decoys = b"".join(b"\xff" + bytes([m]) + struct.pack(">HBHH", 7, 8, 9999, 9999) for m in (0xC4, 0xC8, 0xCC))
    assert probe_image(jpeg(10, 20, before_sof=decoys)) == ImageInfo("jpeg", 10, 20)


def test_jpeg_fill_bytes_standalone_markers_and_stray_bytes() -> None:
    before = b"\xff\x01" + b"\xff\xd0\xff\xd7" + b"\xff" * 50 + b"\xff\xe0\x00\x04ab" + b"\x00junk" + b"\xff\xff"
    assert probe_image(jpeg(5, 6, before_sof=before)) == ImageInfo("jpeg", 5, 6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (jpeg(0, 10), "0x10"),
        (jpeg(10, 0), "10x0"),
        (b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 6, "no frame header"),
        (b"\xff\xd8\xff\xd9", "no frame header"),
        (b"\xff\xd8\xff\xe0\x00\x01", "segment length"),
        (b"\xff\xd8\xff\xc0\x00\x05\x08\x00\x10\x00\x10", "frame header length"),
        (b"\xff\xd8\xff\xe1\xff\xff" + b"\0" * 100, "truncated JPEG"),
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00", "truncated JPEG"),
        (b"\xff\xd8", "truncated JPEG"),
    ],
)
def test_jpeg_invalid(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        probe_image(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8" + b"\xff" * 5_000_000,
        b"\xff\xd8" + b"\xff\x00" * 2_500_000,
        b"\xff\xd8" + b"\xff\xe1\xff\xff" * 1_000_000,
        b"\xff\xd8" + b"\xff\xd0" * 2_500_000,
        b"\xff\xd8" + b"\xff\xe1\x00\x02" * 2_500_000,
        b"\xff\xd8" + b"\xff\x01\xff\xff\xd8\x00" * 1_000_000,
    ],
    ids=["fill", "stuffed", "huge-lengths", "restart-markers", "empty-segments", "standalone"],
)
def test_hostile_jpeg_finishes_fast(data: bytes) -> None:
    """Work (counted in calls, which load cannot change) is bounded by the segment cap, not by the
    4-10 MB of input: the fill between markers is skipped by one regex search, not byte by byte."""
    with count_calls() as calls, pytest.raises(InvalidInputError):
        probe_image(data)
    assert calls.total <= 10 * _MAX_JPEG_SEGMENTS, calls


# ---------------------------------------------------------------- PNG and WebP edge cases


def test_png_and_webp_hand_built() -> None:
    assert probe_image(png(2048, 2048)) == ImageInfo("png", 2048, 2048)
    assert probe_image(vp8(16383, 7)) == ImageInfo("webp", 16383, 7)
    assert probe_image(vp8(0xC000 | 20, 30)) == ImageInfo("webp", 20, 30)  # top 2 bits are scaling
    assert probe_image(vp8l(16384, 1)) == ImageInfo("webp", 16384, 1)
    assert probe_image(vp8x(70_000, 3)) == ImageInfo("webp", 70_000, 3)
    assert probe_image(vp8x(1 << 24, 1 << 24)) == ImageInfo("webp", 1 << 24, 1 << 24)
    assert probe_image(vp8x(5, 6)).mime == "image/webp"


def test_webp_riff_size_is_not_trusted() -> None:
    good = vp8l(9, 8)
    assert probe_image(good[:4] + b"\xff\xff\xff\xff" + good[8:]) == ImageInfo("webp", 9, 8)
    with pytest.raises(InvalidInputError, match="truncated WebP"):
        probe_image(riff(b"VP8X", b"\x10" + b"\0" * 9, riff_size=0xFFFFFFFF)[:26])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png(0, 5), "PNG header says the image is 0x5"),
        (png(5, 0), "5x0"),
        (png(0x80000000, 5), "out of range"),
        (png(5, 5).replace(b"IHDR", b"IDAT"), "not IHDR"),
        (png(5, 5)[:20], "truncated PNG"),
        (vp8(0, 5), "WebP header says the image is 0x5"),
        (vp8(5, 5, tag=0x11), "not a key frame"),
        (vp8(5, 5).replace(b"\x9d\x01\x2a", b"\0\0\0"), "not a key frame"),
        (riff(b"VP8 ", b"\0" * 4), "VP8 chunk too small"),
        (riff(b"VP8L", b"\0" * 2), "VP8L chunk too small"),
        (riff(b"VP8X", b"\0" * 2), "VP8X chunk too small"),
        (riff(b"VP8L", b"\x00" * 8), "VP8L signature"),
        (riff(b"ALPH", b"\x00" * 8), "unsupported WebP chunk"),
        (b"RIFF\0\0\0\0WEBPVP8", "truncated WebP"),
    ],
)
def test_png_webp_invalid(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        probe_image(data)


# ---------------------------------------------------------------- unsupported or unknown images


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"GIF89a\x01\x00\x01\x00", "GIF"),
        (b"GIF87a\x01\x00\x01\x00", "GIF"),
        (b"BM" + b"\0" * 50, "BMP"),
        (b"II*\x00" + b"\0" * 20, "TIFF"),
        (b"MM\x00*" + b"\0" * 20, "TIFF"),
        (b"\0\0\0\x18ftypheic" + b"\0" * 20, "HEIC"),
        (b"\0\0\0\x18ftypavif" + b"\0" * 20, "AVIF"),
        (MINIMAL_MP4, "MP4"),
        (b"RIFF\0\0\0\0AVI LIST", "RIFF"),
    ],
)
def test_unsupported_image_formats_are_named(data: bytes, name: str) -> None:
    with pytest.raises(InvalidInputError, match=f"{name}.*not a supported image format.*JPEG, PNG or WebP"):
        probe_image(data)


def test_unknown_image_shows_a_short_preview() -> None:
    with pytest.raises(InvalidInputError) as exc:
        probe_image(b"hello world, not an image")
    assert str(exc.value) == "not a JPEG, PNG or WebP image (starts with b'hello wo')"
    with pytest.raises(InvalidInputError, match=r"^empty$"):
        probe_image(b"")
    with pytest.raises(InvalidInputError, match=r"starts with b'\\xff'"):
        probe_image(b"\xff")


# ---------------------------------------------------------------- MP4 structures


def test_mp4_minimal_and_moov_after_mdat() -> None:
    assert probe_video(MINIMAL_MP4) == VideoInfo("mp4", 64, 48, 10)
    moov = box(b"moov", trak(640, 360))
    assert probe_video(mp4(MDAT, box(b"free"), moov)) == VideoInfo("mp4", 640, 360, 10)


def test_mp4_largesize_and_size_zero_boxes() -> None:
    moov = box(b"moov", trak(32, 16), large=True)
    mdat = box(b"mdat", b"\0" * 1000, large=True)
    assert probe_video(mp4(mdat, moov)) == VideoInfo("mp4", 32, 16, 10)
    assert probe_video(mp4(moov, box(b"mdat", b"\0" * 99, to_end=True))) == VideoInfo("mp4", 32, 16, 10)
    assert probe_video(mp4(box(b"moov", trak(32, 16), to_end=True))) == VideoInfo("mp4", 32, 16, 10)
    large_ftyp = box(b"ftyp", b"isom\0\0\0\0", large=True)
    assert probe_video(large_ftyp + box(b"moov", trak(8, 8))).width == 8


def test_mp4_tkhd_versions_and_fallbacks() -> None:
    assert probe_video(mp4(box(b"moov", trak(1920, 1080, tkhd_version=1)))) == VideoInfo("mp4", 1920, 1080, 10)
    assert probe_video(mp4(box(b"moov", trak(99.75, 10.25)))).width == 100  # 16.16 rounds to nearest
    zero_tkhd = trak(0, 0, sample_entry=stsd(176, 144))
    assert probe_video(mp4(box(b"moov", zero_tkhd))) == VideoInfo("mp4", 176, 144, 10)
    assert probe_video(mp4(box(b"moov", trak(0, 0)))) == VideoInfo("mp4", None, None, 10)
    with pytest.raises(InvalidInputError, match="tkhd version 2"):
        probe_video(mp4(box(b"moov", trak(tkhd_version=2))))


def test_mp4_frame_count_sources() -> None:
    stts_only = box(b"moov", trak(table=stts(7, 5, 3)))
    assert probe_video(mp4(stts_only)).frames == 15
    stz2 = full(b"stz2", 0, struct.pack(">II", 8, 42))
    assert probe_video(mp4(box(b"moov", trak(table=stz2)))).frames == 42
    no_table = box(b"moov", trak(table=box(b"stco")))
    assert probe_video(mp4(no_table)).frames is None
    fragmented = box(b"moov", trak(), box(b"mvex", box(b"trex", b"\0" * 24)))
    assert probe_video(mp4(fragmented, box(b"moof"), MDAT)) == VideoInfo("mp4", 64, 48, None)


def test_mp4_picks_the_video_track() -> None:
    moov = box(b"moov", trak(0, 0, handler=b"soun", table=stsz(999)), box(b"udta"), trak(200, 100))
    assert probe_video(mp4(moov)) == VideoInfo("mp4", 200, 100, 10)
    with pytest.raises(InvalidInputError, match="no video track"):
        probe_video(mp4(box(b"moov", trak(handler=b"soun"))))
    with pytest.raises(InvalidInputError, match="no video track"):
        probe_video(mp4(box(b"moov", box(b"trak", box(b"tkhd")))))


def test_mp4_missing_moov_gives_unknowns() -> None:
    assert probe_video(mp4(MDAT)) == VideoInfo("mp4", None, None, None)
    assert probe_video(FTYP) == VideoInfo("mp4", None, None, None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "^empty$"),
        (
            b"\x1aE\xdf\xa3\x93B\x82\x88matroska",
            r"not an MP4 video \(starts with b'\\x1aE\\xdf\\xa3\\x93B\\x82\\x88'\)",
        ),
        (b"RIFF\0\0\0\0AVI ", "not an MP4 video"),
        (FTYP[:12], "truncated or corrupt MP4"),
        (mp4(MDAT)[:-1], r"truncated or corrupt MP4 \(box b'mdat' runs past its parent\)"),
        (mp4(b"\0\0\0\x04free"), r"box b'free' is too small"),
        (mp4(b"\0\0\0\x01mdat" + struct.pack(">Q", 15)), "too small"),
        (mp4(b"\0\0\0\x01mdat" + struct.pack(">Q", 2**64 - 1)), "runs past its parent"),
        (mp4(b"\0\0\0\x01mdat\0\0"), "box header runs past its parent"),
        (mp4(b"\0\0\0\x10moov\0\0\0\x20trak"), "box b'trak' runs past its parent"),
        (mp4(box(b"moov", box(b"trak", box(b"mdia", full(b"hdlr", 0, b"\0\0"))))), "hdlr box too small"),
        (
            mp4(box(b"moov", box(b"trak", full(b"tkhd", 1, b"\0" * 84), box(b"mdia", hdlr(b"vide"))))),
            "tkhd box too small",
        ),
        (
            mp4(box(b"moov", box(b"trak", full(b"tkhd", 0, b"\0" * 20), box(b"mdia", hdlr(b"vide"))))),
            "tkhd box too small",
        ),
        (mp4(box(b"moov", trak(table=full(b"stsz", 0, b"\0" * 4)))), "stsz box too small"),
        (mp4(box(b"moov", trak(table=full(b"stts", 0, struct.pack(">III", 2, 5, 1))))), "stts entry count"),
        (mp4(box(b"moov", trak(table=full(b"stts", 0, b"\xff\xff\xff\xff")))), "stts entry count"),
    ],
)
def test_mp4_invalid(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        probe_video(data)


def test_hostile_mp4_finishes_fast() -> None:
    many = box(b"moov", b"".join(box(b"trak", box(b"mdia")) for _ in range(20_000)))
    stbl = box(b"stbl", box(b"free") * 20_000)
    nested = box(b"moov", box(b"trak", box(b"mdia", hdlr(b"vide"), box(b"minf", stbl))))
    # Linear work: at most 10 calls per box (counted, so load cannot change it); a walk that went
    # back to the start for every box would make hundreds of millions.
    with count_calls() as calls, pytest.raises(InvalidInputError, match="no video track"):
        probe_video(mp4(many))
    assert calls.total <= 10 * 40_000
    with count_calls() as calls:
        assert probe_video(mp4(nested)) == VideoInfo("mp4", None, None, None)
    assert calls.total <= 10 * 20_000
    with count_calls() as calls:
        assert probe_video(mp4(box(b"free") * 60_000)).frames is None
    assert calls.total <= 10 * 60_000


# ---------------------------------------------------------------- fuzzing


def _probe_prefix(probe: Any, data: bytes, allowed: set[Any]) -> None:
    """A truncated valid file either still yields the full file's answer or raises InvalidInputError."""
    try:
        result = probe(data)
    except InvalidInputError:
        return
    assert result in allowed, (len(data), result)


def _survives(probe: Any, data: bytes) -> None:
    with count_calls() as calls:
        try:
            result: object = probe(data)
        except InvalidInputError as exc:
            result = str(exc)
    assert isinstance(result, (ImageInfo, VideoInfo)) or 0 < len(result) < 120, result
    # Bounded work (calls, not seconds): linear in the boxes or segments a fuzzed file can hold.
    assert calls.total <= 10 * max(len(data) // 8, _MAX_JPEG_SEGMENTS), (len(data), calls)


SEEDS = [
    jpeg(640, 480, before_sof=b"\xff\xe0\x00\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0"),
    jpeg(7, 9, 0xC2, before_sof=b"\xff\x01\xff\xff\xff\xdb\x00\x03\x00"),
    (FIXTURES / "grace_hopper.jpg").read_bytes()[:400],
    png(300, 200),
    vp8(100, 50),
    vp8l(33, 44),
    vp8x(1000, 2000),
    MINIMAL_MP4,
    mp4(MDAT, box(b"moov", trak(0, 0, handler=b"soun"), trak(tkhd_version=1, table=stts(1, 2)))),
    mp4(box(b"moov", trak(0, 0, sample_entry=stsd(3, 4)), large=True)),
]
MAGIC = [b"\xff\xd8", b"\xff\xd8\xff\xc0", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBPVP8", b"\0\0\0\x08ftyp"]


def test_seeds_are_valid() -> None:
    for seed in SEEDS:
        probe = probe_video if seed[4:8] == b"ftyp" else probe_image
        want = probe(seed)
        for n in range(len(seed)):
            _probe_prefix(probe, seed[:n], {want, VideoInfo("mp4", None, None, None)})


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.tuples(st.sampled_from(MAGIC), st.binary(max_size=300)).map(b"".join)))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _survives(probe_image, data)
    _survives(probe_video, data)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    st.integers(0, 10**6),
    st.sampled_from([0, 1, 0xFF, 0x7F, 0x80]),
)
def test_fuzz_mutated_and_truncated_headers(seed: bytes, edits: list[tuple[int, int]], cut: int, fill: int) -> None:
    data = bytearray(seed)
    for pos, value in edits:
        data[pos % len(data)] = value if pos % 3 else fill
    mutated = bytes(data[: cut % (len(data) + 1)])
    _survives(probe_image, mutated)
    _survives(probe_video, mutated)


_WORDS = st.lists(
    st.one_of(st.sampled_from([0, 1, 2, 8, 0x01000000, 0x7FFFFFFF, 0xFFFFFFFF]), st.integers(0, 2**32 - 1)),
    max_size=26,
)


def _leaf(*types: bytes) -> st.SearchStrategy[bytes]:
    """A box of one of `types` whose payload is hostile 32-bit words, possibly cut mid-word."""
    return st.builds(
        lambda t, words, cut: box(t, struct.pack(f">{len(words)}I", *words)[: -cut or None]),
        st.sampled_from(types),
        _WORDS,
        st.integers(0, 3),
    )


@FUZZ
@given(
    st.one_of(st.sampled_from([tkhd(64, 48), tkhd(0, 0, 1), b""]), _leaf(b"tkhd")),
    st.one_of(st.just(hdlr(b"vide")), _leaf(b"hdlr")),
    st.lists(_leaf(b"stsd", b"stsz", b"stz2", b"stts", b"free"), max_size=3),
    st.lists(_leaf(b"mvex", b"free", b"mdat"), max_size=2),
)
def test_fuzz_mp4_hostile_box_contents(tk: bytes, hd: bytes, tables: list[bytes], extra: list[bytes]) -> None:
    """Structure-aware: a well-formed moov/trak/mdia/minf/stbl path whose leaf boxes hold junk."""
    minf = box(b"minf", box(b"stbl", *tables))
    moov = box(b"moov", box(b"trak", tk, box(b"mdia", hd, minf)), *extra)
    _survives(probe_video, mp4(moov))
