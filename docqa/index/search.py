"""Scoring: exact MaxSim late interaction, by brute force or over the candidate stage's best pages.

A page's score is MaxSim: the sum over query tokens of the best dot product with any of the page's
vectors. `brute_force_top_k` scores every page of a page table exactly (float32 products of the
stored vectors). `two_stage_top_k` asks the candidate index (candidates.py) for the pages with the
best approximate scores, scores those in bfloat16, and rescores the best of them exactly: the scores
it returns are exact, the set of pages considered is not.

Pages are scored a chunk of rows at a time through torch, into buffers allocated once per call:
torch converts float16 to float32 with vector instructions (numpy converts one value at a time),
and its bfloat16 products use the CPU's bf16 dot-product instructions (AVX512-BF16) where the CPU
has them. What each costs: benchmarks/RESULTS.md, "Scoring".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .candidates import CandidateIndex
from .store import PageTable
from .vectors import VectorFile

_CHUNK_ROWS = 1 << 14  # vector rows scored per product: buffers of ~10 MB, which stay in cache
_SHAPE_STEP = 1 << 10  # smaller buffers are a multiple of this many rows
RERANK_PAGES = 512  # pages scored in bfloat16 after the candidate stage; see README for the trade-off
RESCORE_PAGES = 64  # the best of those (at least 4 k) rescored exactly


@dataclass(frozen=True)
class ScoredPage:
    page_id: int
    score: float


def page_scores(
    query: np.ndarray, table: PageTable, vectors: VectorFile, *, bfloat16: bool = False, chunk_rows: int = _CHUNK_ROWS
) -> np.ndarray:
    """MaxSim of `query` against every page of `table` (pages without vectors score 0), exact in
    float32 unless `bfloat16` (inputs and products rounded to bfloat16: an error of about 1e-3 per
    query token). Reads about `chunk_rows` rows at a time, so memory stays bounded."""
    import torch  # here, not at import: commands that never search (info, remove) stay light

    bfloat16 = bfloat16 and bfloat16_is_native()  # emulated bf16 products are ~6x slower than float32
    scores = np.zeros(len(table), dtype=np.float32)
    counts = np.asarray(table.counts, dtype=np.int64)
    if len(table) == 0 or not counts.any():
        return scores
    dtype = torch.bfloat16 if bfloat16 else torch.float32
    query_t = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)).to(dtype)
    # Buffers (zeroed: stale garbage could hold slow denormals) of a few fixed sizes, see below.
    rows = int(max(min(-(-int(counts.sum()) // _SHAPE_STEP) * _SHAPE_STEP, chunk_rows), counts.max()))
    stored = np.zeros((rows, vectors.dim), dtype=vectors.stored_dtype)
    raw = torch.from_numpy(stored)
    if vectors.vector_type == "bfloat16":
        raw = raw.view(torch.bfloat16)  # the file's uint16 bits are bfloat16 values
    block = raw if raw.dtype == dtype else torch.zeros((rows, vectors.dim), dtype=dtype)
    # float16 reaches bfloat16 through float32: torch's direct conversion is scalar (6x slower)
    widened = torch.zeros((rows, vectors.dim), dtype=torch.float32) if raw.dtype == torch.float16 and bfloat16 else None
    products = torch.empty((len(query_t), rows), dtype=dtype)
    similarities = torch.empty((len(query_t), rows), dtype=torch.float32) if bfloat16 else products
    ends = np.cumsum(counts)
    start = 0
    while start < len(table):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + chunk_rows, "right")))
        part = counts[start:stop]
        n = int(part.sum())
        if n:
            firsts = np.cumsum(part) - part
            vectors.gather(table.offsets[start:stop], part, stored[:n])
            if widened is not None:
                widened[:n].copy_(raw[:n])
                block[:n].copy_(widened[:n])
            elif block is not raw:
                block[:n].copy_(raw[:n])
            # Every product has the buffer's full shape (rows past n are stale and ignored): oneDNN
            # keeps a compiled kernel per shape, and one shape per chunk length held ~180 MB at 10k pages.
            torch.mm(query_t, block.T, out=products)
            if bfloat16:
                similarities[:, :n].copy_(products[:, :n])
            present = part > 0
            scores[start:stop][present] = np.maximum.reduceat(similarities[:, :n].numpy(), firsts[present], axis=1).sum(
                axis=0
            )
        start = stop
    return scores


@functools.lru_cache(maxsize=1)
def bfloat16_is_native() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Without it (AVX2-only
    CPUs) torch emulates bfloat16 products, slower than float32 ones (benchmarks/RESULTS.md,
    "Scoring"), so search multiplies in float32 there."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def brute_force_top_k(
    query: np.ndarray, k: int, table: PageTable, vectors: VectorFile, chunk_rows: int = _CHUNK_ROWS
) -> list[ScoredPage]:
    """The k pages of `table` with the highest MaxSim, by scoring every page exactly (best first;
    ties: lower page id)."""
    if k < 1 or len(table) == 0:
        return []
    return _ranked(page_scores(query, table, vectors, chunk_rows=chunk_rows), table, k)


def two_stage_top_k(
    query: np.ndarray,
    k: int,
    table: PageTable,
    candidates: CandidateIndex,
    vectors: VectorFile,
    rerank: int = RERANK_PAGES,
) -> list[ScoredPage]:
    """The best k pages among the `rerank` (at least 4 k) pages of `table` that the candidate index
    scores highest: those are scored in bfloat16, and the best RESCORE_PAGES (at least 4 k) of them
    exactly, which ranks them."""
    if k < 1 or len(table) == 0:
        return []
    approximate = candidates.approximate_scores(query, table.page_ids)
    reranked = table.subset(_best(approximate, min(len(table), max(rerank, 4 * k))))
    rescore = min(len(reranked), max(RESCORE_PAGES, 4 * k))
    if rescore < len(reranked):
        reranked = reranked.subset(_best(page_scores(query, reranked, vectors, bfloat16=True), rescore))
    return brute_force_top_k(query, k, reranked, vectors)


def _best(scores: np.ndarray, count: int) -> np.ndarray:
    """A mask of the `count` highest of `scores`."""
    chosen = np.zeros(len(scores), dtype=bool)
    chosen[np.argpartition(-scores, count - 1)[:count]] = True
    return chosen


def _ranked(scores: np.ndarray, table: PageTable, k: int) -> list[ScoredPage]:
    """The k best of `scores` (one per page of `table`), best first, ties broken by the lower page id."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= kth)
    else:
        keep = np.arange(len(scores))
    order = np.lexsort((table.page_ids[keep], -scores[keep]))
    return [ScoredPage(int(table.page_ids[p]), float(scores[p])) for p in keep[order[:k]]]
