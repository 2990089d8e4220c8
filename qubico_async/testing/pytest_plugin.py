"""pytest plugin: an `emulator` fixture.

Enable it with `pytest_plugins = ["qubico_async.testing.pytest_plugin"]` in your top-level
conftest.py. The fixture is async and driven by anyio's pytest plugin: mark tests with
`@pytest.mark.anyio` and use the asyncio backend (aiohttp needs asyncio). Override
`emulator_options` to configure it:

```python
from qubico_async.testing import identity

@pytest.fixture
def emulator_options():
    return {"processing_seconds": 5.0, "failure_rate": 0.1, "processor": identity}
```

By default the emulator really swaps faces when the `faces` extra is installed (a few hundred ms of
CPU per image, in worker threads); `"processor": identity` makes results the target unchanged, fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ._emulator import Emulator

__all__ = ["emulator", "emulator_options"]


@pytest.fixture
def emulator_options() -> dict[str, Any]:
    """Keyword arguments for the `emulator` fixture's `Emulator(...)`. Override to configure."""
    return {}


@pytest.fixture
async def emulator(emulator_options: dict[str, Any]) -> AsyncIterator[Emulator]:
    """A running `Emulator` (zero pending/processing time by default), closed after the test."""
    async with Emulator(**emulator_options) as emu:
        yield emu
