"""The emulator judges inputs with its own code: nothing under qubico_async/testing imports the SDK's
checking or parsing modules, so the cross-check (test_crosscheck.py) compares two implementations."""

from __future__ import annotations

import ast
from pathlib import Path

import qubico_async.testing

TESTING = Path(qubico_async.testing.__file__).parent
FORBIDDEN = {"_mediainfo", "_convert", "media", "requests", "errors"}
"""SDK modules the emulator must not use. The pytest plugin and __init__ may use the public client."""


def _imported_sdk_modules(path: Path) -> set[str]:
    """Names of qubico_async modules (first component below the package) that `path` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "qubico_async" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 2:  # from .. import x / from ..x import y
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.level == 0 and node.module and node.module.split(".")[0] == "qubico_async":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
    return found


def test_no_module_under_testing_imports_the_sdk_checks() -> None:
    modules = sorted(TESTING.rglob("*.py"))
    assert len(modules) > 10  # the walk really found the package
    offenders = {p.name: sorted(_imported_sdk_modules(p) & FORBIDDEN) for p in modules}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_the_import_walk_sees_each_spelling(tmp_path: Path) -> None:
    """The checker itself can fail: each way of importing a forbidden module is caught."""
    for line, expected in (
        ("from .._mediainfo import probe_image", {"_mediainfo"}),
        ("from ..errors import InvalidInputError", {"errors"}),
        ("from .. import media", {"media"}),
        ("import qubico_async._convert", {"_convert"}),
        ("from qubico_async.requests import FaceSwap", {"requests"}),
        ("from qubico_async import media", {"media"}),
        ("from ._imagecheck import judge_image", set()),
    ):
        module = tmp_path / "m.py"
        module.write_text(line + "\n", encoding="utf-8")
        assert _imported_sdk_modules(module) & FORBIDDEN == expected, line
