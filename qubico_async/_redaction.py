"""Redaction: the API key and webhook secrets never leave the SDK in anything it shows.

Applied to every string the service (or a webhook sender) sends, as it arrives, so a secret
echoed inside a task never reaches a `repr`, an exception, a log record, an `Outcome` or the journal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["MIN_TREE_SECRET", "REDACTED", "redact_tree"]

REDACTED = "***"
MIN_TREE_SECRET = 8
"""Shortest secret replaced inside decoded data: a shorter one would mangle ids and URLs (losing a
paid result) while protecting nothing; error texts still redact every secret."""


def redact_tree(value: Any, secrets: Iterable[str]) -> Any:
    """`value` (decoded JSON) with each secret of `MIN_TREE_SECRET`+ characters replaced in every
    string value. Raises RecursionError for absurdly deep data (callers map it to their error)."""
    usable = [s for s in secrets if len(s) >= MIN_TREE_SECRET]
    if not usable:
        return value

    def redact(text: str) -> str:
        for secret in usable:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    return _map_strings(value, redact)


def _map_strings(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value
