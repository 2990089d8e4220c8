"""Command line: `python -m qubico_async` (or `qubico-async`): `demo`, `swap`, `batch`, `emulator`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from ._batch_cli import add_parser as add_batch_parser
from ._batch_cli import resume_hint, run_batch
from ._config import DEFAULT_BASE_URL
from .errors import QubicoError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qubico-async", description="PiAPI Qubico face swap from the command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests and retries")
    parser.add_argument(
        "--base-url",
        default=os.environ.get("QUBICO_BASE_URL", DEFAULT_BASE_URL),
        help="task API (default: $QUBICO_BASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--upload-url",
        default=os.environ.get("QUBICO_UPLOAD_URL"),
        help="File Upload API (default: $QUBICO_UPLOAD_URL)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="swap faces on the bundled photos (emulator unless an API key is set)")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the results")

    swap = sub.add_parser("swap", help="swap the face of FACE into TARGET and save the result")
    swap.add_argument("target", help="target image: path or http(s) URL")
    swap.add_argument("face", help="image providing the face: path or http(s) URL")
    swap.add_argument("--out", type=Path, default=Path("."), help="output file or folder (default: .)")
    swap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    swap.add_argument("--timeout", type=float, default=None, help="seconds to wait for the result")

    add_batch_parser(sub)
    sub.add_parser("emulator", help="serve the local emulator (see --help of the subcommand)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["emulator"]:
        from .testing._cli import main as emulator_main

        return emulator_main(args_list[1:])
    args = _parser().parse_args(args_list)
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
                print(f"\ninterrupted: nothing is lost. Resume with:\n  {resume_hint(args)}", file=sys.stderr)
                return 130
    except QubicoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


async def _swap(args: argparse.Namespace) -> None:
    from .client import QubicoClient

    async with QubicoClient(base_url=args.base_url, upload_url=args.upload_url) as client:
        task = await client.face_swap(args.target, args.face, timeout=args.timeout)
        path = await client.download(task, args.out, overwrite=args.overwrite)
    print(f"task {task.task_id} completed: {path}")
