# Everything runs from a fresh clone: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,faces]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(PY) -m qubico_async demo --out demo-output

lint: $(STAMP)
	$(VENV)/bin/ruff check qubico_async tests benchmarks examples
	$(VENV)/bin/ruff format --check qubico_async tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy qubico_async

test: $(STAMP) lint typecheck
	$(PY) -X dev -W error -m pytest -q

# BENCH_QUICK=1 make bench: a smoke run of a few minutes. Other benchmarks: $(PY) -m benchmarks bench_batch
bench: $(STAMP)
	$(PY) -m benchmarks bench_perf

clean:
	rm -rf $(VENV) demo-output build dist *.egg-info
