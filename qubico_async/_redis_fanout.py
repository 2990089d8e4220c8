"""Webhook fan-out over Redis: a terminal state seen by one process wakes the waiters in all.

`task:<id>` (string, `result_ttl`) keeps the first terminal state (`SET NX`, so the first one
wins), then published on `<prefix>terminal`; a waiter that subscribes later finds it with one GET.
Stored tasks carry neither their inputs (inline media) nor the webhook secret. What this process
saw, or waited on, while Redis was away is shared and looked up when it is back (`catch_up`).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
from cattrs.preconf.json import make_converter

from ._redis_link import RedisLink
from .models import Task

__all__ = ["RedisFanout", "dump_task", "load_task"]

logger = logging.getLogger("qubico_async")

_tasks_json = make_converter()


def _storable(task: Task) -> Task:
    """The task without its inputs (inline media) and without the webhook secret."""
    webhook = task.config.webhook
    config = attrs.evolve(task.config, webhook=attrs.evolve(webhook, secret="") if webhook else None)
    return attrs.evolve(task, config=config, input={})


def dump_task(task: Task) -> str:
    return json.dumps(_tasks_json.unstructure(_storable(task)))


def load_task(raw: str | bytes) -> Task:
    return _tasks_json.structure(json.loads(raw), Task)


class RedisFanout:
    """Terminal states shared through `task:<id>` and `<prefix>terminal` (see the module)."""

    def __init__(self, link: RedisLink, *, result_ttl: float) -> None:
        self._link = link
        self.result_ttl = result_ttl
        self._on_terminal: list[Callable[[Task], None]] = []
        self._known: OrderedDict[str, None] = OrderedDict()  # terminal task ids already shared
        self._unpublished: OrderedDict[str, Task] = OrderedDict()  # seen terminal while Redis was away
        self._watched: OrderedDict[str, None] = OrderedDict()  # waited on, not yet known terminal

    def attach(self, on_terminal: Callable[[Task], None]) -> None:
        if on_terminal not in self._on_terminal:
            self._on_terminal.append(on_terminal)

    def on_message(self, data: Any, *, force: bool = False) -> None:
        """A terminal state from `<prefix>terminal` (or a GET): to the attached callbacks, once."""
        try:
            task = load_task(data)
        except Exception:  # a foreign or corrupt message is not ours to crash on
            logger.warning("ignored an unreadable terminal message on Redis")
            return
        if not task.status.is_terminal or (self._remember(task.task_id) and not force):
            return  # our own message, or a task this process already knows terminal
        self._link.stats["remote_terminals"] += 1
        for callback in list(self._on_terminal):
            callback(task)

    def catch_up(self) -> None:
        """After an outage: share what this process saw meanwhile, and look up what it waits on."""
        unpublished, self._unpublished = self._unpublished, OrderedDict()
        for task in unpublished.values():
            self._link.spawn(self._publish(task))
        for task_id in list(self._watched):
            self._link.spawn(self._lookup(task_id))

    def _remember(self, task_id: str) -> bool:
        """True if `task_id` was already known terminal here; records it either way."""
        if task_id in self._known:
            self._known.move_to_end(task_id)
            return True
        self._watched.pop(task_id, None)
        self._known[task_id] = None
        if len(self._known) > 100_000:
            self._known.popitem(last=False)
        return False

    def publish_terminal(self, task: Task) -> None:
        if not task.status.is_terminal or self._remember(task.task_id) or self._link.redis is None:
            return
        self._link.spawn(self._publish(task))

    async def _publish(self, task: Task) -> None:
        link = self._link
        key = link.key("task:" + task.task_id)
        value = dump_task(task)
        stored = await link.call(lambda r: r.set(key, value, nx=True, px=int(self.result_ttl * 1000)))
        if stored is None and not link.up:  # Redis is away: shared when it is back
            self._unpublished[task.task_id] = task
            if len(self._unpublished) > 100_000:
                self._unpublished.popitem(last=False)
            return
        if stored:
            await link.call(lambda r: r.publish(link.key("terminal"), value))
        elif stored is not None:  # another process stored a terminal state first: that one wins
            raw = await link.call(lambda r: r.get(key))
            if raw is not None and raw != value.encode():
                self.on_message(raw, force=True)

    def watch(self, task_id: str) -> None:
        if task_id in self._known:
            return
        self._watched[task_id] = None
        self._watched.move_to_end(task_id)
        if len(self._watched) > 100_000:
            self._watched.popitem(last=False)
        if self._link.connected:
            self._link.spawn(self._lookup(task_id))

    async def _lookup(self, task_id: str) -> None:
        raw = await self._link.call(lambda r: r.get(self._link.key("task:" + task_id)))
        if raw is not None:
            self.on_message(raw)

    async def latest(self, task_id: str) -> Task | None:
        """The terminal state stored by any process, or None (unknown, or Redis unavailable)."""
        raw = await self._link.call(lambda r: r.get(self._link.key("task:" + task_id)))
        return load_task(raw) if raw is not None else None
