"""Handing freed memory back to the system after big, short-lived allocations (renders, batches)."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _glibc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or a no-op where the C library is not glibc.

    An ingest batch or a big render allocates and frees tens of MB of image arrays in several
    threads; glibc keeps such freed blocks in its per-thread heaps (its mmap threshold slides up past
    them), so resident memory creeps up by the spread of those heaps. Trimming after each hands the
    free pages back (benchmarks/RESULTS.md, "Ingest memory").
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


release_free_memory = _glibc_trim()
