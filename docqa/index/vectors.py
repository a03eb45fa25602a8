"""Page multi-vectors on disk: one append-only file of float16 rows, addressed by row offset.

This module is the only one that knows the file format, so the format can change (with a schema
migration in store.py) without touching ingest or search.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

VECTOR_DTYPE = np.float16
FILE_NAME = "vectors.f16"


class VectorFile:
    """Rows of `dim` float16 values. Writers append and `sync()` before committing the pages that
    point at the new rows; readers only read rows that committed pages point at."""

    def __init__(self, directory: Path, dim: int, name: str = FILE_NAME) -> None:
        self.path = directory / name
        self.dim = dim
        self._row_bytes = dim * np.dtype(VECTOR_DTYPE).itemsize
        self._appender = None
        self._mapped: np.ndarray | None = None  # reused while the file keeps its length

    @property
    def rows(self) -> int:
        try:
            return self.path.stat().st_size // self._row_bytes
        except FileNotFoundError:
            return 0

    def append(self, vectors: np.ndarray) -> int:
        """Append a (n, dim) array; returns the row offset of its first row."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got {vectors.shape}")
        if self._appender is None:
            self._appender = open(self.path, "ab")
        offset = self._appender.tell() // self._row_bytes
        self._appender.write(np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE).tobytes())
        return offset

    def sync(self, durable: bool = True) -> None:
        """Hand every appended row to the OS (it then survives the process being killed) and, when
        `durable`, to the disk (it survives power loss). Call before the commit that references them."""
        if self._appender is not None:
            self._appender.flush()
            if durable:
                os.fsync(self._appender.fileno())

    def truncate(self, rows: int) -> None:
        """Drop rows past `rows` (written after the last commit by a process that died)."""
        self.close()
        if self.path.exists() and self.rows > rows:
            with open(self.path, "r+b") as handle:
                handle.truncate(rows * self._row_bytes)
                os.fsync(handle.fileno())

    def read(self, offsets: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """float32 copies of the row ranges [offset, offset + count)."""
        if len(offsets) == 0:
            return []
        mapped = self._map()
        return [np.asarray(mapped[o : o + c], dtype=np.float32) for o, c in zip(offsets, counts)]

    def read_block(self, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The row ranges [offset, offset + count), one after another, as one float32 array (one
        gather and one conversion, much faster than page by page)."""
        if len(offsets) == 0 or int(np.sum(counts)) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        counts = np.asarray(counts, dtype=np.int64)
        starts = np.repeat(np.asarray(offsets, dtype=np.int64) - np.cumsum(counts) + counts, counts)
        rows = starts + np.arange(int(counts.sum()))
        return self._map()[rows].astype(np.float32)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """float32 copy of rows [start, stop)."""
        if stop <= start:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._map()[start:stop], dtype=np.float32)

    def _map(self) -> np.ndarray:
        """The file's rows, memory-mapped once per file length (not once per read)."""
        if self._appender is not None:
            self._appender.flush()
        rows = self.rows
        if self._mapped is None or len(self._mapped) != rows:
            self._mapped = (np.memmap(self.path, dtype=VECTOR_DTYPE, mode="r", shape=(rows, self.dim))
                            if rows else np.zeros((0, self.dim), dtype=VECTOR_DTYPE))
        return self._mapped

    def close(self) -> None:
        self._mapped = None
        if self._appender is not None:
            self._appender.close()
            self._appender = None
