"""An in-process fake of PiAPI's Qubico face-swap API, for tests, demos and benchmarks.

```python
from qubico_async.testing import Emulator, Faults, identity

async with Emulator(api_key="emu-key", processor=identity) as emu:
    ...  # point a client at emu.base_url (tasks) and emu.upload_url (uploads) with emu.api_key;
    # emu.advance(s) moves its clock
```

By default the wire is realistic (`wire="realistic"`): each task answers in one of the shapes real
responses showed (status `Completed`/`completed`, envelope `code` 200/0, `logs`/`input` null or
empty, extra `output`/`meta` keys, Go zero times before start, usage in points), drawn from
(seed, task_id). `wire="plain"` gives one clean shape.

By default (`processor="auto"`) results are real face swaps by the OpenCV engine when the `faces`
extra is installed (`emu.engine == "opencv"`), else the target unchanged (`"identity"`).

pytest users: `pytest_plugins = ["qubico_async.testing.pytest_plugin"]` gives an `emulator` fixture.
"""

from ._emulator import Emulator
from ._engine import EngineName, ProcessorChoice
from ._faults import Faults, Route, ScriptedResponse, UploadUrlStyle, WebhookFaults
from ._job import Processor, SwapJob, identity
from ._pricing import POINTS_PER_USD, PRICES, Price
from ._routes import TaskTransform
from ._state import Stats, StoredTask
from ._webhooks import WebhookDelivery
from ._wire import DEFAULT_FAILURE_MESSAGE, FAILURE_CODE
from ._wireshape import ZERO_TIME, WireName, WireShape

__all__ = [
    "DEFAULT_FAILURE_MESSAGE",
    "FAILURE_CODE",
    "POINTS_PER_USD",
    "PRICES",
    "ZERO_TIME",
    "Emulator",
    "EngineName",
    "Faults",
    "Price",
    "Processor",
    "ProcessorChoice",
    "Route",
    "ScriptedResponse",
    "Stats",
    "StoredTask",
    "SwapJob",
    "TaskTransform",
    "UploadUrlStyle",
    "WebhookDelivery",
    "WebhookFaults",
    "WireName",
    "WireShape",
    "identity",
]
