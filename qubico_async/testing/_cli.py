"""`python -m qubico_async emulator`: serve the emulator on fixed ports until Ctrl-C.

The task API listens on `--port` (default 8787), the upload API on `--upload-port` (default: the
next port; 0 with `--port 0`). The announcement says which face-swap engine makes the results.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

import anyio

from ._emulator import Emulator
from ._engine import engine_status
from ._job import identity
from ._routes import OverLimit
from ._wireshape import WireName

__all__ = ["build_parser", "main", "run_cli", "serve_forever"]

DEFAULT_PORT = 8787


EPILOG = """\
point the SDK and its CLI at it (in another shell):
  export QUBICO_BASE_URL=http://127.0.0.1:8787 QUBICO_UPLOAD_URL=http://127.0.0.1:8788 QUBICO_API_KEY=emu-key
  (with --port/--upload-port/--api-key changed, use those values)

--engine auto swaps faces with OpenCV only when the faces extra is installed:
  pip install "qubico_async[faces]"
without it, results are the target image unchanged (as with --engine identity).

The limit of --max-concurrent-tasks is only reported in /account/info unless --over-limit is
given: reject answers a create beyond it HTTP 429 (Retry-After: 1, no task made); queue keeps the
task pending until a slot frees.

Press Ctrl-C to stop it.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The epilog as written, and `(default: ...)` after every option with a meaningful default.
    Local (not `qubico_async.cli`'s) so the emulator imports nothing of the SDK's client side."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "(default" in text or default is None or default is False or default == argparse.SUPPRESS:
            return text  # `is`, not `in (None, False)`: 0 and 0.0 == False, yet are defaults to show
        if action.nargs == 0:
            return text
        return super()._get_help_string(action)


def build_parser(prog: str = "python -m qubico_async emulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local fake of PiAPI's face-swap API on 127.0.0.1 until Ctrl-C.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", metavar="HOST", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, metavar="PORT", help="port of the task API; 0 picks a free one"
    )
    parser.add_argument(
        "--upload-port",
        type=int,
        default=None,
        metavar="PORT",
        help="port of the upload API (default: --port + 1, or a free one with --port 0)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "identity"),
        default="auto",
        help="auto: OpenCV face swap when the faces extra is installed, else identity; identity: result = target",
    )
    parser.add_argument("--api-key", default="emu-key", metavar="KEY", help="the x-api-key clients must send")
    parser.add_argument(
        "--pending-seconds", type=float, default=0.5, metavar="SECONDS", help="time a task stays pending"
    )
    parser.add_argument(
        "--processing-seconds", type=float, default=2.0, metavar="SECONDS", help="time a task stays processing"
    )
    parser.add_argument(
        "--failure-rate", type=float, default=0.0, metavar="P", help="probability (0 to 1) that a task ends failed"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed for failures, faults and wire shapes")
    parser.add_argument(
        "--max-concurrent-tasks",
        type=int,
        default=10,
        metavar="N",
        help="the account's concurrency limit (max_concurrent_task_count in /account/info)",
    )
    parser.add_argument(
        "--over-limit",
        choices=("queue", "reject"),
        default=None,
        help="enforce --max-concurrent-tasks: reject = HTTP 429, queue = pending until a slot frees "
        "(default: not enforced)",
    )
    parser.add_argument(
        "--wire",
        choices=("realistic", "plain"),
        default="realistic",
        help="realistic: each task in one of the shapes real responses show; plain: one clean shape",
    )
    parser.add_argument(
        "--balance-usd",
        type=float,
        default=1000.0,
        metavar="USD",
        help="account credit; creates it cannot cover are refused",
    )
    return parser


async def serve_forever(
    port: int = DEFAULT_PORT,
    api_key: str = "emu-key",
    *,
    host: str = "127.0.0.1",
    upload_port: int | None = None,
    engine: str = "auto",
    pending_seconds: float = 0.5,
    processing_seconds: float = 2.0,
    failure_rate: float = 0.0,
    seed: int = 0,
    max_concurrent_task_count: int = 10,
    wire: WireName = "realistic",
    balance_usd: float = 1000.0,
    over_limit: OverLimit | None = None,
    ready: Callable[[Emulator], None] | None = None,
) -> None:
    """Run an emulator until cancelled. `ready` (default: print the URLs, key and engine) is called
    once serving. `upload_port` None means `port + 1` (or 0 when `port` is 0)."""
    if upload_port is None:
        upload_port = port + 1 if port else 0
    async with Emulator(
        api_key=api_key,
        host=host,
        port=port,
        upload_port=upload_port,
        processor=identity if engine == "identity" else "auto",
        pending_seconds=pending_seconds,
        processing_seconds=processing_seconds,
        failure_rate=failure_rate,
        seed=seed,
        max_concurrent_task_count=max_concurrent_task_count,
        wire=wire,
        balance_usd=balance_usd,
        over_limit=over_limit,
    ) as emu:
        (ready or _announce)(emu)
        await anyio.sleep_forever()


def _announce(emu: Emulator) -> None:
    print(f"qubico_async emulator serving at {emu.base_url}")
    print(f"base_url:   {emu.base_url}")
    print(f"upload_url: {emu.upload_url}")
    print(f"api_key:    {emu.api_key}")
    print(f"wire:       {emu.wire}")
    if emu.engine == "opencv":
        print(f"engine:     opencv. {engine_status()}")
    else:
        print(f"engine:     {emu.engine}: results are the target image unchanged")
    print("Press Ctrl-C to stop.", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m qubico_async emulator [options]`. Returns the exit status."""
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.failure_rate <= 1.0:
        print("error: --failure-rate must be between 0 and 1", file=sys.stderr)
        return 2
    if args.over_limit is not None and args.max_concurrent_tasks < 1:
        print("error: --max-concurrent-tasks must be at least 1 with --over-limit", file=sys.stderr)
        return 2
    try:
        asyncio.run(
            serve_forever(
                args.port,
                args.api_key,
                host=args.host,
                upload_port=args.upload_port,
                engine=args.engine,
                pending_seconds=args.pending_seconds,
                processing_seconds=args.processing_seconds,
                failure_rate=args.failure_rate,
                seed=args.seed,
                max_concurrent_task_count=args.max_concurrent_tasks,
                wire=args.wire,
                balance_usd=args.balance_usd,
                over_limit=args.over_limit,
            )
        )
    except KeyboardInterrupt:
        print("emulator stopped", file=sys.stderr)
    except OSError as exc:  # port in use, bad host
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


run_cli = main
