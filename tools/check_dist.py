"""`make dist`: build the sdist and wheel into a temporary folder and check what they hold.

Fails when setuptools warns about the license metadata, when the wheel lacks `py.typed` or the
license, when the wheel carries tests, or when the sdist lacks a file the test suite needs (every
file under tests/ and examples/ that git tracks), and when the suite does not collect from the
unpacked sdist. Builds without isolation, from the virtualenv's setuptools (dev extra): offline.
It builds from a copy of the tree without egg-info, caches or the virtualenv: setuptools reuses a
stale `*.egg-info/SOURCES.txt`, which would hide a file that MANIFEST.in no longer includes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "qubico_async"
IGNORED = (".git", ".venv", "*.egg-info", "build", "dist", "site", "demo-output", "__pycache__", ".*_cache")


def fail(message: str) -> None:
    print(f"make dist: {message}", file=sys.stderr)
    raise SystemExit(1)


def license_warnings(output: str) -> list[str]:
    """Each warning setuptools printed (its line and the banner after it) that names the license."""
    lines = output.splitlines()
    found = []
    for i, line in enumerate(lines):
        if re.search(r"Warning\b|warning:", line):
            window = "\n".join(lines[i : i + 20])
            if re.search(r"(?i)licen[cs]e", window):
                found.append(window)
    return found


def tracked(*folders: str) -> set[str]:
    """Files git tracks under `folders` (the ones the suite may need)."""
    out = subprocess.run(
        ["git", "ls-files", "--", *folders], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {line for line in out.splitlines() if line}


def check_wheel(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    if f"{NAME}/py.typed" not in names:
        fail(f"{wheel.name} has no {NAME}/py.typed")
    if any(n.startswith(("tests/", "examples/")) for n in names):
        fail(f"{wheel.name} carries tests or examples")
    if not any(re.fullmatch(r"[^/]+\.dist-info/licenses/LICENSE", n) for n in names):
        fail(f"{wheel.name} has no dist-info/licenses/LICENSE")
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    if "License-Expression: MIT" not in text:
        fail(f"{wheel.name} METADATA has no License-Expression: MIT")


def check_sdist(sdist: Path, unpack: Path) -> Path:
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(unpack, filter="data")
    for needed in ("LICENSE", "README.md", "pyproject.toml", f"{NAME}/py.typed"):
        if needed not in names:
            fail(f"{sdist.name} has no {needed}")
    missing = tracked("tests", "examples") - names
    if missing:
        fail(f"{sdist.name} lacks files the tests need: {', '.join(sorted(missing))}")
    if "License-Expression: MIT" not in (unpack / top / "PKG-INFO").read_text(encoding="utf-8"):
        fail(f"{sdist.name} PKG-INFO has no License-Expression: MIT")
    return unpack / top


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qubico-dist-") as tmp:
        out = Path(tmp) / "dist"
        source = Path(tmp) / "source"
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*IGNORED))
        build = subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        output = build.stdout + build.stderr
        if build.returncode != 0:
            print(output, file=sys.stderr)
            fail("python -m build failed")
        warnings = license_warnings(output)
        if warnings:
            print("\n\n".join(warnings), file=sys.stderr)
            fail("setuptools warned about the license metadata")
        (wheel,) = out.glob("*.whl")
        (sdist,) = out.glob("*.tar.gz")
        check_wheel(wheel)
        tree = check_sdist(sdist, Path(tmp) / "sdist")
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        collect = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if collect.returncode != 0:
            print(collect.stdout[-4000:], collect.stderr[-4000:], file=sys.stderr)
            fail("the test suite does not collect from the unpacked sdist")
        count = collect.stdout.strip().splitlines()[-1]
        print(f"make dist: {wheel.name} and {sdist.name} checked; sdist collects {count}")


if __name__ == "__main__":
    main()
