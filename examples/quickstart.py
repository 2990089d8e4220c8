"""Swap one face, offline: the bundled emulator stands in for the real service.

Run: python examples/quickstart.py TARGET FACE  (set QUBICO_API_KEY to use the real service)
"""

from __future__ import annotations

import os
import sys

import anyio

from qubico_async import PollPolicy, QubicoClient
from qubico_async.testing import Emulator


async def main(target: str, face: str) -> None:
    if os.environ.get("QUBICO_API_KEY"):
        async with QubicoClient() as client:
            task = await client.face_swap(target, face)
            print(task.image_url, await client.download(task, ".", overwrite=True))
        return
    async with (
        Emulator() as emu,
        QubicoClient(emu.api_key, base_url=emu.base_url, poll=PollPolicy(initial=0.05)) as client,
    ):
        task = await client.face_swap(target, face)
        print(task.image_url, await client.download(task, ".", overwrite=True))


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:3])
