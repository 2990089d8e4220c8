"""An in-process fake of PiAPI's Qubico face-swap API, for tests, demos and benchmarks.

```python
from qubico_async.testing import Emulator, Faults

async with Emulator(api_key="emu-key") as emu:
    ...  # point a client at emu.base_url with emu.api_key; emu.advance(s) moves its clock
```

pytest users: `pytest_plugins = ["qubico_async.testing.pytest_plugin"]` gives an `emulator` fixture.
"""

from ._emulator import Emulator, TaskTransform
from ._faults import Faults, Route, ScriptedResponse
from ._processing import Processor, SwapJob, identity
from ._state import DEFAULT_FAILURE_MESSAGE, FAILURE_CODE, PRICES, Price, Stats, StoredTask

__all__ = [
    "DEFAULT_FAILURE_MESSAGE",
    "FAILURE_CODE",
    "PRICES",
    "Emulator",
    "Faults",
    "Price",
    "Processor",
    "Route",
    "ScriptedResponse",
    "Stats",
    "StoredTask",
    "SwapJob",
    "TaskTransform",
    "identity",
]
