# Everything runs from a fresh clone: `make demo`, `make test`, `make bench`, `make docs`, `make dist`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck docs dist bench clean redis-server cluster-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,faces]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(PY) -m qubico_async demo --out demo-output

lint: $(STAMP)
	$(VENV)/bin/ruff check qubico_async tests benchmarks examples tools
	$(VENV)/bin/ruff format --check qubico_async tests benchmarks examples tools

typecheck: $(STAMP)
	$(VENV)/bin/mypy qubico_async

# The API reference from the docstrings into site/, offline; any warning (a broken reference, a
# docstring griffe cannot read) fails the build.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Build the sdist and wheel into a temporary folder and check their contents (tools/check_dist.py).
dist: $(STAMP)
	$(PY) tools/check_dist.py

# The coordination tests start a real redis-server (Debian's package; installed here when missing and root).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing redis-server (Debian package)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: sudo apt-get install -y redis-server" >&2; exit 1; fi; }

# Four pytest-xdist workers: on 2 cores they fill the time tests wait on subprocesses and servers.
# PYTHONDEVMODE reaches the workers (-X dev would stay in the controller): asyncio debug mode and
# ResourceWarnings in every test.
test: $(STAMP) redis-server lint typecheck docs dist
	PYTHONDEVMODE=1 $(PY) -X dev -W error -m pytest -q -n 4 --dist worksteal

# 4 uvicorn workers of examples/fastapi_app.py, 200 swaps, account limit 16: without, then with Redis.
cluster-demo: $(STAMP) redis-server
	$(PY) examples/cluster_demo.py

# BENCH_QUICK=1 make bench: a smoke run of a few minutes. Other benchmarks: $(PY) -m benchmarks bench_batch
bench: $(STAMP)
	$(PY) -m benchmarks bench_perf

clean:
	rm -rf $(VENV) demo-output build dist site *.egg-info
