"""Search: FAISS finds candidate pages, exact MaxSim late interaction ranks them.

The candidate index holds every stored page vector (ids = vector-file rows) in a FAISS
inner-product index with float16 storage, which is lossless for the float16 rows we store, so
its similarities are exact. Search uses them as a threshold algorithm: after fetching the top-n
rows for each query token, a page not among them scores at most the sum of each token's n-th
similarity; once the k-th exact MaxSim among the candidates beats that bound, no other page can
enter the top k. The result is therefore exactly the top-k of MaxSim over the whole index.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .store import PageTable
from .vectors import VectorFile

FILE_NAME = "tokens.faiss"
_MAGIC = b"DOCQAFX2"
_HEADER = struct.Struct("<8sqq")  # magic, vector epoch, high-water row (every row below it was added)
_TIE_MARGIN = 1e-4  # float32 summation-order slack between FAISS and our MaxSim
_SCORE_CHUNK_ROWS = 1 << 18  # vector rows scored per matmul, bounds memory during rerank


def maxsim(query: np.ndarray, pages: list[np.ndarray]) -> np.ndarray:
    """Late-interaction score of one query against each page: sum over query vectors of the
    highest dot product with any of the page's vectors."""
    scores = np.empty(len(pages), dtype=np.float32)
    start = 0
    while start < len(pages):
        stop, rows = start, 0
        while stop < len(pages) and (stop == start or rows + len(pages[stop]) <= _SCORE_CHUNK_ROWS):
            rows += len(pages[stop])
            stop += 1
        block = np.concatenate(pages[start:stop]) if rows else np.zeros((0, query.shape[1]), np.float32)
        similarities = query @ block.T  # (query tokens, rows)
        bounds = np.cumsum([0] + [len(page) for page in pages[start:stop]])
        for index, (low, high) in enumerate(zip(bounds[:-1], bounds[1:])):
            scores[start + index] = similarities[:, low:high].max(axis=1).sum() if high > low else 0.0
        start = stop
    return scores


class TokenIndex:
    """FAISS index over every page vector, kept in step with the vector file."""

    def __init__(self, dim: int) -> None:
        quantizer = faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        self.faiss = faiss.IndexIDMap2(quantizer)
        self.dim = dim
        self.epoch = 0  # the vector_epoch whose row numbers this index uses
        self.high_water = 0  # every vector row below this has been added

    @property
    def size(self) -> int:
        return int(self.faiss.ntotal)

    def add(self, first_row: int, vectors: np.ndarray) -> None:
        if len(vectors) == 0:
            return
        ids = np.arange(first_row, first_row + len(vectors), dtype=np.int64)
        self.faiss.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        self.high_water = max(self.high_water, first_row + len(vectors))

    def remove(self, ranges: list[tuple[int, int]]) -> None:
        if ranges:
            ids = np.concatenate([np.arange(o, o + c, dtype=np.int64) for o, c in ranges])
            self.faiss.remove_ids(faiss.IDSelectorBatch(ids))

    def catch_up(self, table: PageTable, vectors: VectorFile) -> None:
        """Add the committed pages written after this index was saved."""
        newer = table.offsets >= self.high_water
        for offset, count in zip(table.offsets[newer], table.counts[newer]):
            self.add(int(offset), vectors.read_rows(int(offset), int(offset + count)))

    @classmethod
    def build(cls, table: PageTable, vectors: VectorFile, epoch: int) -> "TokenIndex":
        index = cls(vectors.dim)
        index.epoch = epoch
        index.catch_up(table, vectors)
        return index

    def save(self, directory: Path) -> None:
        """Write atomically: a temp file in the same folder, fsync, then os.replace."""
        payload = faiss.serialize_index(self.faiss)
        handle, temp_name = tempfile.mkstemp(prefix=".tokens-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(handle, "wb") as temp:
                temp.write(_HEADER.pack(_MAGIC, self.epoch, self.high_water))
                temp.write(payload.tobytes())
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, directory / FILE_NAME)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, directory: Path, dim: int) -> "TokenIndex | None":
        """The saved index, or None when there is none or it cannot be read (it is rebuilt)."""
        try:
            data = (directory / FILE_NAME).read_bytes()
            magic, epoch, high_water = _HEADER.unpack_from(data)
            if magic != _MAGIC:
                return None
            loaded = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size))
        except (OSError, struct.error, RuntimeError):
            return None
        if loaded.d != dim:
            return None
        index = cls(dim)
        index.faiss = loaded
        index.epoch = int(epoch)
        index.high_water = int(high_water)
        return index


@dataclass(frozen=True)
class ScoredPage:
    page_id: int
    score: float


def brute_force_top_k(query: np.ndarray, k: int, table: PageTable, vectors: VectorFile,
                      chunk_rows: int = _SCORE_CHUNK_ROWS) -> list[ScoredPage]:
    """The k pages of `table` with the highest MaxSim, by scoring every page (best first; ties: lower
    page id). Pages are read a chunk of about `chunk_rows` vector rows at a time, so memory stays bounded."""
    if k < 1 or len(table) == 0:
        return []
    query = np.ascontiguousarray(query, dtype=np.float32)
    scores = np.empty(len(table), dtype=np.float32)
    ends = np.cumsum(table.counts)
    start = 0
    while start < len(table):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - table.counts[start] + chunk_rows, "right")))
        scores[start:stop] = maxsim(query, vectors.read(table.offsets[start:stop], table.counts[start:stop]))
        start = stop
    best = _top_positions(scores, table.page_ids, k)
    return [ScoredPage(int(table.page_ids[p]), float(scores[p])) for p in best]


def _top_positions(scores: np.ndarray, page_ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first, ties broken by the lower page id."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= kth)
    else:
        keep = np.arange(len(scores))
    order = np.lexsort((page_ids[keep], -scores[keep]))
    return keep[order[:k]]


def exact_top_k(
    query: np.ndarray, k: int, table: PageTable, tokens: TokenIndex, vectors: VectorFile
) -> list[ScoredPage]:
    """The k pages with the highest MaxSim score, exactly, best first (ties: lower page id)."""
    if k < 1 or len(table) == 0:
        return []
    query = np.ascontiguousarray(query, dtype=np.float32)
    total_rows = tokens.size
    depth = min(total_rows, max(64, 8 * k))
    scored: dict[int, float] = {}
    while True:
        similarities, rows = tokens.faiss.search(query, depth)
        positions = table.rows_to_pages(rows.ravel())
        new = sorted(set(positions[positions >= 0].tolist()) - scored.keys())
        if new:
            page_vectors = vectors.read(table.offsets[new], table.counts[new])
            for position, score in zip(new, maxsim(query, page_vectors)):
                scored[position] = float(score)
        ranked = sorted(scored.items(), key=lambda item: (-item[1], table.page_ids[item[0]]))
        exhausted = depth >= total_rows or len(scored) == len(table)
        if exhausted:
            break
        bound = float(similarities[:, -1].sum())
        if len(ranked) >= k and ranked[k - 1][1] > bound + _TIE_MARGIN:
            break
        depth = min(total_rows, depth * 4)
    return [ScoredPage(int(table.page_ids[position]), score) for position, score in ranked[:k]]
