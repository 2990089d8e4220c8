"""Public-domain face photos for `python -m qubico_async demo` (package data, no code)."""
