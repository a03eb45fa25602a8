"""Coding of committed pages (each vector's cell and residual code) on a worker thread.

Coding a page's vectors (two FAISS nearest-centroid searches for the cells, then a product
quantizer's codes of the residuals) is most of what adding a page costs on one core. A writer hands
each batch of committed pages to one worker thread and goes on storing the next pages while FAISS
works (it releases the GIL), so adding runs on two cores; when the worker falls behind (another
process has the second core, or storing is quicker than coding), the writer codes the next batch
itself instead of waiting. Results come back in the order the batches
went in (the candidate index's high-water mark relies on it); the writer applies them to the
candidate index itself, so the index is only ever changed by the writer's thread.

Nothing here is durable: a batch not yet applied when a writer dies is recomputed from the vector
file by the next writer or reader (its pages are committed, above the candidate index's high water).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import faiss
import numpy as np

from .candidates import CandidateIndex

BUSY_WORKER_BATCHES = 2  # batches queued for the worker beyond which the writer assigns a batch itself
MAX_UNAPPLIED = 8  # batches handed over and not yet taken back: bounds memory

Assigned = tuple[list[int], list[np.ndarray]]  # page ids and each page's standalone codes (CandidateIndex.encode)


class BackgroundAssigner:
    """Turns (page ids, stored rows) into codes with a given candidate index's codebook and codes, on
    one worker thread, or on the calling thread while the worker is behind."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future[Assigned]] = deque()

    def submit(
        self,
        candidates: CandidateIndex,
        page_ids: list[int],
        stored: list[np.ndarray],
        decode_into: Callable[[np.ndarray, np.ndarray], None],
    ) -> list[Assigned]:
        """Assign pages whose rows are `stored` (as the vector file holds them, views of its mapping:
        `decode_into(out, rows)` makes them float32): on the worker, or right here when the worker
        is behind (so neither thread waits for the other); returns the batches now ready, in order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                1, thread_name_prefix="docqa-cells", initializer=faiss.omp_set_num_threads, initargs=(1,)
            )
        queued = sum(not future.done() for future in self._in_flight)
        if queued < BUSY_WORKER_BATCHES:
            self._in_flight.append(self._pool.submit(_assign, candidates, page_ids, stored, decode_into))
        else:
            here: Future[Assigned] = Future()
            here.set_result(_assign(candidates, page_ids, stored, decode_into))
            self._in_flight.append(here)
        ready = []
        while self._in_flight and (len(self._in_flight) > MAX_UNAPPLIED or self._in_flight[0].done()):
            ready.append(self._in_flight.popleft().result())
        return ready

    def finish(self) -> list[Assigned]:
        """Wait for every batch; all of them, in order."""
        ready = [future.result() for future in self._in_flight]
        self._in_flight.clear()
        return ready

    def close(self) -> None:
        """Drop every result not yet taken (their pages are recomputed by whoever needs them) and
        stop the worker thread, after the batch it is computing."""
        for future in self._in_flight:
            future.cancel()
        self._in_flight.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _assign(
    candidates: CandidateIndex,
    page_ids: list[int],
    stored: list[np.ndarray],
    decode_into: Callable[[np.ndarray, np.ndarray], None],
) -> Assigned:
    return page_ids, candidates.encode(stored, decode_into)
