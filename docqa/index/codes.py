"""The candidate stage's second estimate: every page vector coded finely enough to find the pages
whose own vectors are far from every cell centroid.

The centroid walk (candidates.py) scores a page, per query token, by the best cell centroid it
has. A vector unlike any centroid (a form's or a slide's own content, beside the template it shares
with its siblings) gets its centroid's score, far below its own, and its page can rank among the
last (benchmarks/results/search.md, "A second estimate that finds page-own content"). So every page
vector is also kept as a standalone code: its cell number (2 bytes), then a 4-bit product-quantised
code of its residual from the cell's centroid (one sub-quantizer per 4 dimensions: 16 bytes for
128 dimensions). Codes are searched through a FAISS IVF-PQ fast-scan index over the same 65,536
cells, built from them: per query token, the coded vectors of its PROBED_CELLS nearest cells (by
Euclidean distance to the centroid, as an inverted multi-index probes; their centroid scores are
the walk's) are scored by inner product with 8-bit look-up tables, and the PER_TOKEN_HITS best
raise their pages' scores for that token to the coded similarity.

FAISS's own `add_sa_codes` does not pack codes into the fast-scan block layout (it copies them as
they are, so searches read garbage), so `searchable` packs them itself, a whole list at a time.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

PER_TOKEN_HITS = 4096  # coded vectors that raise their pages' scores, per query token
PROBED_CELLS = 256  # the nearest cells per query token whose coded vectors are scored
DIMS_PER_SUBQUANTIZER = 4
BITS = 4  # 16 centroids per sub-quantizer: the fast-scan kernels' size
BLOCK_VECTORS = 32  # fast-scan packs codes in blocks of this many vectors
HALF = 256  # centroids per codebook half (candidates.HALF_CENTROIDS)
CELL_BYTES = 2
_PERMUTATION = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15])  # FAISS's pq4 block order


def subquantizers(dim: int) -> int:
    """Sub-quantizers for `dim`-dimensional vectors: one per DIMS_PER_SUBQUANTIZER dimensions, or
    the largest count that divides `dim` below that."""
    return max(m for m in range(1, max(1, dim // DIMS_PER_SUBQUANTIZER) + 1) if dim % m == 0)


def faiss_cells(cells: np.ndarray) -> np.ndarray:
    """Cell ids as FAISS's multi-index numbers them (first half's centroid in the low byte), from
    the candidate index's first-half-major numbering; the swap is its own inverse."""
    cells = np.asarray(cells, dtype=np.int64)
    return (cells % HALF) * HALF + cells // HALF


def cells_of(codes: np.ndarray) -> np.ndarray:
    """The cell (candidate-index numbering) of each standalone code."""
    return faiss_cells(list_numbers(codes))


def list_numbers(codes: np.ndarray) -> np.ndarray:
    """The FAISS list number each standalone code starts with."""
    return np.ascontiguousarray(codes[:, :CELL_BYTES]).view("<u2")[:, 0].astype(np.int64)


