"""Every code block in README.md, and every file in examples/, runs as written against the emulator.

The README's emulator section says how to start `python -m qubico_async emulator` and which
environment variables point a client at it. This file does exactly that: it starts the emulator
command from that block (on a free port, with zero task times), sets the variables the block
exports (with the real ports), then runs each ```python block as a script and each ```bash block
with bash, in a subprocess with a timeout, in a folder holding the sample files the README names
(`target.jpg`, `face.png`, ...).

A block preceded by `<!-- not-run: reason -->` is skipped on purpose (installs, `make`, a
deployment with real hosts). `<!-- run-as: ... -->` says how a block that is not a script runs:
`notebook` the way Jupyter does (top-level `await` on an already-running loop); `asgi` as a
FastAPI module served by uvicorn on loopback, whose routes are then called; `pytest` as a test
file next to a conftest.py enabling the plugin. `file NAME` names a block, and `continues NAME`
runs a block after the named one (routes added to an app defined earlier). A guard in every subprocess refuses to resolve or
connect to anything but loopback, so a block that ignored the environment fails instead of
reaching the real service.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BLOCK_TIMEOUT = 60

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!--\s*(not-run|run-as)\s*:\s*(.*?)\s*-->\s*$")
RUN_LANGS = {"python", "bash"}

# Refuses every address that is not loopback: installed through PYTHONPATH as sitecustomize.
NETWORK_GUARD = r"""
import ipaddress, socket, sys

def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False

_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex

def _refuse(what):
    message = f"README test: {what} refused (loopback only)"
    sys.stderr.write(message + "\n")  # the SDK may wrap the error: say it here too
    raise OSError(message)

def getaddrinfo(host, *args, **kwargs):
    if not _loopback(host):
        _refuse(f"network access to {host!r}")
    return _getaddrinfo(host, *args, **kwargs)

def _check(address):
    if isinstance(address, tuple) and not _loopback(address[0]):
        _refuse(f"connection to {address[0]!r}")

def connect(self, address):
    _check(address)
    return _connect(self, address)

def connect_ex(self, address):
    _check(address)
    return _connect_ex(self, address)

socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
"""

# Runs a block like a Jupyter cell: top-level await, on a loop that is already running.
NOTEBOOK_RUNNER = """
import ast, asyncio, sys, types
source = open(sys.argv[1], encoding="utf-8").read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__"}
async def cell():
    result = eval(code, namespace)
    if isinstance(result, types.CoroutineType):
        await result
asyncio.run(cell())
"""

# Serves a block's FastAPI `app` with uvicorn on loopback and calls the routes it defines.
ASGI_RUNNER = """
import asyncio, atexit, os, runpy, socket, sys
import aiohttp, uvicorn

sock = socket.socket()
atexit.register(sock.close)
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
os.environ["PUBLIC_URL"] = f"http://127.0.0.1:{port}"  # where the emulator delivers webhooks
app = runpy.run_path(sys.argv[1], run_name="readme_app")["app"]
paths = {getattr(route, "path", None) for route in app.routes}

def photos():
    form = aiohttp.FormData()
    for field, name in (("target", "target.jpg"), ("face", "face.png")):
        with open(name, "rb") as f:
            form.add_field(field, f.read(), filename=name)
    return form

async def calls(http, url):
    if "/qubico/webhook" in paths:
        async with http.post(url + "/qubico/webhook", data=b"{}") as r:
            assert r.status == 401, r.status  # no secret: refused before parsing
    if "/swap" in paths:
        async with http.post(url + "/swap", data=photos()) as r:
            body = await r.json()
            assert r.status == 200 and body["image_url"], (r.status, body)
            print("POST /swap", body)
    if "/swap/async" in paths:
        async with http.post(url + "/swap/async", data=photos()) as r:
            body = await r.json()
            assert r.status == 202, (r.status, body)
        for _ in range(500):
            async with http.get(url + "/swap/" + body["task_id"]) as r:
                state = await r.json()
                assert r.status == 200, state
            if state["status"] == "completed":
                break
            await asyncio.sleep(0.01)
        assert state["status"] == "completed" and state["image_url"], state
        print("GET /swap/{task_id}", state)

