"""Shared fixtures: the bundled emulator on loopback and a client with zero-delay policies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from qubico_async import PollPolicy, QubicoClient, RetryPolicy
from qubico_async.testing import Emulator, identity

pytest_plugins = ["qubico_async.testing.pytest_plugin"]

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(api_key="emu-test-key", seed=1, processor=identity) as server:
        yield server


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[QubicoClient]:
    async with QubicoClient(
        api_key=emu.api_key,
        base_url=emu.base_url,
        retry=RetryPolicy.instant(),
        poll=PollPolicy.instant(timeout=10),
    ) as c:
        yield c


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A bare aiohttp session, for tests that speak the wire format themselves."""
    async with aiohttp.ClientSession() as session:
        yield session
