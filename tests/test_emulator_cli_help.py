"""`python -m qubico_async emulator --help`: every option's default, readable metavars, and an
epilog saying how to point the SDK at it, what `--engine auto` needs, and how to stop it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qubico_async.testing._cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def help_text() -> str:
    return " ".join(build_parser().format_help().split())  # argparse wraps lines at the terminal width


@pytest.mark.parametrize(
    "option",
    [
        "--host HOST",
        "--port PORT",
        "--upload-port PORT",
        "--api-key KEY",
        "--pending-seconds SECONDS",
        "--processing-seconds SECONDS",
        "--failure-rate P",
        "--seed N",
        "--max-concurrent-tasks N",
        "--balance-usd USD",
        "--over-limit {queue,reject}",
        "--engine {auto,identity}",
        "--wire {realistic,plain}",
    ],
)
def test_metavars_are_readable(help_text: str, option: str) -> None:
    assert option in help_text


@pytest.mark.parametrize(
    ("option", "default"),
    [
        ("--host", "127.0.0.1"),
        ("--port", "8787"),
        ("--upload-port", "--port + 1"),
        ("--api-key", "emu-key"),
        ("--pending-seconds", "0.5"),
        ("--processing-seconds", "2.0"),
        ("--failure-rate", "0.0"),
        ("--seed", "0"),
        ("--max-concurrent-tasks", "10"),
        ("--over-limit", "not enforced"),
        ("--wire", "realistic"),
        ("--balance-usd", "1000.0"),
        ("--engine", "auto"),
    ],
)
def test_every_option_shows_its_default(monkeypatch: pytest.MonkeyPatch, option: str, default: str) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    options = build_parser().format_help().split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    entries = {e.split()[0]: " ".join(e.split()) for e in re.split(r"\n(?=  -)", options)}  # one per option
    assert f"(default: {default}" in entries[option], entries[option]


def test_epilog_says_how_to_point_the_sdk_at_it(help_text: str) -> None:
    assert (
        "export QUBICO_BASE_URL=http://127.0.0.1:8787 QUBICO_UPLOAD_URL=http://127.0.0.1:8788 "
        "QUBICO_API_KEY=emu-key" in help_text
    )
    assert 'pip install "qubico_async[faces]"' in help_text
    assert "results are the target image unchanged" in help_text
    assert "Ctrl-C" in help_text
    assert "429" in help_text


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "QUBICO_BASE_URL" in capsys.readouterr().out


def test_help_through_the_package_entry_point() -> None:
    """The real command line, so the SDK CLI's dispatch to the emulator is covered too."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "qubico_async", "emulator", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--over-limit {queue,reject}" in proc.stdout
    assert "(default: 8787)" in proc.stdout
    assert "QUBICO_UPLOAD_URL=http://127.0.0.1:8788" in proc.stdout


def test_over_limit_needs_a_positive_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--over-limit", "queue", "--max-concurrent-tasks", "0", "--port", "0"]) == 2
    assert "--max-concurrent-tasks" in capsys.readouterr().err
