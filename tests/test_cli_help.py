"""The command line for a newcomer (issue 15): --version, help, global options anywhere, CLI-worded errors.

In-process (`qubico_async.cli.main(argv)`, run in a thread when it talks to the emulator of this
process) and against the emulator on loopback.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from qubico_async import __version__, cli
from qubico_async._batch_cli import JOURNAL_NAME
from qubico_async.cli import _emulator_args, _parser, install_hint, main
from qubico_async.testing import Emulator, identity

from .test_batch import FACE, png

ENV_VARS = ("QUBICO_API_KEY", "PIAPI_API_KEY", "QUBICO_BASE_URL", "QUBICO_UPLOAD_URL")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"qubico-async {__version__}"


@pytest.mark.parametrize("command", [[], ["batch"], ["swap"], ["demo"]])
def test_help_names_the_environment_and_the_extras(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    text = _help(capsys, *command)
    for name in ENV_VARS:
        assert name in text, name
    assert 'pip install "qubico_async[cli]"' in text and 'pip install "qubico_async[faces]"' in text
    if command:  # the global options are listed for the subcommand too
        assert "--base-url URL" in text and "-v, --verbose" in text


def test_batch_and_swap_help_describe_and_show_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help(capsys, "batch").split())
    assert "--resume" in text and "nothing is paid twice" in text  # a description, not just usage
    assert "exit status: 0" in text
    assert "--upload {auto,always,never} how local images reach the service" in text
    assert "(default: auto)" in text
    assert f"(default: OUT/{JOURNAL_NAME})" in text
    assert "--json print one JSON line per job to stdout" in text
    swap = " ".join(_help(capsys, "swap").split())
    assert "Swap the face in FACE into TARGET" in swap
    assert "(default: .)" in swap
    assert "(default: False)" not in swap  # flags do not get noise


def test_global_options_before_or_after_the_subcommand() -> None:
    tail = ["--swap", "f.png", "--targets", "in", "--out", "o"]
    before = _parser().parse_args(["-v", "--base-url", "http://127.0.0.1:1", "batch", *tail])
    after = _parser().parse_args(["batch", *tail, "--base-url", "http://127.0.0.1:1", "-v"])
    for args in (before, after):
        assert args.base_url == "http://127.0.0.1:1" and args.verbose is True
    # given nowhere: the environment's (read when the parser is built), else the default
    plain = _parser().parse_args(["batch", *tail])
    assert plain.base_url == "https://api.piapi.ai" and plain.verbose is False and plain.upload_url is None


def test_global_options_before_emulator_reach_it() -> None:
    assert _emulator_args(["emulator", "--port", "0"]) == ["--port", "0"]
    assert _emulator_args(["-v", "--base-url", "http://x", "--upload-url=y", "emulator", "--help"]) == ["--help"]
    assert _emulator_args(["batch", "emulator"]) is None
    assert _emulator_args(["-v"]) is None


def test_a_missing_extra_is_an_install_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert install_hint(ModuleNotFoundError("No module named 'cv2'", name="cv2")) == (
        'cv2 is not installed: pip install "qubico_async[faces]"'
    )
    assert install_hint(ModuleNotFoundError(name="fastapi.routing")) is not None
    assert 'qubico_async[cli]"' in (install_hint(ModuleNotFoundError(name="rich")) or "")
    assert install_hint(ModuleNotFoundError(name="something_else")) is None

    from qubico_async import _demo

    async def needs_opencv(out: Path) -> None:
        raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

    monkeypatch.setattr(_demo, "run_demo", needs_opencv)
    assert main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == 'error: numpy is not installed: pip install "qubico_async[faces]"\n'


def test_a_missing_targets_folder_says_it_does_not_exist(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QUBICO_API_KEY", "k")
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    missing = tmp_path / "photos"
    code = main(["batch", "--swap", str(face), "--targets", f"{missing}/", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--targets {missing}: does not exist" in err
    assert "must be a folder" not in err


def test_ctrl_c_before_a_journal_exists_prints_no_resume_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_batch", interrupted)
    out = tmp_path / "out"
    argv = ["batch", "--swap", "f.png", "--targets", str(tmp_path), "--out", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--resume" not in err
    out.mkdir()
    (out / JOURNAL_NAME).write_bytes(b"")  # once a journal exists, the hint is the way back
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Resume with:" in err and "--resume" in err


# -- against the emulator ----------------------------------------------------------------------


@pytest.fixture
async def emu_h() -> AsyncIterator[Emulator]:
    async with Emulator(api_key="help-key", processor=identity) as server:
        yield server


@pytest.mark.anyio
async def test_swap_refuses_an_existing_output_before_paying_in_cli_words(
    emu_h: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUBICO_API_KEY", emu_h.api_key)
    target, face = tmp_path / "t.png", tmp_path / "f.png"
    target.write_bytes(png(1))
    face.write_bytes(FACE)
    existing = tmp_path / "result.png"
    existing.write_bytes(b"keep me")
    argv = ["swap", str(target), str(face), "--out", str(existing), "--base-url", emu_h.base_url]
    assert await anyio.to_thread.run_sync(main, argv) == 1
    err = capsys.readouterr().err
    assert err == f"error: {existing} already exists: add --overwrite to replace it\n"
    assert emu_h.stats.creates == 0 and existing.read_bytes() == b"keep me"
    assert await anyio.to_thread.run_sync(main, [*argv, "--overwrite"]) == 0
    assert existing.read_bytes() == png(1)  # identity processor
    assert "completed" in capsys.readouterr().out


@pytest.mark.anyio
async def test_swap_without_a_key_names_the_environment_variable(
    emu_h: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "t.png"
    target.write_bytes(png(1))
    argv = ["--base-url", emu_h.base_url, "swap", str(target), str(target), "--out", str(tmp_path / "o.png")]
    assert await anyio.to_thread.run_sync(main, argv) == 1
    err = capsys.readouterr().err
    assert "set QUBICO_API_KEY" in err
    assert "api_key=" not in err and "QubicoClient" not in err
    assert emu_h.stats.creates == 0


@pytest.mark.anyio
async def test_batch_with_global_options_after_the_subcommand_runs(
    emu_h: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUBICO_API_KEY", emu_h.api_key)
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"t{i}.png").write_bytes(png(i))
    argv = ["batch", "--swap", str(face), "--targets", str(folder), "--out", str(tmp_path / "out")]
    assert await anyio.to_thread.run_sync(main, [*argv, "-v", "--base-url", emu_h.base_url]) == 0
    assert emu_h.stats.creates == 3
    assert "3 jobs: 3 succeeded" in capsys.readouterr().err


@pytest.mark.anyio
async def test_swap_extension_fix_names_the_file_after_its_bytes(
    emu_h: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUBICO_API_KEY", emu_h.api_key)
    target = tmp_path / "t.png"
    target.write_bytes(png(2))
    argv = ["swap", str(target), str(target), "--base-url", emu_h.base_url, "--extension", "fix"]
    assert await anyio.to_thread.run_sync(main, [*argv, "--out", str(tmp_path / "result.jpg")]) == 0
    assert (tmp_path / "result.png").read_bytes() == png(2) and not (tmp_path / "result.jpg").exists()
    assert str(tmp_path / "result.png") in capsys.readouterr().out
    strict = [*argv[:-1], "strict", "--out", str(tmp_path / "other.jpg")]
    assert await anyio.to_thread.run_sync(main, strict) == 1
    err = capsys.readouterr().err
    assert "the result is PNG but the name says .jpg" in err
    assert "completed, its result is at http://127.0.0.1:" in err  # paid for: the user can still fetch it
    assert not (tmp_path / "other.jpg").exists()


def test_a_default_of_zero_is_shown() -> None:
    """`0 == False`: a numeric default of 0 must not be mistaken for an unset flag."""
    import argparse

    from qubico_async.cli import HelpFormatter

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--fast", action="store_true", help="go fast")
    text = parser.format_help()
    assert "random seed (default: 0)" in " ".join(text.split())
    assert "go fast (default" not in " ".join(text.split())


def test_the_version_is_the_one_pyproject_states() -> None:
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert re.findall(r'^version = "([^"]+)"$', pyproject, re.MULTILINE) == [__version__]
