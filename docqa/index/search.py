"""Scoring: exact MaxSim late interaction, by brute force or over the candidate stage's best pages.

A page's score is MaxSim: the sum over query tokens of the best dot product with any of the page's
vectors. `brute_force_top_k` scores every page of a page table (exact). `two_stage_top_k` asks the
candidate index (candidates.py) for the pages with the best approximate scores and reranks those with
exact MaxSim: the scores it returns are exact, the set of pages considered is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .candidates import CandidateIndex
from .store import PageTable
from .vectors import VectorFile

_SCORE_CHUNK_ROWS = 1 << 16  # vector rows scored per matmul (32 MB as float32): bounds memory while scoring
RERANK_PAGES = 512  # pages reranked exactly after the candidate stage (at least 4 k); see README for the trade-off


@dataclass(frozen=True)
class ScoredPage:
    page_id: int
    score: float


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
        scores[start:stop] = maxsim_block(query, block, np.array([len(page) for page in pages[start:stop]]))
        start = stop
    return scores


def maxsim_block(query: np.ndarray, block: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """MaxSim of `query` against pages stored one after another in `block` (`counts` rows each)."""
    scores = np.zeros(len(counts), dtype=np.float32)
    present = counts > 0
    if not present.any():
        return scores
    similarities = query @ block.T  # (query tokens, rows)
    starts = (np.cumsum(counts) - counts)[present]
    scores[present] = np.maximum.reduceat(similarities, starts, axis=1).sum(axis=0)
    return scores


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
        counts = table.counts[start:stop]
        scores[start:stop] = maxsim_block(query, vectors.read_block(table.offsets[start:stop], counts), counts)
        start = stop
    return _ranked(scores, table, k)


def two_stage_top_k(query: np.ndarray, k: int, table: PageTable, candidates: CandidateIndex,
                    vectors: VectorFile, rerank: int = RERANK_PAGES) -> list[ScoredPage]:
    """The best k pages among the `rerank` (at least 4 k) pages of `table` that the candidate index
    scores highest, ranked by exact MaxSim."""
    if k < 1 or len(table) == 0:
        return []
    query = np.ascontiguousarray(query, dtype=np.float32)
    approximate = candidates.approximate_scores(query, table.page_ids)
    count = min(len(table), max(rerank, 4 * k))
    chosen = np.zeros(len(table), dtype=bool)
    chosen[np.argpartition(-approximate, count - 1)[:count]] = True
    return brute_force_top_k(query, k, table.subset(chosen), vectors)


def _ranked(scores: np.ndarray, table: PageTable, k: int) -> list[ScoredPage]:
    """The k best of `scores` (one per page of `table`), best first, ties broken by the lower page id."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= kth)
    else:
        keep = np.arange(len(scores))
    order = np.lexsort((table.page_ids[keep], -scores[keep]))
    return [ScoredPage(int(table.page_ids[p]), float(scores[p])) for p in keep[order[:k]]]
