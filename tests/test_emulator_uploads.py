"""The emulator's File Upload API (its own site, `emu.upload_url`) and URL inputs served by the emulator."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from qubico_async.testing import Emulator
from tests._helpers import ASTRONAUT, FIXTURES, HOPPER, b64, header_only_mp4

TOO_WIDE = (FIXTURES / "too-wide-2049.png").read_bytes()
TINY_MP4 = (FIXTURES / "tiny.mp4").read_bytes()
EMU_KEY = object()  # upload()'s default: the emulator's own API key
DAY = 24 * 3600

pytestmark = pytest.mark.anyio


async def upload(
    http: aiohttp.ClientSession, emu: Emulator, body: Any, key: str | object | None = EMU_KEY
) -> tuple[int, Any]:
    key = emu.api_key if key is EMU_KEY else key
    headers = {"Content-Type": "application/json"} | ({} if key is None else {"x-api-key": str(key)})
    data = io.BytesIO(json.dumps(body).encode())  # large bodies as a stream (aiohttp warns otherwise)
    async with http.post(f"{emu.upload_url}/api/ephemeral_resource", data=data, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def upload_ok(http: aiohttp.ClientSession, emu: Emulator, name: str, data: bytes) -> str:
    status, body = await upload(http, emu, {"file_name": name, "file_data": b64(data)})
    assert status == 200, body
    url: str = body["data"]["url"]
    return url


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


async def run_task(http: aiohttp.ClientSession, emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """Create a task and GET it (zero durations: it ends on the first GET, or once a loopback URL
    input has been fetched: `drain()` waits for that, then a second GET)."""
    headers = {"x-api-key": emu.api_key}
    async with http.post(f"{emu.base_url}/api/v1/task", json=body, headers=headers) as resp:
        created = await resp.json()
        assert resp.status == 200, created
    url = f"{emu.base_url}/api/v1/task/{created['data']['task_id']}"
    for _ in range(2):
        async with http.get(url, headers=headers) as resp:
            data: dict[str, Any] = (await resp.json())["data"]
        if data["status"].lower() in ("completed", "failed"):
            break
        await emu.drain()
    return data


def image_task(target: str, swap: str | None = None) -> dict[str, Any]:
    return {
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "input": {"target_image": target, "swap_image": swap or b64(HOPPER)},
    }


def video_task(target: str) -> dict[str, Any]:
    return {
        "model": "Qubico/video-toolkit",
        "task_type": "face-swap",
        "input": {"target_video": target, "swap_image": b64(HOPPER)},
    }


# -- the upload endpoint ------------------------------------------------------------------------------


async def test_upload_happy_path_served_on_both_sites(http: aiohttp.ClientSession, emu: Emulator) -> None:
    assert emu.upload_url.startswith("http://127.0.0.1:") and emu.upload_url != emu.base_url
    status, body = await upload(http, emu, {"file_name": "face.jpg", "file_data": b64(HOPPER)})
    assert status == 200
    assert set(body) == {"code", "data", "message"}
    assert body["code"] == 200 and body["message"] == "success"
    url = body["data"]["url"]
    assert url.startswith(f"{emu.upload_url}/files/") and url.endswith("/face.jpg")
    assert (await fetch(http, url)) == (200, HOPPER, "image/jpeg")  # no key needed
    same_on_task_site = url.replace(emu.upload_url, emu.base_url)
    assert (await fetch(http, same_on_task_site))[:2] == (200, HOPPER)
    assert (emu.stats.uploads, emu.stats.upload_requests) == (1, 1)


async def test_upload_top_level_url_style_and_data_uri(http: aiohttp.ClientSession, emu: Emulator) -> None:
    emu.faults.upload_url_style = "top-level"
    data_uri = "data:image/png;base64," + b64(TOO_WIDE)
    status, body = await upload(http, emu, {"file_name": "Flat.PNG", "file_data": data_uri})
    assert status == 200
    assert set(body) == {"code", "url", "message"} and body["code"] == 200
    assert body["url"].endswith("/Flat.PNG")
    assert await fetch(http, body["url"]) == (200, TOO_WIDE, "image/png")
    with pytest.raises(ValueError, match="upload_url_style"):
        emu.faults.upload_url_style = "nested"  # type: ignore[assignment]


async def test_upload_accepts_every_listed_extension_and_a_128_char_name(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    names = ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.mp4", "f.wav", "g.mp3", "x" * 124 + ".png"]
    for name in names:
        await upload_ok(http, emu, name, b"some bytes")
    uri = "data:audio/mpeg;base64," + b64(b"ID3...")
    assert (await upload(http, emu, {"file_name": "song.mp3", "file_data": uri}))[0] == 200
    spaced = await upload_ok(http, emu, "my face.jpg", HOPPER)
    assert "my%20face.jpg" in spaced and (await fetch(http, spaced))[:2] == (200, HOPPER)
    assert emu.stats.uploads == len(names) + 2


async def test_upload_needs_the_api_key(http: aiohttp.ClientSession, emu: Emulator) -> None:
    for key in (None, "wrong"):
        status, body = await upload(http, emu, {"file_name": "a.jpg", "file_data": b64(HOPPER)}, key=key)
        assert (status, body) == (401, {"code": 401, "data": None, "message": "Invalid API key"})
    assert emu.stats.uploads == 0 and emu.stats.upload_requests == 2


async def test_plan_error_knob(http: aiohttp.ClientSession, emu: Emulator) -> None:
    emu.faults.upload_plan_error = True
    status, body = await upload(http, emu, {"file_name": "a.jpg", "file_data": b64(HOPPER)})
    assert (status, body) == (403, {"code": 403, "data": None, "message": "Insufficient plan level"})
    emu.faults.reset()
    assert (await upload(http, emu, {"file_name": "a.jpg", "file_data": b64(HOPPER)}))[0] == 200
    assert emu.stats.uploads == 1


BAD_UPLOADS: list[tuple[str, Any, str]] = [
    (
        "name too long",
        {"file_name": "x" * 125 + ".jpg", "file_data": b64(HOPPER)},
        "129 characters long; max 128",
    ),
    ("bad extension", {"file_name": "face.gif", "file_data": b64(HOPPER)}, "file_name must end in one of"),
    ("no extension", {"file_name": "jpg", "file_data": b64(HOPPER)}, "file_name must end in one of"),
    ("name missing", {"file_data": b64(HOPPER)}, "file_name is required"),
    ("name not a string", {"file_name": 7, "file_data": b64(HOPPER)}, "file_name is required"),
    ("path in name", {"file_name": "../a.jpg", "file_data": b64(HOPPER)}, "plain file name"),
    (
        "mismatched data uri",
        {"file_name": "face.jpg", "file_data": "data:image/png;base64," + b64(HOPPER)},
        "content type image/png does not match .jpg (image/jpeg)",
    ),
    (
        "data uri not base64",
        {"file_name": "face.jpg", "file_data": "data:image/jpeg," + b64(HOPPER)},
        "data:<type>;base64,<data>",
    ),
    ("bad base64", {"file_name": "face.jpg", "file_data": "not*base64!"}, "file_data is not valid base64"),
    ("empty data", {"file_name": "face.jpg", "file_data": ""}, "file_data is required"),
    ("data missing", {"file_name": "face.jpg"}, "file_data is required"),
    ("not an object", ["face.jpg"], "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "why"), [c[1:] for c in BAD_UPLOADS], ids=[c[0] for c in BAD_UPLOADS])
async def test_upload_rules(http: aiohttp.ClientSession, emu: Emulator, body: Any, why: str) -> None:
    status, answer = await upload(http, emu, body)
    assert status == 400, answer
    assert answer["code"] == 400 and answer["data"] is None
    assert answer["message"].startswith("Invalid request parameters: ")
    assert why in answer["message"]
    assert emu.stats.uploads == 0


async def test_upload_over_10_mib_is_rejected(http: aiohttp.ClientSession, emu: Emulator) -> None:
    limit = 10 * 1024 * 1024
    status, body = await upload(http, emu, {"file_name": "big.mp4", "file_data": b64(b"\0" * (limit + 1))})
    assert status == 400
    assert "Invalid request parameters: file_data is 10485761 bytes; max 10485760" in body["message"]
    exact = await upload_ok(http, emu, "exact.mp4", b"\0" * limit)  # exactly 10 MiB is fine
    assert len((await fetch(http, exact))[1]) == limit
    assert emu.stats.uploads == 1


async def test_uploads_expire_after_24_hours(http: aiohttp.ClientSession, emu: Emulator) -> None:
    url = await upload_ok(http, emu, "face.jpg", HOPPER)
    emu.advance(DAY - 1)
    assert (await fetch(http, url))[0] == 200
    emu.advance(2)
    assert (await fetch(http, url))[0] == 404
    assert (await fetch(http, url.replace(emu.upload_url, emu.base_url)))[0] == 404
    failed = await run_task(http, emu, image_task(url))  # an expired upload is no input either
    assert (failed["status"].lower(), failed["error"]["message"]) == ("failed", "failed to get valid image")
    hosted = emu.host_file(HOPPER)  # files hosted by the test itself do not expire
    assert (await fetch(http, hosted))[0] == 200


async def test_scripted_upload_response(http: aiohttp.ClientSession, emu: Emulator) -> None:
    emu.faults.script("upload", 502, "<html>bad gateway</html>")
    emu.faults.script("any", 500)  # "any" is the task API only: uploads do not take it
    status, body = await upload(http, emu, {"file_name": "a.jpg", "file_data": b64(HOPPER)})
    assert (status, body) == (502, "<html>bad gateway</html>")
    assert (await upload(http, emu, {"file_name": "a.jpg", "file_data": b64(HOPPER)}))[0] == 200
    assert emu.faults.scripted == 1 and emu.stats.uploads == 1


async def test_upload_route_is_only_on_the_upload_site(http: aiohttp.ClientSession, emu: Emulator) -> None:
    body = {"file_name": "a.jpg", "file_data": b64(HOPPER)}
    async with http.post(f"{emu.base_url}/api/ephemeral_resource", json=body, headers={"x-api-key": emu.api_key}) as r:
        assert r.status == 404
    async with http.get(f"{emu.upload_url}/api/v1/task/x", headers={"x-api-key": emu.api_key}) as r:
        assert r.status == 404
    async with http.get(f"{emu.upload_url}/api/ephemeral_resource") as r:
        assert r.status == 405


async def test_rate_limit_does_not_apply_to_uploads(http: aiohttp.ClientSession, emu: Emulator) -> None:
    emu.faults.rate_limit = 1
    for _ in range(3):
        assert (await upload(http, emu, {"file_name": "a.jpg", "file_data": b64(HOPPER)}))[0] == 200


# -- URL inputs served by the emulator ----------------------------------------------------------------


async def test_create_with_uploaded_urls_completes(http: aiohttp.ClientSession, emu: Emulator) -> None:
    target = await upload_ok(http, emu, "target.jpg", ASTRONAUT)
    swap = await upload_ok(http, emu, "swap face.jpg", HOPPER)
    done = await run_task(http, emu, image_task(target, swap))
    assert done["status"].lower() == "completed", done["error"]
    assert emu.tasks[done["task_id"]].result == ASTRONAUT  # identity: the target, fetched from the store
    chained = await run_task(http, emu, image_task(done["output"]["image_url"], target))
    assert chained["status"].lower() == "completed"

    video = await upload_ok(http, emu, "clip.mp4", TINY_MP4)
    done = await run_task(http, emu, video_task(video))
    assert done["status"].lower() == "completed", done["error"]
    assert emu.tasks[done["task_id"]].frames == 10
    assert done["meta"]["usage"]["consume"] == 10 * 50_000  # points per frame


@pytest.mark.parametrize(
    ("name", "data"),
    [("notes.png", b"plain text, not a PNG"), ("wide.png", TOO_WIDE), ("clip.mp4", TINY_MP4)],
    ids=["not-an-image", "too-wide", "video-as-image"],
)
async def test_invalid_uploaded_image_fails_the_task(
    http: aiohttp.ClientSession, emu: Emulator, name: str, data: bytes
) -> None:
    url = await upload_ok(http, emu, name, data)
    for body in (image_task(url), image_task(b64(ASTRONAUT), url)):
        failed = await run_task(http, emu, body)
        assert failed["status"].lower() == "failed"
        assert failed["error"]["message"] == "failed to get valid image"
        assert failed["output"] is None


async def test_invalid_uploaded_video_fails_the_task(http: aiohttp.ClientSession, emu: Emulator) -> None:
    for name, data in (("long.mp4", header_only_mp4(601)), ("still.mp4", HOPPER)):
        failed = await run_task(http, emu, video_task(await upload_ok(http, emu, name, data)))
        assert (failed["status"].lower(), failed["error"]["message"]) == ("failed", "failed to get valid video")
    ok = await run_task(http, emu, video_task(await upload_ok(http, emu, "ok.mp4", header_only_mp4(600))))
    assert ok["status"].lower() == "completed"


async def test_urls_off_loopback_or_unreachable_fail_the_task(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """Only loopback URLs are fetched (the service fetches public ones; the emulator cannot)."""
    uploaded = await upload_ok(http, emu, "face.jpg", HOPPER)
    missing = uploaded.rsplit("/", 2)[0] + "/0000/face.jpg"
    unreachable = [
        "http://127.0.0.1:9/files/face.jpg",  # loopback, nothing listening: fetched, refused
        uploaded.replace("http://", "https://"),  # TLS to a plain-HTTP port
        missing,
        f"{emu.base_url}/api/v1/task/x.jpg",  # fetched without a key: 401
    ]
    for url in unreachable:
        failed = await run_task(http, emu, image_task(url))
        assert (failed["status"].lower(), failed["error"]["message"]) == ("failed", "failed to get valid image"), url
        assert url in failed["error"]["raw_message"]
    for url, host in (("https://example.com/face.jpg", "example.com"), ("http://10.0.0.1:8080/a.png", "10.0.0.1")):
        failed = await run_task(http, emu, image_task(url))
        only = f"the emulator only fetches loopback URLs (got host {host})"
        assert failed["status"].lower() == "failed"
        assert (failed["error"]["message"], failed["error"]["raw_message"]) == (
            f"failed to get valid image: {only}",
            only,
        )
