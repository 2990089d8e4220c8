"""`python -m qubico_async demo`: swap faces on the bundled public-domain photos.

Without an API key it starts the bundled emulator (a real offline swap when the `faces` extra is
installed); with `QUBICO_API_KEY` set it runs against the real service (about $0.045).
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from attrs import frozen

from ._config import DEFAULT_BASE_URL
from .client import QubicoClient
from .models import Task
from .polling import PollPolicy
from .requests import FaceSwap, MultiFaceSwap

__all__ = ["run_demo"]


@frozen
class _Case:
    name: str
    title: str
    target: str
    swap: str
    multi: tuple[tuple[int, ...], tuple[int, ...]] | None = None


CASES = (
    _Case("astronaut-with-hopper-face", "astronaut <- Hopper's face", "astronaut.jpg", "grace_hopper.jpg"),
    _Case("hopper-with-astronaut-face", "Hopper <- astronaut's face", "grace_hopper.jpg", "astronaut.jpg"),
    _Case(
        "group-largest-face",
        "group: largest face (right) <- astronaut",
        "group-two-faces.jpg",
        "astronaut.jpg",
    ),
    _Case(
        "group-faces-exchanged",
        "group: multi-face swap, faces 0,1 -> 1,0",
        "group-two-faces.jpg",
        "group-two-faces.jpg",
        multi=((0, 1), (1, 0)),
    ),
)


def _photo(name: str) -> bytes:
    return importlib.resources.files("qubico_async._demo_data").joinpath(name).read_bytes()


@asynccontextmanager
async def _service(say: Callable[[str], None]) -> Any:
    """A client for the real service when a key is set, else for a local emulator."""
    if os.environ.get("QUBICO_API_KEY") or os.environ.get("PIAPI_API_KEY"):
        async with QubicoClient() as client:
            if client.base_url == DEFAULT_BASE_URL:
                say("API key found: running against the real service (4 tasks, about $0.045).")
            else:
                say(f"API key found: running against {client.base_url} (QUBICO_BASE_URL).")
            yield client
        return
    from .testing import Emulator
    from .testing._engine import engine_processor, engine_status

    processor, note = engine_processor(), engine_status()
    say(f"No API key set: using the bundled emulator. {note}")
    async with Emulator(api_key="demo-key", processor=processor) as emu:
        say(f"Emulator listening on {emu.base_url}")
        poll = PollPolicy(initial=0.05, factor=1.5, max_interval=0.5, timeout=120)
        async with QubicoClient(api_key=emu.api_key, base_url=emu.base_url, poll=poll) as client:
            yield client


async def run_demo(out: Path, say: Callable[[str], None] = print) -> list[Path]:
    """Run every demo case, save results and comparisons under `out`, return the files written."""
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows: list[tuple[str, bytes, bytes, bytes]] = []
    async with _service(say) as client:
        results: dict[str, Task] = {}

        async def one(case: _Case) -> None:
            target, swap = _photo(case.target), _photo(case.swap)
            if case.multi is None:
                request: FaceSwap | MultiFaceSwap = FaceSwap(target, swap)
            else:
                request = MultiFaceSwap(target, swap, case.multi[0], case.multi[1])
            results[case.name] = await client.run(request)

        async with anyio.create_task_group() as tg:
            for case in CASES:
                tg.start_soon(one, case)
        for case in CASES:
            task = results[case.name]
            before = out / f"{case.name}-before{os.path.splitext(case.target)[1]}"
            await anyio.Path(before).write_bytes(_photo(case.target))
            path = await client.download(task, out / f"{case.name}-after{_ext(task)}", overwrite=True)
            written += [before, path]
            say(f"  {case.title:45s} -> {path}")
            rows.append((case.title, _photo(case.target), _photo(case.swap), await anyio.Path(path).read_bytes()))
    comparison = await anyio.to_thread.run_sync(_comparison, rows, out / "comparison.png")
    if comparison is not None:
        written.append(comparison)
        say(f"  side-by-side comparison                       -> {comparison}")
    else:
        say("  (install qubico_async[faces] for the side-by-side comparison image)")
    say(f"Done: {len(written)} files in {await anyio.Path(out).resolve()}")
    return written


def _ext(task: Task) -> str:
    url = task.result_url or ""
    return os.path.splitext(url.split("?", 1)[0])[1] or ".jpg"


def _comparison(rows: list[tuple[str, bytes, bytes, bytes]], dest: Path) -> Path | None:
    """Target | face | result, one row per case, labelled; None without OpenCV."""
    try:
        import cv2
        import numpy as np
    except ImportError:
        return None
    height, gap = 240, 8

    def tiles() -> Iterator[Any]:
        for title, *images in rows:
            cells = []
            for data in images:
                img: Any = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                scale = height / img.shape[0]
                cells.append(cv2.resize(img, (round(img.shape[1] * scale), height), interpolation=cv2.INTER_AREA))
                cells.append(np.full((height, gap, 3), 255, np.uint8))
            row = np.hstack(cells[:-1])
            label = np.full((30, row.shape[1], 3), 255, np.uint8)
            cv2.putText(label, f"{title}   (target | face | result)", (6, 21), 0, 0.55, (40, 40, 40), 1, 16)
            yield np.vstack([label, row])

    rendered = list(tiles())
    width = max(t.shape[1] for t in rendered)
    padded = [np.hstack([t, np.full((t.shape[0], width - t.shape[1], 3), 255, np.uint8)]) for t in rendered]
    ok, buf = cv2.imencode(".png", np.vstack(padded))
    if not ok:
        return None
    dest.write_bytes(buf.tobytes())
    return dest
