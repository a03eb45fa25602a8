"""Thread limits for the index's work.

The products here are small (a page's vectors against 256 half-centroids, a query against a chunk of
a few dozen pages), and thread pools cost more than they save on them when another process wants a
core (benchmarks/RESULTS.md, "Threads"). A search therefore runs on one thread (concurrent
searches use the cores instead), and so does each of an index writer's two threads: its own and the
one that assigns cells (assigning.py). The limits hold for the calling thread's OpenMP work (its
thread count is per thread), so a model running in another thread keeps its own; OpenBLAS's count
is process-wide.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss
from threadpoolctl import ThreadpoolController

_controllers: dict[bool, ThreadpoolController] = {}


@contextmanager
def one_thread(*, with_torch: bool = False) -> Iterator[None]:
    """A context in which numpy's BLAS and FAISS use a single thread, and torch's OpenMP pool too
    when `with_torch` (which imports torch: writing does without it, so `remove` stays light)."""
    if with_torch not in _controllers:
        if with_torch:
            import torch  # noqa: F401  loads torch's OpenMP runtime, so the controller finds it
        _controllers[with_torch] = ThreadpoolController()
    faiss_threads = faiss.omp_get_max_threads()  # FAISS keeps its own count (threadpoolctl's limit misses it)
    faiss.omp_set_num_threads(1)
    try:
        with _controllers[with_torch].limit(limits=1):
            yield
    finally:
        faiss.omp_set_num_threads(faiss_threads)
