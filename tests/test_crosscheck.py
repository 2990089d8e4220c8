"""Cross-check: the SDK's pre-check (`qubico_async.media` / `_mediainfo`) and the emulator's verdict
(its own readers in `qubico_async.testing._imagecheck` / `_videocheck`, with OpenCV decoding when
installed) must agree on every file of an edge-case corpus. Every disagreement is a bug in one of them.

The expected verdict of each file (tests/media_corpus.py) follows the service's documented rules
(piapi-api.md §2-§4: JPEG/PNG/WebP, at most 2048x2048, at most 10 MB) and "a file that does not
decode is not an image" (the service answers "failed to get valid image", §9.2)."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from qubico_async import InvalidInputError
from qubico_async.media import Image
from qubico_async.testing import Emulator, _imagecheck, _mediacheck, _videocheck, identity

from .media_corpus import CORPUS, build, jpeg_cmyk

pytestmark = pytest.mark.anyio

KEY = "cross-key"
HOPPER = (Path(__file__).parent / "fixtures" / "grace_hopper.jpg").read_bytes()
CASES = sorted(CORPUS)


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    return {name: build(name) for name in CASES}


@pytest.fixture(params=["opencv", "header-reader"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The emulator with OpenCV decoding (the `faces` extra), and with its header reader alone."""
    assert _imagecheck._opencv() is not None  # the faces extra is installed here
    if request.param == "header-reader":
        monkeypatch.setattr(_imagecheck, "_opencv", lambda: None)
    return request.param


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(api_key=KEY, processor=identity) as server:
        yield server


async def emulator_accepts(emu: Emulator, data: bytes) -> tuple[bool, str]:
    """The emulator's verdict over HTTP: a create with the file inline is a task (200) or a 400."""
    body = {
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "input": {
            "target_image": base64.b64encode(data).decode() or "=",
            "swap_image": base64.b64encode(HOPPER).decode(),
        },
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{emu.base_url}/api/v1/task", json=body, headers={"x-api-key": KEY}) as resp:
            answer = await resp.json()
            assert resp.status in (200, 400), answer
            return resp.status == 200, answer["message"]


async def sdk_accepts(tmp_path: Path, name: str, data: bytes) -> tuple[bool, str]:
    """The SDK's verdict on the file, loaded from a path with the file name a user would have."""
    path = tmp_path / CORPUS[name][1]
    path.write_bytes(data)
    try:
        await Image.from_path(path).load()
    except InvalidInputError as exc:
        return False, str(exc)
    return True, ""


@pytest.mark.parametrize("name", CASES)
async def test_emulator_verdict_follows_the_documented_rules(
    emu: Emulator, corpus: dict[str, bytes], decoder: str, name: str
) -> None:
    accepted, why = await emulator_accepts(emu, corpus[name])
    assert accepted == CORPUS[name][2], f"{name} ({decoder}): {why}"


@pytest.mark.parametrize("name", CASES)
async def test_sdk_precheck_agrees_with_the_emulator(
    emu: Emulator, corpus: dict[str, bytes], tmp_path: Path, name: str
) -> None:
    emulator, emulator_why = await emulator_accepts(emu, corpus[name])
    sdk, sdk_why = await sdk_accepts(tmp_path, name, corpus[name])
    assert sdk == emulator, (
        f"{name}: SDK pre-check {'accepts' if sdk else 'refuses'} ({sdk_why or 'ok'}), "
        f"emulator {'accepts' if emulator else 'refuses'} ({emulator_why}); expected "
        f"{'accept' if CORPUS[name][2] else 'refuse'}"
    )


async def test_opencv_decoding_is_really_consulted(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG that is well-formed marker by marker but names a quantisation table it never defines:
    only a real decode notices. With OpenCV the emulator refuses it; the header reader alone cannot."""
    plain = jpeg_cmyk()
    sof = plain.index(b"\xff\xc0")
    broken = plain[:sof] + plain[sof:].replace(b"\x01\x11\x00\x02\x11\x00", b"\x01\x11\x03\x02\x11\x00", 1)
    assert broken != plain
    assert await emulator_accepts(emu, plain) == (True, "success")
    accepted, why = await emulator_accepts(emu, broken)
    assert not accepted and "does not decode" in why
    monkeypatch.setattr(_imagecheck, "_opencv", lambda: None)
    assert (await emulator_accepts(emu, broken))[0]


def test_the_emulator_reader_only_ever_raises_media_rejected(corpus: dict[str, bytes]) -> None:
    """Hostile bytes (every corpus file cut short and with bytes flipped) never raise anything else."""
    import random

    rng = random.Random(0)
    small = [data for data in corpus.values() if 0 < len(data) < 20_000]
    small.append(build("jpeg-cmyk"))
    tried = 0
    for data in small:
        variants = [data[:cut] for cut in range(0, len(data), max(1, len(data) // 60))]
        for _ in range(30):
            flipped = bytearray(data)
            for _ in range(3):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            variants.append(bytes(flipped))
        for variant in variants:
            tried += 1
            with contextlib.suppress(_mediacheck.MediaRejected):
                _imagecheck.judge_image(variant)
            with contextlib.suppress(_mediacheck.MediaRejected):
                _videocheck.read_video(variant)
    assert tried > 1000
