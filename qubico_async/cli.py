"""Command line: `python -m qubico_async` (or `qubico-async`): `demo`, `swap`, `batch`, `emulator`.

Global options (`-v`, `--base-url`, `--upload-url`) are accepted before or after the subcommand:
each subcommand gets a copy whose defaults are `SUPPRESS`, so a value given before the
subcommand is not overwritten by the copy's default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ._batch_cli import JOURNAL_NAME, resume_hint, run_batch
from ._batch_cli import add_parser as add_batch_parser
from ._config import DEFAULT_BASE_URL, DEFAULT_UPLOAD_URL, env_base_url, env_upload_url
from ._version import __version__
from .errors import DownloadError, MissingApiKeyError, OutputExistsError, QubicoError

__all__ = ["EPILOG", "HelpFormatter", "install_hint", "main"]

EPILOG = f"""\
environment:
  QUBICO_API_KEY     your PiAPI API key (PIAPI_API_KEY is read too); never a command-line option
  QUBICO_BASE_URL    task API, e.g. an emulator (default: {DEFAULT_BASE_URL})
  QUBICO_UPLOAD_URL  File Upload API (default: {DEFAULT_UPLOAD_URL})

optional extras:
  pip install "qubico_async[cli]"      a live progress bar for `batch` (rich)
  pip install "qubico_async[faces]"    real face swaps in the bundled emulator and the demo (OpenCV)
  pip install "qubico_async[fastapi]"  the FastAPI kit (qubico_async.integrations.fastapi)
"""

_EXTRAS = {
    "cv2": "faces",
    "numpy": "faces",
    "fastapi": "fastapi",
    "starlette": "fastapi",
    "uvicorn": "fastapi",
    "multipart": "fastapi",
    "python_multipart": "fastapi",
    "rich": "cli",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Epilogs as written, and `(default: ...)` after every option that has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "(default" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or action.nargs == 0
        ):
            return text
        return super()._get_help_string(action)


def install_hint(exc: ModuleNotFoundError) -> str | None:
    """`pip install "qubico_async[extra]"` for a missing optional package, else None."""
    top = (exc.name or "").split(".", 1)[0]
    extra = _EXTRAS.get(top)
    return None if extra is None else f'{top} is not installed: pip install "qubico_async[{extra}]"'


def _global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """The options every subcommand accepts too; the copies given to subcommands default to SUPPRESS."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options (before or after the subcommand)")
    group.add_argument("-v", "--verbose", action="store_true", default=default(False), help="log requests and retries")
    group.add_argument(
        "--base-url",
        default=default(env_base_url()),
        metavar="URL",
        help=f"task API (default: $QUBICO_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    group.add_argument(
        "--upload-url",
        default=default(env_upload_url()),
        metavar="URL",
        help=f"File Upload API (default: $QUBICO_UPLOAD_URL, else {DEFAULT_UPLOAD_URL})",
    )
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qubico-async",
        description="PiAPI Qubico face swap from the command line (python -m qubico_async is the same).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
        parents=[_global_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common: dict[str, Any] = {
        "parents": [_global_options(suppress=True)],
        "formatter_class": HelpFormatter,
        "epilog": EPILOG,
    }

    demo = sub.add_parser(
        "demo",
        help="swap faces on the bundled photos (emulator unless an API key is set)",
        description="Swap faces on the bundled public-domain photos and write before/after files. "
        "Without QUBICO_API_KEY it runs against the bundled emulator: nothing is sent anywhere.",
        **common,
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the results")

    swap = sub.add_parser(
        "swap",
        help="swap the face of FACE into TARGET and save the result",
        description="Swap the face in FACE into TARGET (one paid task), wait for it and save the result. "
        "Needs QUBICO_API_KEY.",
        **common,
    )
    swap.add_argument("target", help="target image: path or http(s) URL")
    swap.add_argument("face", help="image providing the face: path or http(s) URL")
    swap.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="output file, or folder (the file is then named after the task, with the right extension)",
    )
    swap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    swap.add_argument(
        "--extension",
        choices=("warn", "fix", "strict"),
        default="warn",
        help="when the --out file's extension disagrees with the result's bytes: warn and keep the name, "
        "fix the extension, or refuse (strict)",
    )
    swap.add_argument("--timeout", type=float, default=None, help="seconds to wait for the result (default: 300)")

    add_batch_parser(sub, **common)
    sub.add_parser(
        "emulator",
        help="serve the local emulator until Ctrl-C (see: emulator --help)",
        add_help=False,
    )
    return parser


def _emulator_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after `emulator` when it is the subcommand (global options may come first)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-v", "--verbose") or arg.startswith(("--base-url=", "--upload-url=")):
            i += 1
        elif arg in ("--base-url", "--upload-url"):
            i += 2
        else:
            return list(argv[i + 1 :]) if arg == "emulator" else None
    return None


def _say(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    emulator_args = _emulator_args(args_list)
    try:
        if emulator_args is not None:
            from .testing._cli import main as emulator_main

            return emulator_main(emulator_args)
        return _run(_parser().parse_args(args_list))
    except ModuleNotFoundError as exc:
        hint = install_hint(exc)
        if hint is None:
            raise
        _say(hint)
        return 1


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "demo":
            from ._demo import run_demo

            asyncio.run(run_demo(args.out))
        elif args.command == "swap":
            asyncio.run(_swap(args))
        elif args.command == "batch":
            try:
                return asyncio.run(run_batch(args))
            except KeyboardInterrupt:
                journal: Path = args.journal or args.out / JOURNAL_NAME
                if journal.exists():
                    print(f"\ninterrupted: nothing is lost. Resume with:\n  {resume_hint(args)}", file=sys.stderr)
                else:
                    print("\ninterrupted before anything was sent: nothing to resume", file=sys.stderr)
                return 130
    except OutputExistsError as exc:
        _say(f"{exc.path} already exists: add --overwrite to replace it")
        return 1
    except MissingApiKeyError:
        _say("no API key: set QUBICO_API_KEY (or PIAPI_API_KEY) in the environment")
        return 1
    except QubicoError as exc:
        _say(str(exc))
        return 1
    except FileExistsError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


async def _swap(args: argparse.Namespace) -> None:
    from .client import QubicoClient

    out = anyio.Path(args.out)
    if not args.overwrite and await out.exists() and not await out.is_dir():  # refused before anything is paid
        raise OutputExistsError(f"{out} already exists", path=args.out)
    async with QubicoClient(base_url=args.base_url, upload_url=args.upload_url) as client:
        task = await client.face_swap(args.target, args.face, timeout=args.timeout)
        try:
            path = await client.download(task, args.out, overwrite=args.overwrite, extension=args.extension)
        except DownloadError as exc:  # the task is paid for: say where its result still is
            why = (
                f"{exc.path} already exists (add --overwrite to replace it)"
                if isinstance(exc, FileExistsError)
                else exc
            )
            raise DownloadError(f"{why}; task {task.task_id} completed, its result is at {task.result_url}") from None
    print(f"task {task.task_id} completed: {path}")
