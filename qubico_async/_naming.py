"""Local file names made from outside text (task ids, job keys, upload names): never leave their folder."""

from __future__ import annotations

import re

__all__ = ["safe_filename"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, fallback: str = "result") -> str:
    """A file name that cannot leave its folder: path separators and odd characters replaced."""
    cleaned = _SAFE_NAME.sub("_", name).strip("._") or fallback
    return cleaned[:150]
