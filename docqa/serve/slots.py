"""Bounded concurrency for the server's expensive work: a request either gets its turn soon or is
told to come back (``Busy``: 429 when too many wait, 503 when its wait ran out, with Retry-After).

A ``Budget`` has a capacity in units of cost (one answer model; bytes of decoded pixels) and a
bound on how many requests may hold or wait for a share of it. Nothing waits without a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import DocQAError


class Busy(DocQAError):
    """Too much of this kind of work is running or waiting; try again after ``retry_after`` s."""

    def __init__(self, message: str, *, status: int = 429, retry_after: int = 5) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Ticket:
    """A place in a Budget's line: ``wait`` for a share of the capacity, ``release`` when done."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._held = 0
        self._done = False

    def wait(self, cost: int = 1, timeout_s: float | None = None) -> None:
        self._budget._acquire(self, cost, self._budget.wait_s if timeout_s is None else timeout_s)

    def release(self) -> None:
        self._budget._release(self)


class Budget:
    def __init__(self, what: str, capacity: int, *, max_in_flight: int, wait_s: float, retry_after: int = 5) -> None:
        self.what = what
        self.capacity = capacity
        self.max_in_flight = max_in_flight
        self.wait_s = wait_s
        self.retry_after = retry_after
        self._used = 0
        self._in_flight = 0
        self._changed = threading.Condition()

    def reserve(self) -> Ticket:
        """A place in line, at once, or Busy (429) when ``max_in_flight`` hold or wait already."""
        with self._changed:
            if self._in_flight >= self.max_in_flight:
                raise Busy(
                    f"too many {self.what} at once ({self.max_in_flight} running or waiting); try again "
                    f"in {self.retry_after} s",
                    status=429,
                    retry_after=self.retry_after,
                )
            self._in_flight += 1
        return Ticket(self)

    @contextmanager
    def take(self, cost: int = 1, timeout_s: float | None = None) -> Iterator[None]:
        ticket = self.reserve()
        try:
            ticket.wait(cost, timeout_s)
            yield
        finally:
            ticket.release()

    def stats(self) -> dict:
        with self._changed:
            return {"used": self._used, "capacity": self.capacity, "in_flight": self._in_flight}

    def _acquire(self, ticket: Ticket, cost: int, timeout_s: float) -> None:
        cost = max(0, min(cost, self.capacity))  # one request bigger than the whole budget runs alone
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._used + cost > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    if self._used + cost <= self.capacity:
                        break
                    raise Busy(
                        f"the server is busy with other {self.what}; try again in {self.retry_after} s",
                        status=503,
                        retry_after=self.retry_after,
                    )
            self._used += cost
            ticket._held += cost

    def _release(self, ticket: Ticket) -> None:
        with self._changed:
            if ticket._done:
                return
            ticket._done = True
            self._used -= ticket._held
            ticket._held = 0
            self._in_flight -= 1
            self._changed.notify_all()
