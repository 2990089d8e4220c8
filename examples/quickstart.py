"""Swap one face, offline: the bundled emulator stands in for the real service.

Run: python examples/quickstart.py TARGET FACE

With QUBICO_API_KEY set it uses `QubicoClient()`: the real service, or whatever QUBICO_BASE_URL
and QUBICO_UPLOAD_URL point at (the README's `python -m qubico_async emulator`). Without a key it
starts its own in-process emulator. The result is saved in the current folder, named by the SDK.
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
