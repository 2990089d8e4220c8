"""The `batch` command's inputs: its targets (a folder, or a CSV manifest) and the preflight.

`preflight` checks, before a journal exists or anything is sent, everything that would make
every job fail (no API key, a missing file, a journal in the way); `PreflightError` is exit 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path

from ._config import env_api_key
from .errors import InvalidInputError

__all__ = ["JOURNAL_NAME", "PreflightError", "is_remote", "preflight", "read_manifest"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
JOURNAL_NAME = ".qubico-journal.sqlite"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def read_manifest(path: Path) -> list[tuple[str, str | None, str | None]]:
    """(target, swap or None, key or None) rows from a CSV with a `target` column.

    Relative paths are relative to the CSV's folder. Raises `InvalidInputError` naming the line.
    """
    too_big = InvalidInputError(f"{path}: manifest over {MAX_MANIFEST_BYTES // 1_048_576} MB")
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_MANIFEST_BYTES:
                raise too_big  # refused without reading it
            chunks: list[bytes] = []  # read in pieces up to the cap: a pipe or /dev/zero has no size
            size = 0
            while size <= MAX_MANIFEST_BYTES and (chunk := f.read(min(1 << 20, MAX_MANIFEST_BYTES + 1 - size))):
                chunks.append(chunk)
                size += len(chunk)
            raw = b"".join(chunks)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise too_big
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    rows: list[tuple[str, str | None, str | None]] = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "target" not in fields:
            raise InvalidInputError(f"{path}: the first line must name a 'target' column (got {fields[:5]})")
        reader.fieldnames = fields
        for row in reader:
            target = (row.get("target") or "").strip()
            if not target:
                raise InvalidInputError(f"{path}, line {reader.line_num}: empty target")
            rows.append(
                (
                    _resolve(path.parent, target),
                    _opt(path.parent, row.get("swap")),
                    _opt(None, row.get("key")),
                )
            )
    except csv.Error as exc:
        raise InvalidInputError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise InvalidInputError(f"{path}: no targets")
    return rows


def _resolve(base: Path, value: str) -> str:
    if value.lower().startswith(("http://", "https://", "data:")):
        return value
    candidate = Path(value)
    return str(candidate if candidate.is_absolute() else base / candidate)


def _opt(base: Path | None, value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return _resolve(base, value.strip()) if base is not None else value.strip()


def _targets(path: Path) -> list[tuple[str, str | None, str | None]]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InvalidInputError(f"{path}: no .jpg/.jpeg/.png/.webp files")
        return [(str(f), None, None) for f in files]
    if path.suffix.lower() == ".csv":
        return read_manifest(path)
    raise InvalidInputError(f"{path}: --targets must be a folder or a .csv manifest")


class PreflightError(Exception):
    """A problem with the command line or its inputs, found before anything is sent (exit 2)."""


def is_remote(value: str) -> bool:
    """An http(s) URL or a data: URI, not a local path."""
    return value[:8].lower().startswith(("http://", "https://", "data:"))


def preflight(args: argparse.Namespace) -> list[tuple[str, str | None, str | None]]:
    """Everything that would make every job fail, checked before a journal exists (in a thread)."""
    if env_api_key() is None:
        raise PreflightError("no API key: set QUBICO_API_KEY (or PIAPI_API_KEY) in the environment")
    if args.concurrency is not None and args.concurrency < 1:
        raise PreflightError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.budget is not None and not args.budget >= 0:
        raise PreflightError(f"--budget must be a non-negative amount in USD, got {args.budget}")
    targets: Path = args.targets
    if not targets.exists():
        raise PreflightError(f"--targets {targets}: does not exist (give a folder of images or a .csv manifest)")
    try:
        rows = _targets(targets)
    except InvalidInputError as exc:
        raise PreflightError(f"--targets: {exc}") from None
    if not is_remote(args.swap) and not os.path.isfile(args.swap):
        raise PreflightError(f"--swap {args.swap}: no such file")
    missing = [
        path
        for target, swap, _ in rows
        for path in (target, swap)
        if path is not None and not is_remote(path) and not os.path.isfile(path)
    ]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PreflightError(f"--targets {targets}: {missing[0]} is not a file{more}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise PreflightError(f"--out {out}: exists and is not a folder")
    journal: Path = args.journal or out / JOURNAL_NAME
    if journal.is_dir():
        raise PreflightError(f"journal {journal} is a folder: give --journal a file path")
    if journal.exists() and not args.resume:
        raise PreflightError(f"journal {journal} exists: add --resume to continue that run, or delete it to start over")
    return rows
