"""The upload cache shared over Redis: a file uploaded by one process is reused by all.

`upload:<sha256>` (string: `{url, expires}`, expires in unix seconds) maps content to its
uploaded URL; `uploading:<sha256>` is a short claim, so that two processes do not upload the
same content at once. While Redis is away nothing is found and every claim is granted.
"""

from __future__ import annotations

import json
import time

from ._redis_link import RedisLink

__all__ = ["RedisSharedUploads"]


class RedisSharedUploads:
    """`SharedUploads` over Redis: `upload:<digest>` -> `{url, expires}` (unix seconds)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link

    async def get(self, digest: str) -> tuple[str, float] | None:
        raw = await self._link.call(lambda r: r.get(self._link.key("upload:" + digest)))
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            url, expires = str(doc["url"]), float(doc["expires"])
        except (ValueError, KeyError, TypeError):
            return None
        remaining = expires - time.time()
        return (url, remaining) if remaining > 0 else None

    async def put(self, digest: str, url: str, ttl: float) -> None:
        value = json.dumps({"url": url, "expires": time.time() + ttl})
        key = self._link.key("upload:" + digest)
        await self._link.call(lambda r: r.set(key, value, px=max(1, int(ttl * 1000))))

    async def claim(self, digest: str, ttl: float) -> bool:
        key = self._link.key("uploading:" + digest)
        got = await self._link.call(lambda r: r.set(key, "1", nx=True, px=max(1, int(ttl * 1000))), default=True)
        return bool(got)
