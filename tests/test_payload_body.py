"""The create body is built around the caller's base64 (issue 13): same JSON as before, same identity.

`encode_json` no longer runs `json.dumps` over the media; these tests pin what it must still
produce (the old body, byte for byte once parsed) and that `Prepared.identity` did not move
(journals from earlier runs must keep matching).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
import zlib
from typing import Any

import pytest

from qubico_async import FaceSwap, Image, MultiFaceSwap, QubicoClient, RawTask, RetryPolicy, WebhookConfig
from qubico_async._payloads import MediaSender, encode_json
from qubico_async.errors import InvalidInputError

from .scripted_service import Answer, ScriptedService, envelope, real_task

pytestmark = pytest.mark.anyio


def png(size: int, salt: int = 0, width: int = 32, height: int = 16) -> bytes:
    """About `size` bytes of PNG with a valid header (padding in a private chunk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pad = (salt.to_bytes(8, "big") * (size // 8 + 1))[: max(0, size - 57)]
    pixels = chunk(b"IDAT", zlib.compress(bytes(height * (1 + 3 * width))))  # whole: the SDK checks it
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + pixels + chunk(b"bnPd", pad) + chunk(b"IEND", b"")


def old_identity(payload: dict[str, Any], contents: dict[str, bytes]) -> str:
    """The identity formula journals were written with: the payload with `sha256:<content>` for media."""
    canonical = json.loads(json.dumps(payload))
    for key, data in contents.items():
        canonical["input"][key] = "sha256:" + hashlib.sha256(data).hexdigest()
    hook = canonical.get("config", {}).get("webhook_config")
    if hook:
        hook.pop("secret", None)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize("size", [1000, 300_000, 1_200_000])
async def test_body_is_the_old_json_and_identity_is_unchanged(size: int) -> None:
    target, swap = png(size, 1), png(size, 2)
    sender = MediaSender(None)
    forms = [
        FaceSwap(target, swap),
        FaceSwap(Image.from_base64(base64.b64encode(target)), uri(swap)),
        FaceSwap(uri(target, "image/jpeg"), Image.from_base64(" " + base64.b64encode(swap).decode() + "\n")),
    ]
    expected = {
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "input": {"target_image": uri(target), "swap_image": uri(swap)},
    }
    identities = set()
    for request in forms:
        prepared = await sender.prepare(request, "never")
        body = await encode_json(prepared.payload)
        body = body if isinstance(body, bytes) else b"".join(body)
        assert json.loads(body) == expected
        assert body == json.dumps(expected, separators=(",", ":")).encode()
        identities.add(prepared.identity)
    assert identities == {old_identity(expected, {"target_image": target, "swap_image": swap})}


async def test_other_fields_and_raw_tasks_are_encoded_as_json() -> None:
    image = png(500)
    sender = MediaSender(None)
    hook = WebhookConfig("https://hooks.example/x", "s3cret")
    multi = MultiFaceSwap(image, image, [0, 1], [1, 0], webhook=hook, service_mode='pu"blic\u00e9')
    prepared = await sender.prepare(multi, "never")
    body = await encode_json(prepared.payload)
    assert isinstance(body, bytes)
    parsed = json.loads(body)
    assert parsed["input"] == {
        "target_image": uri(image),
        "swap_image": uri(image),
        "swap_faces_index": "0,1",
        "target_faces_index": "1,0",
    }
    assert parsed["config"] == {
        "webhook_config": {"endpoint": "https://hooks.example/x", "secret": "s3cret"},
        "service_mode": 'pu"blic\u00e9',
    }
    assert prepared.identity == old_identity(parsed, {"target_image": image, "swap_image": image})
    # A caller's value that looks like the body's internal marker is sent as the caller's text.
    raw = RawTask(model="m", task_type="t", input={"a": Image.from_bytes(image), "b": "\x00x:0\x00", "c": [1, None]})
    body = await encode_json((await sender.prepare(raw, "never")).payload)
    assert isinstance(body, bytes)
    parsed = json.loads(body)
    assert parsed["input"] == {"a": uri(image), "b": "\x00x:0\x00", "c": [1, None]}


@pytest.mark.parametrize(
    "text",
    [
        "QQ==" + "A" * 2_000_000,  # padding in the middle of a long text (a later slice)
        "A" * 1_048_576 + "QQ==" + "A" * 1_048_576,
        "A" * 1_048_577,  # one character too many
        "A" * 1_048_576 + "*AAA",
        "A" * 524_287 + "\n" + "A" * 524_288,  # whitespace inside
    ],
)
async def test_long_base64_is_validated_like_b64decode(text: str) -> None:
    with pytest.raises(binascii.Error):
        base64.b64decode(text, validate=True)
    with pytest.raises(InvalidInputError, match="is not valid base64"):
        await Image.from_base64(text, name="face.b64").load()


async def test_header_beyond_the_decoded_prefix_is_still_checked() -> None:
    """A JPEG whose frame header comes after 200 KB of metadata: the prefix is not enough, the whole is."""
    app1 = b"\xff\xe1" + struct.pack(">H", 65535) + b"\x00" * 65533
    sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 3000, 1000) + b"\x00" * 9
    scan = b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x00\x00\x3f\x00" + b"\x00" * 16  # image data
    jpeg = b"\xff\xd8" + app1 * 4 + sof + scan + b"\xff\xd9"
    with pytest.raises(InvalidInputError, match="1000x3000 pixels; the limit is 2048x2048"):
        await Image.from_base64(base64.b64encode(jpeg)).load()
    ok = b"\xff\xd8" + app1 * 4 + b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 600, 800) + b"\x00" * 9 + scan + b"\xff\xd9"
    loaded = await Image(kind="data_uri", value=uri(ok, "image/png"), name="x").load()
    assert (loaded.info.format, loaded.info.width, loaded.info.height) == ("jpeg", 800, 600)
    assert loaded.digest == hashlib.sha256(ok).hexdigest()
    assert loaded.size == len(ok)
    assert loaded.data == ok


@pytest.mark.parametrize("size", [150_000, 300_000])
async def test_sliced_body_reaches_the_service_whole_and_again_on_a_retry(size: int) -> None:
    """A large body goes as pieces (never joined): the service reads the same JSON, also when resent."""
    target, swap = png(size, 3), png(size, 4)
    answers = iter([(429, {"code": 429, "message": "slow down"})])

    def create(service: ScriptedService, payload: dict[str, Any]) -> Answer:
        return next(answers, None) or service.accept(payload)

    async with ScriptedService().running() as service:
        service.on_create = create
        async with QubicoClient("key", base_url=service.base_url, retry=RetryPolicy.instant()) as client:
            task = await client.submit(FaceSwap(target, Image.from_base64(base64.b64encode(swap))), upload="never")
    assert task.task_id
    assert service.creates == 2
    assert [p["input"] for p in service.payloads] == [{"target_image": uri(target), "swap_image": uri(swap)}] * 2


@pytest.mark.parametrize("escaped", [False, True])
async def test_a_secret_echoed_in_an_answer_is_redacted_even_when_json_escaped(escaped: bool) -> None:
    """Redaction of answers is skipped only when the raw body cannot hold a secret (no match, no escape)."""
    key = "sk-live-0123456789abcdef"
    echoed = "".join(f"\\u{ord(c):04x}" for c in key) if escaped else key

    def create(service: ScriptedService, payload: dict[str, Any]) -> Answer:
        task = json.dumps(envelope(real_task(service.new_id(), "pending")))
        return 200, task.replace('"model": "Qubico/image-toolkit"', f'"model": "echo {echoed}"')

    async with ScriptedService().running() as service:
        service.on_create = create
        async with QubicoClient(key, base_url=service.base_url) as client:
            task = await client.submit(FaceSwap(png(100), png(100, 1)), upload="never")
    assert task.model == "echo ***"