class VectorCodes:
    """The residual quantizer of one codebook: vectors to standalone codes and back, and codes to a
    searchable fast-scan index."""

    def __init__(self, cell_centroids: np.ndarray, residual_centroids: np.ndarray) -> None:
        self.cell_centroids = np.ascontiguousarray(cell_centroids, dtype=np.float32)  # (2, HALF, dim / 2)
        self.residual_centroids = np.ascontiguousarray(residual_centroids, dtype=np.float32)  # (M, 16, dim / M)
        self.dim = 2 * self.cell_centroids.shape[2]
        # Any: FAISS's type stubs give the C++ signatures, not those of its numpy wrappers
        self.pq: Any = faiss.ProductQuantizer(self.dim, len(self.residual_centroids), BITS)
        faiss.copy_array_to_vector(self.residual_centroids.ravel(), self.pq.centroids)

    @classmethod
    def train(cls, cell_centroids: np.ndarray, sample: np.ndarray, cells: np.ndarray) -> VectorCodes:
        """A residual quantizer trained on the residuals of `sample` (n, dim) from its `cells`."""
        dim = 2 * cell_centroids.shape[2]
        pq = faiss.ProductQuantizer(dim, subquantizers(dim), BITS)
        residuals = np.asarray(sample, dtype=np.float32) - _centroids_of(cell_centroids, cells)
        if len(residuals) < 1 << BITS:  # k-means needs a point per centroid: repeat a tiny sample
            residuals = np.resize(residuals, (1 << BITS, dim))
        pq.train(np.ascontiguousarray(residuals))
        shape = (pq.M, 1 << BITS, pq.dsub)
        return cls(cell_centroids, faiss.vector_to_array(pq.centroids).reshape(shape))

    @property
    def code_size(self) -> int:
        """Bytes per standalone code: its cell number, then its residual code."""
        return CELL_BYTES + int(self.pq.code_size)

    def encode(self, vectors: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Standalone codes (n, code_size) uint8 of `vectors` (n, dim) float32 in their `cells`."""
        residuals = np.ascontiguousarray(vectors - _centroids_of(self.cell_centroids, cells), dtype=np.float32)
        cell_bytes = faiss_cells(cells).astype("<u2").view(np.uint8).reshape(len(cells), CELL_BYTES)
        return np.concatenate([cell_bytes, self.pq.compute_codes(residuals)], axis=1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The vectors that standalone codes stand for: cell centroid plus decoded residual."""
        residuals = self.pq.decode(np.ascontiguousarray(codes[:, CELL_BYTES:]))
        return _centroids_of(self.cell_centroids, cells_of(codes)) + residuals

    def searchable(self, codes: np.ndarray, page_ids: np.ndarray) -> CodeSearch:
        """A fast-scan index of `codes`, each labelled with its vector's page id."""
        quantizer = faiss.MultiIndexQuantizer(self.dim, 2, 8)
        faiss.copy_array_to_vector(self.cell_centroids.ravel(), quantizer.pq.centroids)
        quantizer.is_trained, quantizer.ntotal = True, HALF * HALF
        metric = faiss.METRIC_INNER_PRODUCT
        index: Any = faiss.IndexIVFPQFastScan(quantizer, self.dim, HALF * HALF, self.pq.M, BITS, metric)  # Any: as pq
        index.by_residual = True  # FAISS's default for this class is off (codes of x, not x - centroid)
        faiss.copy_array_to_vector(self.residual_centroids.ravel(), index.pq.centroids)
        index.is_trained = True
        if len(codes) == 0:
            return CodeSearch(index, quantizer)
        lists = list_numbers(codes)
        order = np.argsort(lists, kind="stable")
        lists, ids = lists[order], np.ascontiguousarray(np.asarray(page_ids, dtype=np.int64)[order])
        blocks, starts = _packed_blocks(np.ascontiguousarray(codes[order, CELL_BYTES:]), lists, index.M2)
        bounds = np.flatnonzero(np.diff(lists, prepend=-1, append=HALF * HALF))
        block_size = BLOCK_VECTORS * index.M2 // 2
        for low, high, start in zip(bounds[:-1], bounds[1:], starts):
            index.invlists.add_entries(
                int(lists[low]),
                int(high - low),
                faiss.swig_ptr(ids[low:high]),
                faiss.swig_ptr(blocks[start * block_size :]),
            )
        index.ntotal = len(ids)
        return CodeSearch(index, quantizer)


class CodeSearch:
    """A fast-scan index of standalone codes (`VectorCodes.searchable`)."""

    def __init__(self, index: Any, quantizer: faiss.MultiIndexQuantizer) -> None:
        self.index = index  # a faiss.IndexIVFPQFastScan (Any: as VectorCodes.pq)
        self._quantizer = quantizer  # FAISS's index does not own it

    def hits(self, query: np.ndarray, probed: np.ndarray, probed_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query token, the page ids and coded similarities (tokens, PER_TOKEN_HITS) of its best
        coded vectors among those of its `probed` cells (tokens, probes; candidate-index
        numbering), whose centroid scores are `probed_scores`. Empty slots hold page id -1."""
        if self.index.ntotal == 0:
            empty = np.full((len(query), PER_TOKEN_HITS), -1, dtype=np.int64)
            return empty, np.zeros(empty.shape, dtype=np.float32)
        self.index.nprobe = probed.shape[1]
        similarities, page_ids = self.index.search_preassigned(
            np.ascontiguousarray(query, dtype=np.float32),
            PER_TOKEN_HITS,
            faiss_cells(probed),
            np.ascontiguousarray(probed_scores, dtype=np.float32),
        )
        return page_ids, similarities


def _centroids_of(cell_centroids: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The centroid (n, dim) of each cell (candidate-index numbering)."""
    cells = np.asarray(cells, dtype=np.int64)
    return np.concatenate([cell_centroids[0][cells // HALF], cell_centroids[1][cells % HALF]], axis=1)


def _packed_blocks(residual_codes: np.ndarray, lists: np.ndarray, padded_m: int) -> tuple[np.ndarray, np.ndarray]:
    """Residual codes (n, code bytes), sorted by their `lists`, in FAISS's fast-scan block layout:
    each list's codes padded to whole blocks of BLOCK_VECTORS; returns the blocks (flat) and the
    first block of each list. In a block, each pair of sub-quantizers takes 32 bytes: the first
    one's 4-bit codes of vectors j and j + 16 in byte j (in _PERMUTATION order), the second's in
    byte 16 + j (FAISS's pq4_pack_codes)."""
    bounds = np.flatnonzero(np.diff(lists, prepend=-1, append=HALF * HALF))
    sizes = np.diff(bounds)
    block_counts = -(-sizes // BLOCK_VECTORS)
    starts = np.concatenate([[0], np.cumsum(block_counts)[:-1]]).astype(np.int64)
    pairs = padded_m // 2
    padded = np.zeros((int(block_counts.sum()) * BLOCK_VECTORS, pairs), dtype=np.uint8)
    slots = np.arange(len(lists)) - np.repeat(bounds[:-1], sizes) + np.repeat(starts * BLOCK_VECTORS, sizes)
    padded[slots, : residual_codes.shape[1]] = residual_codes
    columns = padded.reshape(-1, BLOCK_VECTORS, pairs).transpose(0, 2, 1)  # (blocks, pairs, vectors)
    low, high = columns & 15, columns >> 4  # the pair's first and second sub-quantizer
    first = low[..., _PERMUTATION] | (low[..., _PERMUTATION + 16] << 4)
    second = high[..., _PERMUTATION] | (high[..., _PERMUTATION + 16] << 4)
    return np.ascontiguousarray(np.concatenate([first, second], axis=2)).ravel(), starts
