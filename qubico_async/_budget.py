"""The batch budget: dollars committed (spent, or reserved by tasks that may be billed) vs a limit.

A job reserves its price-table estimate before its create is sent. When it finishes, the
reservation is settled into what it cost (`Prices.actual`); a create that provably made nothing
releases it; an uncertain create keeps it (it may be billed). With a journal, the budget belongs
to the journal: a rerun starts from what earlier runs committed.
"""

from __future__ import annotations

__all__ = ["Budget"]

_EPSILON = 1e-9


class Budget:
    """`committed` dollars against `limit` (None: no limit, only counting)."""

    def __init__(self, limit: float | None, committed: float = 0.0) -> None:
        self.limit = limit
        self.committed = committed
        self.spent = 0.0
        """Dollars settled by tasks that finished in this run."""

    def try_reserve(self, amount: float) -> bool:
        """Reserve `amount` unless that would take the committed total over the limit."""
        if self.limit is not None and self.committed + amount > self.limit + _EPSILON:
            return False
        self.committed += amount
        return True

    def hold(self, amount: float) -> None:
        """Count `amount` already reserved elsewhere (a task resumed from a journal)."""
        self.committed += amount

    def settle(self, reserved: float, cost: float) -> None:
        """A task finished: its reservation becomes what it cost."""
        self.committed += cost - reserved
        self.spent += cost

    def release(self, reserved: float) -> None:
        """A create provably made nothing billable: give the reservation back."""
        self.committed -= reserved

    def describe(self) -> str:
        return f"budget: ${self.limit:.2f} would be exceeded" if self.limit is not None else "budget"
