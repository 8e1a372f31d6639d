"""Disclosure control for answers given without a visa: minimum cell size, count rounding, and a
query budget per client (HTTP 429 once spent), the two defences beacon2-pi-api also offers.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProtectedCount:
    """A count as it may be shown: `value`, `exists`, and how counts are adjusted (`precision`)."""

    value: int
    exists: bool
    precision: str  # Beacon countPrecision: exact, rounded or imprecise
    adjusted_to: str | None = None  # the rules applied, for the client


@dataclass(frozen=True)
class CountPolicy:
    """Minimum cell size and rounding for counts answered without a visa.

    A count below `min_cell_size` is reported as 0 with exists false, so that small groups of people
    cannot be singled out; the others are rounded up to a multiple of `rounding`. 0 or 1 disables
    either rule. Every answer under the policy carries the same precision and note, suppressed or
    not: a suppressed 0 that looked different from a true 0 would reveal what it hides.
    """

    min_cell_size: int = 0
    rounding: int = 0

    def __post_init__(self) -> None:
        if self.min_cell_size < 0 or self.rounding < 0:
            raise ValueError("min_cell_size and rounding must be 0 or more")

    @property
    def active(self) -> bool:
        return self.min_cell_size > 1 or self.rounding > 1

    def visible(self, people: int) -> bool:
        """Whether a cell of this many people (a count, or a variant's carriers) may be shown at all."""
        return people > 0 and people >= self.min_cell_size

    def describe(self) -> str | None:
        rules = []
        if self.min_cell_size > 1:
            rules.append(f"counts below {self.min_cell_size} are reported as 0")
        if self.rounding > 1:
            rules.append(f"counts are rounded up to a multiple of {self.rounding}")
        return "; ".join(rules) or None

    def protect(self, count: int, *, min_cell: bool = True) -> ProtectedCount:
        """The count to show. `min_cell=False` when the caller already applied the cell size to
        what it counted (variants are counted only when enough people carry them)."""
        if count < 0:
            raise ValueError("a count cannot be negative")
        shown = count if (not min_cell or self.visible(count)) else 0
        if shown and self.rounding > 1:
            shown = math.ceil(shown / self.rounding) * self.rounding
        precision = "imprecise" if self.min_cell_size > 1 else "rounded" if self.rounding > 1 else "exact"
        return ProtectedCount(shown, shown > 0, precision, self.describe())


class BudgetExhausted(Exception):
    """The client has used its query budget; `retry_after` seconds until the oldest query leaves the window."""

    def __init__(self, client_kind: str, limit: int, window: float, retry_after: float):
        super().__init__(f"query budget exhausted: {limit} queries per {int(window)} s per {client_kind}; "
                         f"try again in {math.ceil(retry_after)} s")
        self.retry_after = retry_after


class QueryBudget:
    """At most `limit` queries per client in any sliding window of `window_seconds` (0 disables).

    Kept in memory: a restart forgets budgets, which errs towards answering. Thread-safe.
    """

    def __init__(self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic):
        if limit < 0 or window_seconds <= 0:
            raise ValueError("limit must be 0 or more and window_seconds positive")
        self.limit = limit
        self.window = float(window_seconds)
        self._clock = clock
        self._spent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._charges = 0

    def charge(self, client: str, client_kind: str = "client") -> int:
        """Count one query for `client`; returns how many remain. Raises BudgetExhausted."""
        if self.limit == 0:
            return -1
        now = self._clock()
        with self._lock:
            self._charges += 1
            if self._charges % 1024 == 0:
                self._forget_idle(now)
            spent = self._spent.setdefault(client, deque())
            while spent and spent[0] <= now - self.window:
                spent.popleft()
            if len(spent) >= self.limit:
                raise BudgetExhausted(client_kind, self.limit, self.window, spent[0] + self.window - now)
            spent.append(now)
            return self.limit - len(spent)

    def _forget_idle(self, now: float) -> None:
        # Without this, every address that ever asked would stay in memory.
        for client in [c for c, s in self._spent.items() if not s or s[-1] <= now - self.window]:
            del self._spent[client]


@dataclass(frozen=True)
class Privacy:
    """What `make_app` needs: the count policy for answers without a visa, and the query budget."""

    counts: CountPolicy
    budget: QueryBudget
    scan_limit: int = 1000  # variants checked for carriers when a minimum cell size applies

    @classmethod
    def from_settings(cls, settings: object) -> Privacy:
        return cls(
            counts=CountPolicy(getattr(settings, "min_cell_size", 0), getattr(settings, "count_rounding", 0)),
            budget=QueryBudget(getattr(settings, "budget_queries", 0),
                               getattr(settings, "budget_window_seconds", 3600)),
            scan_limit=getattr(settings, "privacy_scan_limit", 1000),
        )
