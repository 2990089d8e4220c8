"""What `download()` names a file (issue 15): the extension from the bytes, and an `Outcome`'s key.

A result host on loopback serves bytes under names and content types chosen to disagree with
them, so that only the bytes can give the right extension.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from qubico_async import FaceSwap, Job, QubicoClient, RetryPolicy, Task, TaskOutput, TaskStatus
from qubico_async._download import sniff_extension
from qubico_async.batch import Outcome
from qubico_async.errors import DownloadError, InvalidInputError
from tests._helpers import serve

from .test_batch import FACE, png

pytestmark = pytest.mark.anyio

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"j" * 500
PNG = b"\x89PNG\r\n\x1a\n" + b"p" * 500
WEBP = b"RIFF\x00\x10\x00\x00WEBPVP8 " + b"w" * 500
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"m" * 500
UNKNOWN = b"just some bytes, no magic number" * 20
BODIES = {"jpeg": JPEG, "png": PNG, "webp": WEBP, "mp4": MP4, "unknown": UNKNOWN}


@pytest.fixture
async def host() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        body = BODIES[request.match_info["kind"]]
        return web.Response(body=body, content_type=request.query.get("type", "application/octet-stream"))

    app = web.Application()
    app.router.add_get("/r/{kind}/{name}", answer)
    async with serve(app) as base:
        yield f"{base}/r"


@pytest.fixture
async def dl(host: str) -> AsyncIterator[QubicoClient]:
    async with QubicoClient(api_key="k", base_url=host, retry=RetryPolicy.instant()) as c:
        yield c


def _task(url: str, task_id: str = "task-15") -> Task:
    return Task(task_id=task_id, status=TaskStatus.COMPLETED, output=TaskOutput(image_url=url))


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_sniff_extension_knows_the_four_formats() -> None:
    assert [sniff_extension(b[:16]) for b in (JPEG, PNG, WEBP, MP4, UNKNOWN)] == [
        ".jpg",
        ".png",
        ".webp",
        ".mp4",
        None,
    ]
    assert sniff_extension(b"") is None
    assert sniff_extension(b"RIFF\x00\x00\x00\x00WAVE") is None  # RIFF, but not WebP


@pytest.mark.parametrize(("kind", "ext"), [("jpeg", ".jpg"), ("png", ".png"), ("webp", ".webp"), ("mp4", ".mp4")])
async def test_a_folder_gets_the_extension_the_bytes_show(
    dl: QubicoClient, host: str, tmp_path: Path, kind: str, ext: str
) -> None:
    # the URL says .png and the content type says nothing useful: only the bytes are right
    path = await dl.download(_task(f"{host}/{kind}/result.png"), str(tmp_path / "out") + "/")
    assert path == tmp_path / "out" / f"task-15{ext}"
    assert path.read_bytes() == BODIES[kind]


async def test_unknown_bytes_fall_back_to_the_content_type_then_the_url(
    dl: QubicoClient, host: str, tmp_path: Path
) -> None:
    by_type = await dl.download(_task(f"{host}/unknown/x.png?type=image/webp", "a"), tmp_path)
    assert by_type.name == "a.webp"
    by_url = await dl.download(_task(f"{host}/unknown/x.png", "b"), tmp_path)
    assert by_url.name == "b.png"


async def test_a_matching_name_is_silent(
    dl: QubicoClient, host: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qubico_async")
    assert (await dl.download(_task(f"{host}/jpeg/x"), tmp_path / "a.jpg")).name == "a.jpg"
    assert (await dl.download(_task(f"{host}/jpeg/x"), tmp_path / "b.JPEG")).name == "b.JPEG"  # same type
    assert (await dl.download(_task(f"{host}/unknown/x"), tmp_path / "c.png")).name == "c.png"  # nothing to say
    assert not [r for r in caplog.records if r.name == "qubico_async"]


async def test_a_disagreeing_name_warns_and_is_kept_by_default(
    dl: QubicoClient, host: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qubico_async")
    path = await dl.download(_task(f"{host}/jpeg/x.jpg"), tmp_path / "result.png")
    assert path == tmp_path / "result.png" and path.read_bytes() == JPEG
    warnings = [r.getMessage() for r in caplog.records if r.name == "qubico_async" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "result.png" in warnings[0] and "JPG" in warnings[0] and ".png" in warnings[0]


async def test_fix_replaces_or_adds_the_extension(dl: QubicoClient, host: str, tmp_path: Path) -> None:
    fixed = await dl.download(_task(f"{host}/webp/x"), tmp_path / "result.png", extension="fix")
    assert fixed == tmp_path / "result.webp" and fixed.read_bytes() == WEBP
    assert not (tmp_path / "result.png").exists()
    added = await dl.download(_task(f"{host}/mp4/x"), tmp_path / "clip", extension="fix")
    assert added == tmp_path / "clip.mp4"
    # the overwrite check applies to where the file goes
    with pytest.raises(FileExistsError):
        await dl.download(_task(f"{host}/webp/x"), tmp_path / "result.jpg", extension="fix")
    assert await dl.download(_task(f"{host}/webp/x"), tmp_path / "result.jpg", extension="fix", overwrite=True)


async def test_strict_refuses_and_writes_nothing(dl: QubicoClient, host: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"result\.jpg: the result is PNG but the name says \.jpg") as info:
        await dl.download(_task(f"{host}/png/x"), tmp_path / "result.jpg", extension="strict")
    assert info.value.path == tmp_path / "result.jpg"
    assert list(tmp_path.iterdir()) == []
    ok = await dl.download(_task(f"{host}/png/x"), tmp_path / "result.png", extension="strict")
    assert ok.read_bytes() == PNG
    with pytest.raises(InvalidInputError, match="extension"):
        await dl.download(_task(f"{host}/png/x"), tmp_path / "r.png", extension="maybe")  # type: ignore[arg-type]
    assert _leftovers(tmp_path) == []


async def test_an_outcome_is_named_after_its_key(dl: QubicoClient, host: str, tmp_path: Path) -> None:
    task = _task(f"{host}/png/x.jpg")
    outcome = Outcome(job=Job(FaceSwap(PNG, PNG)), key="../shoot 1/cat:01", index=3, status="succeeded", task=task)
    path = await dl.download(outcome, str(tmp_path / "out") + "/")
    assert path.parent == tmp_path / "out"
    assert path.name == "shoot_1_cat_01.png"
    assert await dl.download_bytes(outcome) == PNG
    # a task is still named by its id
    assert (await dl.download(task, tmp_path / "out")).name == "task-15.png"
    empty = Outcome(job=outcome.job, key="k", index=0, status="skipped", reason="budget")
    with pytest.raises(InvalidInputError, match="'k' has no task"):
        await dl.download(empty, tmp_path / "out")
    with pytest.raises(InvalidInputError, match="no task"):
        await dl.download_bytes(empty)


async def test_outcomes_of_a_real_batch_land_under_their_keys(client: QubicoClient, tmp_path: Path) -> None:
    jobs = [Job(FaceSwap(png(i), FACE), key=f"album/{i:02d}") for i in range(3)]
    saved = []
    async with client.swap_many(jobs) as batch:
        async for outcome in batch:
            assert outcome.ok
            saved.append(await client.download(outcome, str(tmp_path / "out") + "/"))
    assert sorted(p.name for p in saved) == ["album_00.png", "album_01.png", "album_02.png"]
    assert all(p.read_bytes() == png(int(p.stem[-2:])) for p in saved)  # identity processor
