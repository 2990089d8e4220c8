"""Every input form and every limit, checked before any request is sent."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import anyio.to_thread
import pytest

from qubico_async import FaceSwap, Image, InvalidInputError, QubicoClient, Video, VideoFaceSwap, _media_content
from qubico_async import media as media_module
from qubico_async._mediainfo import MAX_IMAGE_SIDE, MAX_MEDIA_BYTES
from qubico_async.testing import Emulator

pytestmark = pytest.mark.anyio


def _png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG claiming this size (enough for the header parser)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def _png_whole(width: int, height: int) -> bytes:
    """A complete, decodable grey PNG of this size (8-bit greyscale, every row filter 0)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"".join(b"\x00" + b"\x80" * width for _ in range(height)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# -- plain values are classified without guessing ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("https://cdn.example/a.jpg", "url"),
        ("HTTP://cdn.example/a.PNG", "url"),
        ("data:image/png;base64,iVBORw0KGgo=", "data_uri"),
        ("photos/me.jpg", "path"),
        (Path("photos/me.jpg"), "path"),
        (b"\xff\xd8\xff", "bytes"),
        ("aGVsbG8=", "path"),  # raw base64 in a str is never guessed: it is a (missing) path
    ],
)
def test_plain_values_are_classified(value: object, kind: str) -> None:
    assert Image.coerce(value).kind == kind


def test_nothing_is_read_when_an_image_is_created(tmp_path: Path) -> None:
    img = Image.from_path(tmp_path / "does-not-exist-yet.jpg")
    assert img.kind == "path"  # no error: the file is read when the request is built


async def test_every_form_loads_the_same_content(fixtures: Path) -> None:
    data = (fixtures / "astronaut.jpg").read_bytes()
    b64 = base64.b64encode(data).decode()
    forms = [
        Image.from_path(fixtures / "astronaut.jpg"),
        Image.coerce(str(fixtures / "astronaut.jpg")),
        Image.from_bytes(data),
        Image.coerce(data),
        Image.from_base64(b64),
        Image.from_data_uri("data:image/jpeg;base64," + b64),
        Image.coerce("data:image/jpeg;base64," + b64),
    ]
    for form in forms:
        loaded = await form.load()
        assert loaded.data == data
        assert (loaded.info.format, loaded.info.width, loaded.info.height) == ("jpeg", 512, 512)
        assert loaded.data_uri() == "data:image/jpeg;base64," + b64


# -- limits, each naming the input and the limit --------------------------------------------


async def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"missing\.jpg: no such file"):
        await Image.from_path(tmp_path / "missing.jpg").load()


async def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"directory|not a file"):
        await Image.from_path(tmp_path).load()


async def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"empty\.png: is empty"):
        await Image.from_path(tmp_path / "empty.png").load()


async def test_too_wide_fixture_names_size_and_limit(fixtures: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        await Image.from_path(fixtures / "too-wide-2049.png").load()
    message = str(info.value)
    assert "too-wide-2049.png" in message
    assert "2049x1000" in message
    assert f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}" in message


@pytest.mark.parametrize(("width", "height", "ok"), [(2048, 2048, True), (2049, 10, False), (10, 2049, False)])
async def test_side_limit_is_inclusive(width: int, height: int, ok: bool) -> None:
    img = Image.from_bytes(_png_whole(width, height) if ok else _png_header(width, height), name="probe.png")
    if ok:
        assert (await img.load()).info.width == width
    else:
        with pytest.raises(InvalidInputError, match="limit is 2048x2048"):
            await img.load()


