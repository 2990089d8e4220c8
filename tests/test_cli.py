"""The command line, run as a real subprocess against an emulator in this process."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest

from qubico_async._batch_cli_inputs import read_manifest
from qubico_async.errors import InvalidInputError
from qubico_async.testing import Emulator, identity

from ._helpers import HANG_GUARD
from .test_batch import FACE, png

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent


@pytest.fixture
async def emu_c() -> AsyncIterator[Emulator]:
    async with Emulator(api_key="cli-key", processor=identity) as server:
        yield server


def _env(emu: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QUBICO_API_KEY", "PIAPI_API_KEY")}
    return {**env, "QUBICO_API_KEY": emu.api_key, "QUBICO_BASE_URL": emu.base_url, "PYTHONPATH": str(ROOT)}


async def _cli(emu: Emulator, *args: str) -> tuple[int, str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "qubico_async", *args], env=_env(emu), check=False, stdin=None
    )
    return result.returncode, (result.stdout + result.stderr).decode()


def _targets(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"t{i:02d}.png").write_bytes(png(i))
    return folder


async def test_batch_over_a_folder(emu_c: Emulator, tmp_path: Path) -> None:
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    targets = _targets(tmp_path / "in", 6)
    code, output = await _cli(
        emu_c,
        "batch",
        "--swap",
        str(face),
        "--targets",
        str(targets),
        "--out",
        str(tmp_path / "out"),
        "--concurrency",
        "3",
    )
    assert code == 0, output
    assert "6 jobs: 6 succeeded" in output
    assert sorted(p.name for p in (tmp_path / "out").glob("*-swapped.*")) == [f"t{i:02d}-swapped.png" for i in range(6)]
    lines = [json.loads(line) for line in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    assert Counter(r["status"] for r in lines) == {"succeeded": 6}
    assert all(r["task_id"] and r["output"] for r in lines)
    assert emu_c.api_key not in (tmp_path / "out" / "report.jsonl").read_text()
    # running again without --resume refuses to mix runs; with it, nothing is paid again
    code, output = await _cli(
        emu_c, "batch", "--swap", str(face), "--targets", str(targets), "--out", str(tmp_path / "out")
    )
    assert code == 2 and "--resume" in output
    code, output = await _cli(
        emu_c, "batch", "--swap", str(face), "--targets", str(targets), "--out", str(tmp_path / "out"), "--resume"
    )
    assert code == 0, output
    assert "6 skipped" in output
    assert emu_c.stats.creates == 6


async def test_batch_with_csv_manifest_and_budget(emu_c: Emulator, tmp_path: Path) -> None:
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    _targets(tmp_path / "in", 4)
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("target,key\nin/t00.png,a\nin/t01.png,b\nin/t02.png,c\nin/t03.png,d\n")
    code, output = await _cli(
        emu_c,
        "batch",
        "--swap",
        str(face),
        "--targets",
        str(manifest),
        "--out",
        str(tmp_path / "out"),
        "--budget",
        "0.02",
        "--concurrency",
        "1",
    )
    assert code == 0, output
    assert "2 succeeded, 2 skipped" in output
    assert "budget" in output
    keys = {json.loads(line)["key"] for line in (tmp_path / "out" / "report.jsonl").read_text().splitlines()}
    assert keys == {"a", "b", "c", "d"}


async def test_ctrl_c_stops_cleanly_and_says_how_to_resume(emu_c: Emulator, tmp_path: Path) -> None:
    emu_c.processing_seconds = 3600  # emulator clock: nothing finishes before the Ctrl-C, however loaded
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    targets = _targets(tmp_path / "in", 12)  # 4 in flight, 8 not sent at the Ctrl-C: mid-batch
    out = tmp_path / "out"
    args = ["batch", "--swap", str(face), "--targets", str(targets), "--out", str(out), "--concurrency", "4"]
    proc = await anyio.open_process([sys.executable, "-m", "qubico_async", *args], env=_env(emu_c))
    async with proc:
        with anyio.fail_after(HANG_GUARD):
            while emu_c.stats.creates < 4:
                await anyio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(HANG_GUARD):
            await proc.wait()
        assert proc.stderr is not None
        err = (await proc.stderr.receive()).decode() if proc.returncode is not None else ""
    assert proc.returncode == 130
    assert "Resume with" in err and "--resume" in err
    emu_c.processing_seconds = 0
    emu_c.advance(3600)  # the four created before the Ctrl-C are done now
    code, output = await _cli(emu_c, *args, "--resume")
    assert code == 0, output
    per_input = Counter(t.input["target_image"] for t in emu_c.tasks.values())
    assert len(per_input) == 12 and max(per_input.values()) == 1
    assert len(list(out.glob("*-swapped.png"))) == 12


def test_manifest_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("target\nok.png\n\n ,\n")
    with pytest.raises(InvalidInputError, match="line 4: empty target"):
        read_manifest(bad)
    bad.write_text("image,key\na.png,1\n")
    with pytest.raises(InvalidInputError, match="'target' column"):
        read_manifest(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidInputError, match="UTF-8"):
        read_manifest(bad)
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_manifest(tmp_path / "missing.csv")


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    m = tmp_path / "sub" / "m.csv"
    m.parent.mkdir()
    m.write_text("target,swap,key\na.png,,k1\nhttps://cdn.example/b.jpg,face.png,\n")
    rows = read_manifest(m)
    assert rows == [
        (str(m.parent / "a.png"), None, "k1"),
        ("https://cdn.example/b.jpg", str(m.parent / "face.png"), None),
    ]


async def test_emulator_command_serves(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await anyio.open_process(
        [  # a free upload port too (not --port + 1, which may be taken); identity: no OpenCV start-up
            *[sys.executable, "-m", "qubico_async", "emulator", "--port", str(port), "--upload-port", "0"],
            *["--api-key", "k9", "--engine", "identity"],
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    async with proc:
        try:
            assert proc.stdout is not None
            with anyio.fail_after(HANG_GUARD):
                text = ""
                while "api_key" not in text:
                    text += (await proc.stdout.receive()).decode()
            assert f"http://127.0.0.1:{port}" in text
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/account/info", headers={"x-api-key": "k9"}) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["data"]["max_concurrent_task_count"] > 0
        finally:
            proc.send_signal(signal.SIGINT)
            with anyio.fail_after(HANG_GUARD):
                await proc.wait()


async def test_demo_writes_results_and_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qubico_async._demo import run_demo

    monkeypatch.delenv("QUBICO_API_KEY", raising=False)
    monkeypatch.delenv("PIAPI_API_KEY", raising=False)
    said: list[str] = []
    written = await run_demo(tmp_path / "demo", say=said.append)
    names = {p.name for p in written}
    expected = {
        f"{case}-{when}.jpg"
        for case in ("astronaut-with-hopper-face", "group-largest-face")
        for when in ("before", "after")
    }
    assert expected <= names
    assert "comparison.png" in names or any("install qubico_async[faces]" in line for line in said)
    assert all(p.stat().st_size > 1000 for p in written)
    assert any("emulator" in line for line in said)


def test_output_names_from_inputs_stay_in_the_folder() -> None:
    from qubico_async._batch_cli import _out_name

    for target in (
        "../../etc/passwd.png",
        "/abs/path/x.jpg",
        "https://cdn.example/a/..%2F..%2Fb.png?x=1",
        "data:image/png;base64,AAAA",
        "...png",
    ):
        name = _out_name(target, 7, ".png")
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert name.endswith("-swapped.png")
