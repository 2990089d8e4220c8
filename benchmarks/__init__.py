"""Benchmarks for qubico_async, run by `make bench` (never by `make test`). All traffic is loopback."""
