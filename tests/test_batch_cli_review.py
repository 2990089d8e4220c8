"""The batch CLI after the adversarial review (issue 11, findings 7 and 12, journal errors).

Each test runs `python -m qubico_async batch` as a real subprocess against the emulator in
this process (or, to prove a request was *not* made, with nothing listening at all).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from qubico_async.testing import Emulator, identity

from .test_batch import FACE, png

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent


@pytest.fixture
async def emu_r() -> AsyncIterator[Emulator]:
    async with Emulator(api_key="cli-review-key", processor=identity) as server:
        yield server


def _dead_url() -> str:
    """A loopback URL nothing listens on: a request that goes there fails, and stays local."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _env(emu: Emulator | None, *, key: bool = True, base_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QUBICO_API_KEY", "PIAPI_API_KEY", "QUBICO_UPLOAD_URL")}
    env["PYTHONPATH"] = str(ROOT)
    env["QUBICO_BASE_URL"] = base_url or (emu.base_url if emu is not None else _dead_url())
    if key:
        env["QUBICO_API_KEY"] = emu.api_key if emu is not None else "some-key"
    return env


async def _run(argv: list[str], env: dict[str, str], limit: float = 60) -> tuple[int, str]:
    """Run the CLI; a hang fails the test (the process is killed) instead of stalling the suite."""
    proc = await anyio.open_process(argv, env=env)
    output = b""
    async with proc:
        try:
            with anyio.fail_after(limit):
                assert proc.stdout is not None and proc.stderr is not None
                async with anyio.create_task_group() as tg:
                    chunks: list[bytes] = []

                    async def drain(stream: anyio.abc.ByteReceiveStream) -> None:
                        async for chunk in stream:
                            chunks.append(chunk)

                    tg.start_soon(drain, proc.stdout)
                    tg.start_soon(drain, proc.stderr)
                    await proc.wait()
                output = b"".join(chunks)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"the CLI hung for {limit}s: {argv[3:]}")
    assert proc.returncode is not None
    return proc.returncode, output.decode()


async def _cli(env: dict[str, str], *args: str, limit: float = 60) -> tuple[int, str]:
    return await _run([sys.executable, "-m", "qubico_async", *args], env, limit)


def _targets(folder: Path, n: int, start: int = 0) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"t{i:03d}.png").write_bytes(png(start + i))
    return folder


