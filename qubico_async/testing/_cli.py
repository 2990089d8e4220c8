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
from ._processing import identity
from ._state import WireName

__all__ = ["build_parser", "main", "run_cli", "serve_forever"]

DEFAULT_PORT = 8787


def build_parser(prog: str = "python -m qubico_async emulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve a local fake of PiAPI's face-swap API.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--upload-port", type=int, default=None, help="port of the upload API (default: --port + 1, or 0)"
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "identity"),
        default="auto",
        help="auto: OpenCV face swap when installed, else identity; identity: result = target",
    )
    parser.add_argument("--api-key", default="emu-key", help="the key clients must send")
    parser.add_argument("--pending-seconds", type=float, default=0.5, help="time a task stays pending")
    parser.add_argument("--processing-seconds", type=float, default=2.0, help="time a task stays processing")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="probability a task ends failed")
    parser.add_argument("--seed", type=int, default=0, help="seed for failures and faults")
    parser.add_argument(
        "--max-concurrent-tasks", type=int, default=10, help="max_concurrent_task_count in /account/info"
    )
    parser.add_argument(
        "--wire",
        choices=("realistic", "plain"),
        default="realistic",
        help="realistic: each task in one of the shapes real responses show; plain: one clean shape",
    )
    parser.add_argument(
        "--balance-usd", type=float, default=1000.0, help="account credit; creates it cannot cover are refused"
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
            )
        )
    except KeyboardInterrupt:
        print("emulator stopped", file=sys.stderr)
    except OSError as exc:  # port in use, bad host
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


run_cli = main
