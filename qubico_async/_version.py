"""The package version (`qubico_async.__version__`, `--version`); pyproject.toml states the same."""

__version__ = "0.1.0"
