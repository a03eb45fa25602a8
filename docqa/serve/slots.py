"""What a server lets its clients ask for (``Limits``) and bounded concurrency for the expensive
work: a request either gets its turn soon or is told to come back (``Busy``: 429 when too many
wait, 503 when its wait ran out, with Retry-After).

A ``Budget`` has a capacity in units of cost (one answer model; bytes of decoded pixels) and a
bound on how many requests may hold or wait for a share of it. Nothing waits without a timeout.
``Slots`` are the budgets one ``Limits`` makes; `docqa serve` and `docqa mcp` each hold one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import Busy

if TYPE_CHECKING:
    from PIL import Image

    from ..api import Hit


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request, and all requests together, may ask for."""

    max_upload_bytes: int = 100 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024  # any request other than an upload
    max_k: int = 50
    max_pages: int = 5  # pages shown to the answer model per question
    max_new_tokens: int = 1024  # tokens one answer may generate
    max_query_chars: int = 1000
    max_image_edge: int = 2048
    max_jobs_kept: int = 100
    max_upload_pages: int = 500  # pages per uploaded file; a longer one fails before any is encoded
    upload_quota_bytes: int = 2 * 1024**3  # all stored uploads together
    asks_waiting: int = 3  # questions waiting behind the one being answered; more get 429
    ask_wait_s: float = 120.0
    render_bytes: int = 768 * 1024**2  # decoded pixels of page renders running at once
    renders_in_flight: int = 8
    heatmaps_in_flight: int = 4
    searches_in_flight: int = 16
    files_in_flight: int = 8  # original files being checked for a download (two at a time) or waiting
    wait_s: float = 30.0  # longest wait for a render, heatmap or search turn (then 503)
    event_streams: int = 32  # open job event streams
    image_cache_bytes: int = 64 * 1024**2


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


class Slots:
    """The budgets one server's ``Limits`` make: answers (one at a time, a short line behind it),
    page renders (by the bytes of pixels they decode), heatmaps, searches, original files being
    checked for a download, and event streams."""

    def __init__(self, limits: Limits) -> None:
        self.asks = Budget(
            "questions", 1, max_in_flight=1 + limits.asks_waiting, wait_s=limits.ask_wait_s, retry_after=10
        )
        self.renders = Budget(
            "page renders", limits.render_bytes, max_in_flight=limits.renders_in_flight, wait_s=limits.wait_s
        )
        self.heatmaps = Budget("heatmaps", 1, max_in_flight=limits.heatmaps_in_flight, wait_s=limits.wait_s)
        self.searches = Budget("searches", 1, max_in_flight=limits.searches_in_flight, wait_s=limits.wait_s)
        self.files = Budget("original files", 2, max_in_flight=limits.files_in_flight, wait_s=limits.wait_s)
        self.streams = Budget("event streams", limits.event_streams, max_in_flight=limits.event_streams, wait_s=0)

    def render(self, hit: Hit, edge: int) -> Image.Image:
        """The page re-rendered from its source (refused when the file changed since indexing),
        fitted into ``edge`` px, within the render budget (the bytes its decoding will take)."""
        from ..answer.grounding import render_indexed_page
        from ..memory import release_free_memory

        with self.renders.take(render_cost(hit, edge)):
            try:
                return render_indexed_page(hit.file, hit.page, hit.sha256, hit.kind, edge, hit.path)
            finally:
                release_free_memory()


def render_cost(hit: Hit, edge: int) -> int:
    """Bytes a render of ``hit`` at ``edge`` decodes: the whole image for a picture (its header
    says how big), the requested size for a PDF page (pdftoppm renders at that size)."""
    from PIL import Image

    from ..inputs.render import IMAGE_FORMATS

    if hit.kind == "image":
        try:
            with Image.open(hit.file, formats=IMAGE_FORMATS) as image:
                width, height = image.size
            return width * height * 4 * 2  # decoded, then converted
        except Exception:  # noqa: BLE001  the render itself reports what is wrong
            return edge * edge * 4
    return edge * edge * 3 * 3
