# Everything runs from a fresh clone: `make demo`, `make test`, `make bench`, `make docs`, `make dist`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck docs dist bench clean

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

test: $(STAMP) lint typecheck docs dist
	$(PY) -X dev -W error -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) demo-output build dist site *.egg-info