def _face(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    return face


def _report(out: Path) -> list[dict[str, object]]:
    raw = (out / "report.jsonl").read_bytes()
    assert b"\x00" not in raw
    return [json.loads(line) for line in raw.decode().splitlines()]


# -- finding 7: report.jsonl -------------------------------------------------------------------


async def test_report_has_exactly_one_line_per_job_also_after_resume(emu_r: Emulator, tmp_path: Path) -> None:
    n = 60
    face = _face(tmp_path)
    targets = _targets(tmp_path / "in", n)
    out = tmp_path / "out"
    emu_r.fail_next(3, "no face detected in target_image")
    args = ["batch", "--swap", str(face), "--targets", str(targets), "--out", str(out), "--concurrency", "16"]
    code, output = await _cli(_env(emu_r), *args)
    assert code == 1, output  # three jobs failed
    lines = _report(out)
    assert sorted(r["index"] for r in lines) == list(range(n)), "one line per job, no duplicates, none missing"
    assert Counter(r["status"] for r in lines) == {"succeeded": n - 3, "failed": 3}
    assert all(r["output"] for r in lines if r["status"] == "succeeded")
    # a summary of why, on the console
    assert "failures by reason:" in output
    assert "3 x failed: no face detected in target_image" in output
    # resume: nothing is paid again, and the report is rewritten, not appended to
    code, output = await _cli(_env(emu_r), *args, "--resume")
    assert emu_r.stats.creates == n
    lines_after = _report(out)
    assert sorted(r["index"] for r in lines_after) == list(range(n))
    assert Counter(r["status"] for r in lines_after) == {"skipped": n}
    assert all(r["output"] for r in lines_after if "succeeded" in str(r["reason"]))
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


async def test_targets_with_the_same_name_get_their_own_results(emu_r: Emulator, tmp_path: Path) -> None:
    face = _face(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png(1))
    (tmp_path / "b" / "x.png").write_bytes(png(2))
    manifest = tmp_path / "m.csv"
    manifest.write_text("target\na/x.png\nb/x.png\n")
    out = tmp_path / "out"
    code, output = await _cli(_env(emu_r), "batch", "--swap", str(face), "--targets", str(manifest), "--out", str(out))
    assert code == 0, output
    outputs = [r["output"] for r in sorted(_report(out), key=lambda r: int(str(r["index"])))]
    assert len(set(outputs)) == 2, outputs
    assert [Path(str(p)).read_bytes() for p in outputs] == [png(1), png(2)]  # identity processor


# -- finding 12: resume hint and preflight -----------------------------------------------------


async def test_the_resume_hint_runs_as_printed_against_the_same_service(emu_r: Emulator, tmp_path: Path) -> None:
    emu_r.processing_seconds = 3600  # emulator clock: nothing finishes before the Ctrl-C, however loaded
    face = _face(tmp_path / "my face dir")
    targets = _targets(tmp_path / "in put", 24)
    out = tmp_path / "out $HOME 'x'"
    journal = tmp_path / "jour nal.sqlite"
    args = [
        "--base-url", emu_r.base_url,
        "batch", "--swap", str(face), "--targets", str(targets), "--out", str(out), "--journal", str(journal),
        "--concurrency", "3", "--upload", "never", "--resubmit-uncertain",
    ]  # fmt: skip
    # The base URL is given as an option only: the environment points nowhere.
    env = _env(emu_r, base_url=_dead_url())
    proc = await anyio.open_process([sys.executable, "-m", "qubico_async", *args], env=env)
    async with proc:
        with anyio.fail_after(30):
            while emu_r.stats.creates < 3:  # every slot taken
                await anyio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            await proc.wait()
        assert proc.stderr is not None
        err = b""
        with anyio.move_on_after(5):
            async for chunk in proc.stderr:
                err += chunk
    assert proc.returncode == 130, err
    text = err.decode()
    hint = text.split("Resume with:", 1)[1].strip().splitlines()[0]
    argv = shlex.split(hint)
    assert argv[0] == sys.executable and "--resume" in argv
    for option in ("--base-url", "--upload", "--resubmit-uncertain", "--journal", "--concurrency"):
        assert option in argv, (option, hint)
    emu_r.processing_seconds = 0
    emu_r.advance(3600)  # the three created before the Ctrl-C are done now
    code, output = await _run(argv, env)
    assert code == 0, output
    per_input = Counter(t.input["target_image"] for t in emu_r.tasks.values())
    assert len(per_input) == 24 and max(per_input.values()) == 1  # the same service, nothing paid twice
    assert len(list(out.glob("*-swapped.png"))) == 24
    assert sorted(r["index"] for r in _report(out)) == list(range(24))  # interrupted, resumed: one line each


async def test_preflight_fails_fast_with_exit_2_and_makes_no_journal(tmp_path: Path) -> None:
    face = _face(tmp_path)
    targets = _targets(tmp_path / "in", 3)
    out = tmp_path / "out"
    base = ["batch", "--swap", str(face), "--targets", str(targets), "--out", str(out)]
    cases = [
        (_env(None, key=False), base, "no API key: set QUBICO_API_KEY"),
        (_env(None), ["batch", "--swap", str(tmp_path / "nope.png"), *base[3:]], "--swap"),
        (_env(None), [*base[:3], "--targets", str(tmp_path / "missing"), *base[5:]], "--targets"),
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("target\nin/t000.png\nin/gone.png\n")
    cases.append((_env(None), [*base[:3], "--targets", str(manifest), *base[5:]], "gone.png is not a file"))
    bad_face = tmp_path / "face.txt"
    bad_face.write_text("not an image")
    cases.append((_env(None), ["batch", "--swap", str(bad_face), *base[3:]], "face.txt"))
    cases.append((_env(None), [*base, "--concurrency", "0"], "--concurrency"))
    for env, args, message in cases:
        code, output = await _cli(env, *args)
        assert code == 2, (args, output)
        assert message in output, output
        assert "Traceback" not in output
        assert not (out / ".qubico-journal.sqlite").exists()  # nothing to --resume


async def test_existing_journal_without_resume_is_exit_2(emu_r: Emulator, tmp_path: Path) -> None:
    face = _face(tmp_path)
    targets = _targets(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = ["batch", "--swap", str(face), "--targets", str(targets), "--out", str(out)]
    assert (await _cli(_env(emu_r), *args))[0] == 0
    code, output = await _cli(_env(emu_r), *args)
    assert code == 2 and "--resume" in output and str(out / ".qubico-journal.sqlite") in output


@pytest.mark.parametrize("kind", ["folder", "not sqlite"])
async def test_an_unusable_journal_is_exit_2_naming_it(tmp_path: Path, kind: str) -> None:
    face = _face(tmp_path)
    targets = _targets(tmp_path / "in", 2)
    journal = tmp_path / "the-journal.sqlite"
    if kind == "folder":
        journal.mkdir()
    else:
        journal.write_bytes(b"this is not a SQLite database, just some text\n" * 50)
    args = ["batch", "--swap", str(face), "--targets", str(targets), "--out", str(tmp_path / "out")]
    code, output = await _cli(_env(None), *args, "--journal", str(journal), "--resume", limit=30)
    assert code == 2, output
    assert "the-journal.sqlite" in output and "Traceback" not in output


async def test_an_error_starting_the_batch_is_exit_2_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI side of a batch that cannot start: `swap_many` raising a `QubicoError` at its first
    outcome (as an unusable journal does) is exit 2 with the message, not an `ExceptionGroup`.

    `swap_many` is replaced by a stand-in (the SDK's own behaviour is tested in test_batch.py),
    so this checks only how the CLI handles it; the subprocess test above checks the whole path.
    """
    import io

    from qubico_async import QubicoClient
    from qubico_async._batch_cli import run_batch
    from qubico_async.cli import _parser
    from qubico_async.errors import InvalidInputError

    class Unstartable:
        report = None

        def __init__(self, *args: object, **kwargs: object) -> None:
            self.journal = kwargs["journal"]

        async def __aenter__(self) -> Unstartable:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def __aiter__(self) -> Unstartable:
            return self

        async def __anext__(self) -> object:
            raise InvalidInputError(f"journal {self.journal} is not a qubico_async journal")

    monkeypatch.setattr(QubicoClient, "swap_many", Unstartable)
    monkeypatch.setenv("QUBICO_API_KEY", "k")
    face = _face(tmp_path)
    targets = _targets(tmp_path / "in", 2)
    journal = tmp_path / "odd-journal.sqlite"
    out = str(tmp_path / "out")
    argv = ["--base-url", _dead_url(), "batch", "--swap", str(face), "--targets", str(targets), "--out", out]
    args = _parser().parse_args([*argv, "--journal", str(journal)])
    stream = io.StringIO()
    assert await run_batch(args, stream) == 2
    assert f"error: journal {journal} is not a qubico_async journal" in stream.getvalue()
    assert not (tmp_path / "out" / "report.jsonl").exists()