async def test_a_file_the_service_cannot_decode_is_refused_first() -> None:
    whole = _png_whole(64, 48)
    assert (await Image.from_bytes(whole, name="ok.png").load()).info.width == 64
    with pytest.raises(InvalidInputError, match=r"cut\.png: truncated PNG"):
        await Image.from_bytes(whole[: len(whole) // 2], name="cut.png").load()
    with pytest.raises(InvalidInputError, match=r"header-only\.png: truncated PNG"):
        await Image.from_bytes(_png_header(64, 48), name="header-only.png").load()


async def test_over_10_mb_file(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(_png_header(100, 100) + b"\0" * MAX_MEDIA_BYTES)
    with pytest.raises(InvalidInputError, match=r"big\.png: is 10\.0 MB; the limit is 10 MB"):
        await Image.from_path(big).load()


async def test_over_10_mb_bytes_and_base64() -> None:
    data = _png_header(100, 100) + b"\0" * MAX_MEDIA_BYTES
    with pytest.raises(InvalidInputError, match="limit is 10 MB"):
        await Image.from_bytes(data).load()
    with pytest.raises(InvalidInputError, match="limit is 10 MB"):
        await Image.from_base64(base64.b64encode(data)).load()


async def test_unsupported_format_names_file_and_formats(tmp_path: Path) -> None:
    gif = tmp_path / "anim.png"
    gif.write_bytes(b"GIF89a\x10\x00\x10\x00" + b"\0" * 20)
    with pytest.raises(InvalidInputError) as info:
        await Image.from_path(gif).load()
    assert "anim.png" in str(info.value)
    assert "GIF" in str(info.value)
    assert "JPEG, PNG, WebP" in str(info.value)


async def test_png_name_with_jpeg_content_trusts_the_bytes(
    tmp_path: Path, fixtures: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = tmp_path / "really-a-jpeg.png"
    fake.write_bytes((fixtures / "astronaut.jpg").read_bytes())
    with caplog.at_level(logging.WARNING, logger="qubico_async"):
        loaded = await Image.from_path(fake).load()
    assert loaded.mime == "image/jpeg"
    assert loaded.data_uri().startswith("data:image/jpeg;base64,")
    assert "really-a-jpeg.png" in caplog.text and "PNG" in caplog.text and "JPEG" in caplog.text


async def test_invalid_base64() -> None:
    with pytest.raises(InvalidInputError, match="not valid base64"):
        await Image.from_base64("this is not base64!").load()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://cdn.example/a.jpg", "http"),
        ("file:///etc/passwd", "http"),
        ("https://cdn.example/a.gif", r"\.jpg"),
        ("https://cdn.example/a", "none"),
        ("https:///a.jpg", "http"),
    ],
)
def test_url_rules_without_network(url: str, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        Image.from_url(url)


def test_url_with_query_string_and_upper_case_extension() -> None:
    assert Image.from_url("https://cdn.example/A.JPEG?sig=1").is_url
    assert Video.from_url("https://cdn.example/clip.mp4#t=1").is_url
    with pytest.raises(InvalidInputError, match=r"\.mp4"):
        Video.from_url("https://cdn.example/clip.mov")


async def test_video_limits(tmp_path: Path, fixtures: Path) -> None:
    loaded = await Video.from_path(fixtures / "tiny.mp4").load()
    assert loaded.info.frames == 10
    not_mp4 = tmp_path / "clip.mp4"
    not_mp4.write_bytes((fixtures / "astronaut.jpg").read_bytes())
    with pytest.raises(InvalidInputError, match=r"clip\.mp4.*MP4"):
        await Video.from_path(not_mp4).load()


async def test_video_over_600_frames(monkeypatch: pytest.MonkeyPatch, fixtures: Path) -> None:
    monkeypatch.setattr(media_module, "MAX_VIDEO_FRAMES", 5)
    with pytest.raises(InvalidInputError, match="has 10 frames; the limit is 5"):
        await Video.from_path(fixtures / "tiny.mp4").load()


def test_wrong_media_kind_is_rejected(fixtures: Path) -> None:
    with pytest.raises(InvalidInputError, match="expected Image"):
        FaceSwap(Video.from_path(fixtures / "tiny.mp4"), fixtures / "astronaut.jpg")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="cannot use a int"):
        Image.coerce(42)


async def test_large_files_are_read_in_a_worker_thread(
    fixtures: Path, monkeypatch: pytest.MonkeyPatch, emu: Emulator
) -> None:
    calls: list[str] = []
    real = anyio.to_thread.run_sync

    async def spy(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    monkeypatch.setattr(_media_content, "THREAD_THRESHOLD", 1000)
    async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url) as client:
        await client.submit(FaceSwap(fixtures / "astronaut.jpg", fixtures / "grace_hopper.jpg"), upload="never")
    assert "read" in calls  # the file read left the event loop
    assert emu.stats.creates == 1


async def test_inputs_checked_before_any_request_for_video(client: QubicoClient, emu: Emulator, fixtures: Path) -> None:
    with pytest.raises(InvalidInputError):
        await client.submit(VideoFaceSwap(fixtures / "astronaut.jpg", fixtures / "astronaut.jpg"))
    assert emu.stats.create_requests == 0


def test_os_pathlike_accepted(fixtures: Path) -> None:
    class Custom(os.PathLike[str]):
        def __fspath__(self) -> str:
            return str(fixtures / "astronaut.jpg")

    assert Image.coerce(Custom()).name.endswith("astronaut.jpg")


async def test_a_large_inline_image_cut_short_is_refused_from_its_end() -> None:
    """Inline base64 past the decoded prefix: the header comes from the prefix, the end is checked alone."""
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    whole = _png_whole(64, 48)
    big = whole[:-12] + chunk(b"bnPd", bytes(range(256)) * 2048) + whole[-12:]  # ~512 KiB, IEND last
    assert (await Image.from_base64(base64.b64encode(big).decode()).load()).info.width == 64
    with pytest.raises(InvalidInputError, match="truncated PNG"):
        await Image.from_base64(base64.b64encode(big[: len(big) // 2]).decode()).load()