async def main():
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not serving.done(), "the app did not start"
        await asyncio.sleep(0.01)
    try:
        async with aiohttp.ClientSession() as http:
            await calls(http, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await serving

asyncio.run(main())
"""


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int
    marker: tuple[str, str] | None

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with its language, first line number and the marker right before it."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found = MARKER.search(before)
        marker = (found.group(1), found.group(2)) if found else None
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(match.group(1), match.group(2), line, marker))
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def is_emulator_setup(block: Block) -> bool:
    return block.lang == "bash" and "qubico_async emulator" in block.code and "export QUBICO_BASE_URL" in block.code


def emulator_setup() -> Block:
    found = [b for b in BLOCKS if is_emulator_setup(b)]
    assert len(found) == 1, "README needs one bash block that starts the emulator and exports QUBICO_BASE_URL"
    return found[0]


def setup_commands(block: Block) -> tuple[list[str], dict[str, str]]:
    """The emulator command line and the exported variables, as the README block writes them."""
    command: list[str] = []
    env: dict[str, str] = {}
    for line in block.code.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "export":
            env.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
        elif words[:3] == ["python", "-m", "qubico_async"] and "emulator" in words:
            command = [w for w in words if w != "&"]
    assert command, "the setup block must start the emulator with `python -m qubico_async emulator`"
    return command, env


@dataclass
class RunningEmulator:
    env: dict[str, str]
    process: subprocess.Popen[str]
    output: list[str]


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("guard")
    (folder / "sitecustomize.py").write_text(NETWORK_GUARD, encoding="utf-8")
    (folder / "notebook_runner.py").write_text(NOTEBOOK_RUNNER, encoding="utf-8")
    (folder / "asgi_runner.py").write_text(ASGI_RUNNER, encoding="utf-8")
    return folder


def base_env(guard: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUBICO_", "PIAPI_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(guard), str(ROOT)])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONWARNINGS"] = "error"  # as in `make test`: an unclosed session fails the block
    return env


@pytest.fixture(scope="module")
def emulator(guard_dir: Path) -> Iterator[RunningEmulator]:
    """The README's emulator command on free ports, and its exported variables pointing at it."""
    command, exported = setup_commands(emulator_setup())
    readme_port = _option(command, "--port")
    # The exported URLs must name the ports the command serves on (upload API: --port + 1).
    assert exported["QUBICO_BASE_URL"] == f"http://127.0.0.1:{readme_port}"
    assert exported["QUBICO_UPLOAD_URL"] == f"http://127.0.0.1:{int(readme_port) + 1}"
    args = command[3:]
    args[args.index("--port") + 1] = "0"  # a free port: tests run in parallel with other work
    args += ["--pending-seconds", "0", "--processing-seconds", "0"]
    env = base_env(guard_dir)
    process = subprocess.Popen(
        [sys.executable, "-m", "qubico_async", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    urls: dict[str, str] = {}
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        key, _, value = line.partition(":")
        if key in ("base_url", "upload_url"):
            urls[key] = value.strip()
        if line.startswith("Press Ctrl-C"):
            break
    assert set(urls) == {"base_url", "upload_url"}, "".join(output)
    drain = threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True)
    drain.start()
    env.update(exported)
    env["QUBICO_BASE_URL"] = urls["base_url"]
    env["QUBICO_UPLOAD_URL"] = urls["upload_url"]
    try:
        yield RunningEmulator(env, process, output)
    finally:
        process.terminate()
        process.wait(timeout=10)
        drain.join(timeout=10)
        process.stdout.close()


def sample_folder(folder: Path) -> Path:
    """The files the README's blocks name, made from the test fixtures."""
    images = {
        "target.jpg": "grace_hopper.jpg",
        "face.png": "astronaut.jpg",  # a JPEG named .png: the SDK sends it as what it is
        "face.jpg": "astronaut.jpg",
        "group.jpg": "group-two-faces.jpg",
        "faces.jpg": "group-two-faces.jpg",
        "clip.mp4": "tiny.mp4",
    }
    for name, fixture in images.items():
        shutil.copyfile(FIXTURES / fixture, folder / name)
    for sub in ("targets", "photos"):
        (folder / sub).mkdir()
        shutil.copyfile(FIXTURES / "grace_hopper.jpg", folder / sub / "hopper.jpg")
        shutil.copyfile(FIXTURES / "group-two-faces.jpg", folder / sub / "group.jpg")
    (folder / "jobs.csv").write_text(
        f"target,key\n{folder / 'target.jpg'},one\n{folder / 'group.jpg'},two\n", encoding="utf-8"
    )
    return folder


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{argv} did not finish in {BLOCK_TIMEOUT} s:\n{exc.stdout}\n{exc.stderr}")
    return done


RUN_AS = {"notebook", "asgi", "pytest"}


def _marker_words(block: Block) -> list[str]:
    if block.marker is None or block.marker[0] != "run-as":
        return []
    return [w for w in re.split(r"[\s,]+", block.marker[1]) if w]


def run_as(block: Block) -> set[str]:
    """How the block runs: notebook, asgi or pytest (nothing: as a script)."""
    words = _marker_words(block)
    how = set(words) & RUN_AS
    named = {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("file", "continues")}
    unknown = set(words) - RUN_AS - {"file", "continues"} - named
    assert not unknown, f"unknown run-as words {unknown} at README line {block.line}"
    return how


def _named(block: Block, word: str) -> str | None:
    words = _marker_words(block)
    return next((words[i + 1] for i, w in enumerate(words[:-1]) if w == word), None)


def full_code(block: Block) -> str:
    """The block's code, after the code of the block it `continues`, if any."""
    name = _named(block, "continues")
    if name is None:
        return block.code
    found = [b for b in BLOCKS if _named(b, "file") == name and b.line < block.line]
    assert len(found) == 1, f"README line {block.line} continues {name}, which no earlier block is"
    return full_code(found[0]) + "\n" + block.code


RUNNABLE = [b for b in BLOCKS if b.lang in RUN_LANGS and not is_emulator_setup(b)]


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_readme_block_runs(block: Block, emulator: RunningEmulator, guard_dir: Path, tmp_path: Path) -> None:
    if block.marker is not None and block.marker[0] == "not-run":
        pytest.skip(f"README says not-run: {block.marker[1]}")
    folder = sample_folder(tmp_path)
    how = run_as(block)
    env = dict(emulator.env)
    if block.lang == "python":
        script = folder / "block.py"
        script.write_text(full_code(block), encoding="utf-8")
        argv = [sys.executable, "-X", "dev", str(script)]
        if "notebook" in how:
            argv = [sys.executable, "-X", "dev", str(guard_dir / "notebook_runner.py"), str(script)]
        elif "asgi" in how:
            env["QUBICO_WEBHOOK_SECRET"] = "dev-secret"  # as in the README's offline uvicorn command
            argv = [sys.executable, "-X", "dev", str(guard_dir / "asgi_runner.py"), str(script)]
        elif "pytest" in how:
            script = script.rename(folder / "test_block.py")
            (folder / "conftest.py").write_text(
                'pytest_plugins = ["qubico_async.testing.pytest_plugin"]\n', encoding="utf-8"
            )
            argv = [sys.executable, "-X", "dev", "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider"]
            argv += ["-p", "no:randomly", str(script)]
    else:
        assert not how, f"run-as is for python blocks, line {block.line}"
        script = folder / "block.sh"
        script.write_text(block.code, encoding="utf-8")
        argv = ["bash", "-euo", "pipefail", str(script)]
    done = run(argv, folder, env)
    assert done.returncode == 0, f"README line {block.line} failed:\n{block.code}\n{done.stdout}\n{done.stderr}"


def test_exceptions_are_few_and_explained() -> None:
    """Every skipped block says why; skipping is the exception, not the rule."""
    skipped = [b for b in BLOCKS if b.marker is not None and b.marker[0] == "not-run"]
    assert all(b.marker and len(b.marker[1]) > 10 for b in skipped)
    assert len(skipped) <= 5, [b.id for b in skipped]
    assert len(RUNNABLE) - len(skipped) >= 10


def test_unknown_languages_are_not_code() -> None:
    """A block in another language would silently never run: only python, bash and plain text."""
    assert {b.lang for b in BLOCKS} <= RUN_LANGS | {""}, {b.lang for b in BLOCKS}


def test_the_guard_refuses_the_real_service(guard_dir: Path, tmp_path: Path) -> None:
    """A block that ignored QUBICO_BASE_URL would fail here instead of reaching the network."""
    script = tmp_path / "escape.py"
    script.write_text(
        "import anyio\nfrom qubico_async import QubicoClient\n"
        "async def main():\n"
        "    async with QubicoClient('k', base_url='https://api.piapi.ai') as client:\n"
        "        await client.account_info()\n"
        "anyio.run(main)\n",
        encoding="utf-8",
    )
    done = run([sys.executable, str(script)], tmp_path, base_env(guard_dir))
    assert done.returncode != 0
    assert "loopback only" in done.stderr


# -- examples/ ---------------------------------------------------------------------------------

# How each example is exercised; a new example without an entry here fails the test below.
EXAMPLE_COVERAGE = {
    "quickstart.py": "test_quickstart_example_*, below",
    "fastapi_app.py": "tests/test_integrations_fastapi.py imports it and drives it over uvicorn",
    "cluster_demo.py": "test_cluster_demo_example_small, below (make cluster-demo runs it at full size)",
}


def test_every_example_is_exercised() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXAMPLE_COVERAGE)


def test_quickstart_example_against_the_readme_emulator(emulator: RunningEmulator, tmp_path: Path) -> None:
    """With the README's environment the example talks to the emulator it points at."""
    folder = sample_folder(tmp_path)
    argv = [sys.executable, "-X", "dev", str(EXAMPLES / "quickstart.py"), "target.jpg", "face.png"]
    done = run(argv, folder, emulator.env)
    assert done.returncode == 0, done.stderr
    assert emulator.env["QUBICO_BASE_URL"] in done.stdout  # the result URL is the README emulator's
    assert saved_results(folder), done.stdout


def saved_results(folder: Path) -> set[Path]:
    return set(folder.glob("*.jpg")) - {folder / n for n in ("target.jpg", "face.jpg", "group.jpg", "faces.jpg")}


def test_cluster_demo_example_small(tmp_path: Path) -> None:
    """The cluster demo end to end at a small size: Redis, the emulator and two uvicorn workers."""
    argv = [sys.executable, "-X", "dev", str(EXAMPLES / "cluster_demo.py"), "--requests", "8", "--workers", "2"]
    done = subprocess.run(
        [*argv, "--skip-uncoordinated"], cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cluster-demo: 8 requests, 2 workers" in done.stdout and "429s 0, fallback polls 0" in done.stdout


def test_quickstart_example_offline(guard_dir: Path, tmp_path: Path) -> None:
    """Without a key the example starts its own in-process emulator."""
    folder = sample_folder(tmp_path)
    done = run(
        [sys.executable, "-X", "dev", str(EXAMPLES / "quickstart.py"), "target.jpg", "face.png"],
        folder,
        base_env(guard_dir),
    )
    assert done.returncode == 0, done.stderr
    assert saved_results(folder), done.stdout


# -- the API reference (docs/api, built by `make docs`) --------------------------------------


def test_api_reference_covers_the_public_api() -> None:
    """Every name `qubico_async` exports has a `:::` entry in docs/api (top level or its module)."""
    import qubico_async
    import qubico_async.testing

    pages = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)\s*$", pages, re.MULTILINE))
    missing = []
    for name in qubico_async.__all__:
        obj = getattr(qubico_async, name)
        module = getattr(obj, "__module__", "")
        if name.startswith("__"):
            continue
        if f"qubico_async.{name}" not in documented and f"{module}.{name}" not in documented:
            missing.append(name)
    assert not missing, f"not in docs/api: {missing}"
    assert "qubico_async.testing.Emulator" in documented
    assert {"qubico_async.webhooks", "qubico_async.testing.pytest_plugin"} <= documented
