"""The batch CLI's progress display (issue 15): total, counts, rate, ETA and spend vs budget.

`--json` keeps stdout for one JSON line per job; progress and the summary go to stderr. Without
the `cli` extra (rich) the display falls back to plain lines, and never crashes.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from qubico_async import _batch_cli_display
from qubico_async._batch_cli_display import PlainDisplay, RichDisplay, make_display, progress_text
from qubico_async.batch import Progress
from qubico_async.testing import Emulator, identity

from .test_batch import FACE, png

ROOT = Path(__file__).parent.parent
HAVE_RICH = importlib.util.find_spec("rich") is not None


def _p(done: int, total: int | None = 10, **kw: float) -> Progress:
    fields: dict[str, float] = {
        "succeeded": done,
        "failed": 0,
        "uncertain": 0,
        "skipped": 0,
        "in_flight": 2,
        "spend_usd": done * 0.01,
        "elapsed": 2.0,
    }
    fields.update(kw)
    return Progress(total=total, done=done, **fields)  # type: ignore[arg-type]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_has_total_counts_rate_eta_and_budget() -> None:
    line = progress_text(_p(4, succeeded=2, failed=1, uncertain=1), budget=5.0)
    assert line.startswith("4/10 done (2 ok, 1 failed, 1 uncertain, 0 skipped), 2 in flight, 2.00/s")
    assert "ETA 3s" in line  # 6 left at 2 per second
    assert "$0.040 of $5.00 budget" in line
    no_total = progress_text(_p(4, total=None), budget=None)
    assert no_total.startswith("4 done") and "ETA ?" in no_total and "$0.040 spent" in no_total
    assert "ETA 1h23m" in progress_text(_p(1, total=5001, elapsed=1.0), budget=None)


def test_plain_lines_off_a_terminal_are_spaced_but_the_last_always_shows() -> None:
    out = io.StringIO()
    display = PlainDisplay(out, budget=None, interval=3600)
    display(_p(1))
    display(_p(2))  # within the interval: not printed
    display(_p(10))  # the last one always is
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["1/10", "10/10"]
    display.message("could not download x")
    display.close()
    assert out.getvalue().endswith("could not download x\n")


def test_plain_on_a_terminal_redraws_one_line_and_ends_it() -> None:
    out = Tty()
    display = PlainDisplay(out, budget=1.0, interval=3600)
    display(_p(1))
    display(_p(2))
    assert out.getvalue().count("\r\x1b[2K") == 2 and "\n" not in out.getvalue()
    display.message("oops")  # on a line of its own, not glued to the progress line
    assert out.getvalue().endswith("\noops\n")
    display(_p(3))
    display.close()
    assert out.getvalue().endswith("\n")


def test_off_a_terminal_the_display_is_plain_and_quiet() -> None:
    out = io.StringIO()
    assert isinstance(make_display(out, None), PlainDisplay)
    assert out.getvalue() == ""  # no install hint in logs or pipes


def test_on_a_terminal_rich_draws_a_bar_else_plain_lines_with_an_install_hint() -> None:
    out = Tty()
    display = make_display(out, 2.0)
    try:
        if HAVE_RICH:
            assert isinstance(display, RichDisplay)
            display(_p(3, failed=1, succeeded=2))
            display.message("a message [not markup]")
        else:
            assert isinstance(display, PlainDisplay)
            assert 'pip install "qubico_async[cli]"' in out.getvalue()
            display(_p(3))
    finally:
        display.close()
    text = out.getvalue()
    assert "3/10" in text
    if HAVE_RICH:
        assert "a message [not markup]" in text and "$0.03/$2.00" in text


@pytest.fixture
async def emu_p() -> AsyncIterator[Emulator]:
    async with Emulator(api_key="progress-key", processor=identity) as server:
        yield server


def _env(emu: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QUBICO_API_KEY", "PIAPI_API_KEY", "QUBICO_UPLOAD_URL")}
    return {**env, "QUBICO_API_KEY": emu.api_key, "QUBICO_BASE_URL": emu.base_url, "PYTHONPATH": str(ROOT)}


def _inputs(tmp_path: Path, n: int) -> tuple[Path, Path]:
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(n):
        (folder / f"t{i:02d}.png").write_bytes(png(i))
    return face, folder


@pytest.mark.anyio
async def test_json_mode_prints_one_line_per_job_on_stdout_and_progress_on_stderr(
    emu_p: Emulator, tmp_path: Path
) -> None:
    face, folder = _inputs(tmp_path, 5)
    emu_p.fail_next(1, "no face detected in target_image")
    out = tmp_path / "out"
    args = ["batch", "--swap", str(face), "--targets", str(folder), "--out", str(out), "--json", "--budget", "1"]
    result = await anyio.run_process([sys.executable, "-m", "qubico_async", *args], env=_env(emu_p), check=False)
    assert result.returncode == 1  # one job failed
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    records = [json.loads(line) for line in stdout.splitlines()]  # nothing but JSON lines
    assert sorted(r["index"] for r in records) == list(range(5))
    assert sorted(r["status"] for r in records) == ["failed"] + ["succeeded"] * 4
    assert all(Path(r["output"]).is_file() for r in records if r["status"] == "succeeded")
    # the progress knows the total (so an ETA), and the spend against the budget
    assert "5/5 done (4 ok, 1 failed, 0 uncertain, 0 skipped)" in stderr
    assert "ETA 0s" in stderr and "of $1.00 budget" in stderr
    assert "5 jobs: 4 succeeded, 1 failed" in stderr
    assert "1 x failed: no face detected in target_image" in stderr
    assert "{" not in stderr


@pytest.mark.anyio
async def test_a_slow_batch_still_shows_progress_between_outcomes(
    emu_p: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal a line is printed every PLAIN_INTERVAL seconds even when no job finishes."""
    from qubico_async.cli import main

    monkeypatch.setattr(_batch_cli_display, "PLAIN_INTERVAL", 0.01)
    monkeypatch.setenv("QUBICO_API_KEY", emu_p.api_key)
    emu_p.processing_seconds = 0.3
    face, folder = _inputs(tmp_path, 1)
    argv = ["batch", "--swap", str(face), "--targets", str(folder), "--out", str(tmp_path / "out")]
    code = await anyio.to_thread.run_sync(main, [*argv, "--base-url", emu_p.base_url])
    assert code == 0
    err = capsys.readouterr().err
    assert "0/1 done" in err, err  # before the only job finished
    assert "1/1 done" in err
