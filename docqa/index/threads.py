"""Thread limits for the index's products.

The products here are small (a page's vectors against 256 half-centroids, a query against a chunk of
a few dozen pages), and thread pools cost more than they save on them when another process wants a
core: on the 2-core dev machine, assigning one page's vectors took 0.3 ms on one thread and 40 ms
with two OpenBLAS threads; a search of 100,000 pages took 42.5 ms (p50) with torch on one thread
and 145 ms with its two OpenMP threads while another process kept one core busy. Indexing and
search therefore run on one thread each; concurrent searches use the cores instead.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController

_blas = ThreadpoolController()
_everything: ThreadpoolController | None = None


def one_blas_thread() -> AbstractContextManager:
    """A context in which numpy's BLAS uses a single thread (torch is not imported for it)."""
    return _blas.limit(limits=1, user_api="blas")


def one_thread() -> AbstractContextManager:
    """A context in which numpy's BLAS and torch's OpenMP pool use a single thread (in the calling
    thread: OpenMP's thread count is per thread, so other threads' model work keeps its own)."""
    global _everything
    if _everything is None:
        import torch  # noqa: F401  loads torch's OpenMP runtime, so the controller finds it

        _everything = ThreadpoolController()
    return _everything.limit(limits=1)
