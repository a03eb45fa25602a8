"""BLAS threading for the index's matrix products.

The products here are small (a page's vectors against 256 half-centroids, a query against a few hundred
pages), and OpenBLAS's thread pool costs more than it saves on them: measured on the 2-core dev
machine, assigning one page's vectors took 0.3 ms on one thread and 40 ms with two threads when the
other core was busy. Search and indexing therefore run their products on one thread; concurrent
searches use the cores instead.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController

_controller = ThreadpoolController()


def one_blas_thread() -> AbstractContextManager:
    """A context in which numpy's BLAS uses a single thread."""
    return _controller.limit(limits=1, user_api="blas")
