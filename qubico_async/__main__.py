"""`python -m qubico_async ...`: see `qubico_async.cli`."""

from .cli import main

raise SystemExit(main())
