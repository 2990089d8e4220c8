"""The public surface: `qubico_async.__all__` is sorted, complete and importable."""

from __future__ import annotations

import inspect
import typing

import qubico_async
from qubico_async import batch, errors, models


def test_all_is_sorted_and_importable() -> None:
    assert qubico_async.__all__ == sorted(qubico_async.__all__)
    assert len(set(qubico_async.__all__)) == len(qubico_async.__all__)
    for name in qubico_async.__all__:
        assert getattr(qubico_async, name) is not None, name


def test_every_error_model_and_batch_type_is_exported() -> None:
    for module in (errors, models, batch):
        missing = set(module.__all__) - set(qubico_async.__all__)
        assert not missing, f"{module.__name__}: {sorted(missing)}"


def test_every_raised_error_class_is_importable_from_the_top() -> None:
    def subclasses(cls: type) -> set[type]:
        found = set()
        for sub in cls.__subclasses__():
            found |= {sub, *subclasses(sub)}
        return found

    for cls in subclasses(qubico_async.QubicoError):
        if cls.__module__.startswith("qubico_async.testing"):
            continue
        assert getattr(qubico_async, cls.__name__, None) is cls, cls


def test_the_client_signatures_are_typed() -> None:
    """No `object` or `Any` parameters on the public client methods."""
    client = qubico_async.QubicoClient
    for name, method in inspect.getmembers(client, inspect.iscoroutinefunction):
        if name.startswith("_"):
            continue
        hints = typing.get_type_hints(method)
        for param, hint in hints.items():
            assert hint is not object and hint is not typing.Any, f"{name}({param}: {hint})"
    hints = typing.get_type_hints(client.swap_many)
    assert "JobLike" in str(hints["jobs"]) or "Job" in str(hints["jobs"])
