"""Configuration read from the caller and the environment: timeouts, hosts, the API key's source,
and the small validators the policy objects share."""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

import aiohttp
from attrs import field, frozen, validators

from .errors import InvalidInputError

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_UPLOAD_URL",
    "Timeouts",
    "check_base_url",
    "env_api_key",
    "env_base_url",
    "env_upload_url",
    "is_http_url",
    "positive_or_none",
    "resolve_timeouts",
    "resolve_urls",
]

DEFAULT_BASE_URL = "https://api.piapi.ai"
DEFAULT_UPLOAD_URL = "https://upload.theapi.app"
API_KEY_ENV = ("QUBICO_API_KEY", "PIAPI_API_KEY")
"""Where the API key is looked up, in order, when none is passed."""


def env_api_key() -> str | None:
    return next(filter(None, map(os.environ.get, API_KEY_ENV)), None)


def env_base_url() -> str:
    return os.environ.get("QUBICO_BASE_URL") or DEFAULT_BASE_URL


def env_upload_url() -> str | None:
    return os.environ.get("QUBICO_UPLOAD_URL") or None


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host: the only kind the SDK sends to or fetches from."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def check_base_url(url: str, what: str) -> str:
    """`url` without a trailing slash, if it is an http(s) URL; else `InvalidInputError`."""
    if not is_http_url(url):
        raise InvalidInputError(f"{what} must be an http(s) URL, got {url!r}")
    return url.rstrip("/")


def resolve_urls(base_url: str | None, upload_url: str | None) -> tuple[str, str | None]:
    """The client's (base_url, upload_url): the arguments, else QUBICO_BASE_URL / QUBICO_UPLOAD_URL,
    else the real service. With a custom base_url (an emulator, a proxy) uploads go nowhere unless
    asked for: the real upload host is the default only beside the real API."""
    base = check_base_url(base_url if base_url is not None else env_base_url(), "base_url")
    upload = upload_url if upload_url is not None else env_upload_url()
    if upload is None and base == DEFAULT_BASE_URL:
        upload = DEFAULT_UPLOAD_URL
    return base, check_base_url(upload, "upload_url") if upload is not None else None


def positive_or_none(_: object, attribute: Any, value: float | None) -> None:
    """An attrs validator: a number > 0, or None for "no limit"."""
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 or None, got {value!r}")


@frozen
class Timeouts:
    """Per-request timeouts in seconds: `connect`, `read` (the longest silence while waiting for
    bytes) and `total` (the whole request, body upload and answer included; None: no limit).

    The default `total` of 120 s bounds a server that answers a byte at a time; a create cut by
    it is reported uncertain (it may have made a task), never resent unasked.
    """

    connect: float = field(default=10.0, validator=validators.gt(0))
    read: float = field(default=60.0, validator=validators.gt(0))
    total: float | None = field(default=120.0, validator=positive_or_none)

    def to_aiohttp(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.total, sock_connect=self.connect, sock_read=self.read)


def resolve_timeouts(timeout: float | Timeouts | None) -> Timeouts:
    """`Timeouts` as given, or a read timeout in seconds (default 60) with a total of twice it (at least 120)."""
    if isinstance(timeout, Timeouts):
        return timeout
    return Timeouts(read=timeout or 60.0, total=max(120.0, 2 * (timeout or 60.0)))
