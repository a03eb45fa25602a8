"""Page multi-vectors on disk: one append-only file of 16-bit rows, addressed by row offset.

Rows are float16 (11 significant bits) or bfloat16 (8 significant bits, float32's exponent; stored
as the top half of the float32 bits, rounded to nearest even), an index option fixed at creation.
bfloat16 is there for speed: the CPU multiplies bfloat16 directly (AVX512-BF16), where float16 must
first be converted. This module is the only one that knows the file format, so the format can change
(with a schema migration in store.py) without touching ingest or search.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from io import BufferedWriter
from pathlib import Path

import numpy as np

VECTOR_DTYPE = np.float16  # what float16 files hold
VECTOR_TYPES = {"float16": "f16", "bfloat16": "bf16"}  # stored type -> file suffix
RowNumbers = Sequence[int] | np.ndarray  # row offsets or counts, one per page


def file_name(vector_type: str, epoch: int = 0) -> str:
    """The vector file of an index's `epoch` (compaction writes the next epoch's file)."""
    return f"vectors.{VECTOR_TYPES[vector_type]}" if epoch == 0 else f"vectors.{epoch}.{VECTOR_TYPES[vector_type]}"


def as_float32(values: np.ndarray) -> np.ndarray:
    """`values` as float32 (exactly); float16 through its bit patterns, twice as fast as numpy's own
    cast (which converts one value at a time)."""
    values = np.asarray(values)
    if values.dtype != np.float16:
        return np.asarray(values, dtype=np.float32)
    bits = values.view(np.int16)
    if ((bits & 0x7C00) == 0x7C00).any():  # infinities or NaNs: numpy's cast keeps them as they are
        return values.astype(np.float32)
    wide = bits.astype(np.int32)  # sign-extended: its float32 view carries the sign
    magnitude = ((wide & 0x7FFF) << 13).view(np.float32) * np.float32(2.0**112)  # rebias the exponent
    return np.copysign(magnitude, wide.view(np.float32))


def to_bfloat16_bits(vectors: np.ndarray) -> np.ndarray:
    """float32 values rounded to nearest even bfloat16, as uint16 bit patterns."""
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


class VectorFile:
    """Rows of `dim` float16 or bfloat16 values (`vector_type`). Writers append and `sync()` before
    committing the pages that point at the new rows; readers only read rows that committed pages
    point at."""

    def __init__(self, directory: Path, dim: int, name: str | None = None, vector_type: str = "float16") -> None:
        self.vector_type = vector_type
        self.path = directory / (name or file_name(vector_type))
        self.dim = dim
        self.stored_dtype = VECTOR_DTYPE if vector_type == "float16" else np.uint16  # bfloat16 as its bits
        self._row_bytes = dim * np.dtype(self.stored_dtype).itemsize
        self._appender: BufferedWriter | None = None
        self._mapped: np.ndarray | None = None  # reused while the file keeps its length

    @property
    def rows(self) -> int:
        try:
            return self.path.stat().st_size // self._row_bytes
        except FileNotFoundError:
            return 0

    def append(self, stored: np.ndarray) -> int:
        """Append rows in the stored type (`encode` makes them); returns the row offset of the first."""
        if stored.ndim != 2 or stored.shape[1] != self.dim or stored.dtype != self.stored_dtype:
            raise ValueError(
                f"expected (n, {self.dim}) {np.dtype(self.stored_dtype).name} rows, "
                f"got {stored.shape} {stored.dtype.name}"
            )
        if self._appender is None:
            self._appender = open(self.path, "ab")
        offset = self._appender.tell() // self._row_bytes
        self._appender.write(np.ascontiguousarray(stored).data)
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

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Values as this file stores them (float16, or bfloat16 bits)."""
        if self.vector_type == "float16":
            return np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE)
        return to_bfloat16_bits(vectors)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Stored rows as float32 (exact)."""
        out = np.empty(stored.shape, dtype=np.float32)
        self.decode_into(out, stored)
        return out

    def decode_into(self, out: np.ndarray, stored: np.ndarray) -> None:
        """Stored rows as float32 into `out` (of their shape), in one pass."""
        if self.vector_type == "float16":
            np.copyto(out, stored)
        else:
            np.left_shift(stored, 16, out=out.view(np.uint32), dtype=np.uint32)

    def read(self, offsets: RowNumbers, counts: RowNumbers) -> list[np.ndarray]:
        """float32 copies of the row ranges [offset, offset + count)."""
        return [self.decode(rows) for rows in self.stored_rows(offsets, counts)]

    def stored_rows(self, offsets: RowNumbers, counts: RowNumbers) -> list[np.ndarray]:
        """The row ranges [offset, offset + count) as stored, views of the file's mapping (which
        they keep alive: they stay readable after the file is replaced by compaction)."""
        if len(offsets) == 0:
            return []
        mapped = self._map().view(np.ndarray)  # slices of a plain array: no memmap object per page
        return [
            mapped[offset : offset + count]
            for offset, count in zip(np.asarray(offsets).tolist(), np.asarray(counts).tolist())
        ]

    def gather(self, offsets: RowNumbers, counts: RowNumbers, out: np.ndarray) -> None:
        """Copy the row ranges [offset, offset + count), one after another, into `out` (as stored:
        float16, or bfloat16 bits in uint16)."""
        row = 0
        for rows in self.stored_rows(offsets, counts):
            out[row : row + len(rows)] = rows
            row += len(rows)

    def _map(self) -> np.ndarray:
        """The file's rows as one (rows, dim) array, memory-mapped read-only once per file length
        (not once per read)."""
        if self._appender is not None:
            self._appender.flush()
        rows = self.rows
        if self._mapped is None or len(self._mapped) != rows:
            self._mapped = (
                np.memmap(self.path, dtype=self.stored_dtype, mode="r", shape=(rows, self.dim))
                if rows
                else np.zeros((0, self.dim), dtype=self.stored_dtype)
            )
        return self._mapped

    def close(self) -> None:
        self._mapped = None
        if self._appender is not None:
            self._appender.close()
            self._appender = None
