"""The candidate stage measures its own recall: pseudo-queries drawn from the index's own pages,
searched with the two-stage search at a few rerank depths and by brute force.

A user never sees what an approximate search misses; this is how the index knows. When the
candidate index is trained (and retrained), `estimate` draws `QUERIES` pseudo-queries: each holds
noisy copies of `PAGE_TOKENS` vectors of one random page (noise of the size the benchmark's
queries carry: cosine ~0.7 to the page vector) and `OTHER_TOKENS` vectors of random other pages
(as generic and off-topic query tokens hit background and other topics). Both searches run over a
random sample of at most `SAMPLE_PAGES` pages, the rerank depth scaled to the sample's share, so the
cost is bounded at any index size. The smallest of the depths tried (`DEPTH_MULTIPLES` times the
default depth) whose estimated recall@10
reaches `TARGET_RECALL` becomes the index's default rerank depth (the deepest, when none does);
the estimate at that depth is kept with the index (measured again when the postings are saved
after the index has grown 4-fold since) and shown by `IndexStorage.search_stats()`.
"""

from __future__ import annotations

import numpy as np

from .candidates import RecallEstimate

QUERIES = 12
PAGE_TOKENS = 12
OTHER_TOKENS = 6
QUERY_NOISE = 1.0  # per dimension, times the vectors' norm / sqrt(dim)
SAMPLE_PAGES = 1024  # bounds the estimate's cost: ~3 s on a busy 2-core machine
DEPTH_MULTIPLES = (1, 2, 3)  # rerank depths tried: these times search.RERANK_PAGES
TARGET_RECALL = 0.97  # the target is 0.95: the margin covers the estimate's own noise
REESTIMATE_GROWTH = 4  # measured again when the postings are saved after the index has grown 4-fold
K = 10


def pseudo_queries(pages: list[np.ndarray], rng: np.random.Generator, count: int = QUERIES) -> list[np.ndarray]:
    """Queries made of noisy copies of one page's vectors plus vectors of other pages."""
    queries = []
    for _ in range(count):
        source = pages[int(rng.integers(len(pages)))]
        own = source[rng.choice(len(source), min(PAGE_TOKENS, len(source)), replace=False)]
        others = [pages[int(rng.integers(len(pages)))] for _ in range(OTHER_TOKENS)]
        other = np.stack([page[int(rng.integers(len(page)))] for page in others])
        tokens = np.concatenate([own, other]).astype(np.float32)
        scale = float(np.linalg.norm(tokens, axis=1).mean()) / np.sqrt(tokens.shape[1])
        tokens[: len(own)] += rng.standard_normal(own.shape).astype(np.float32) * np.float32(QUERY_NOISE * scale)
        queries.append(tokens)
    return queries


def estimate(table, candidates, vectors, seed: int = 0) -> RecallEstimate | None:
    """Estimate recall@10 of the two-stage search at the depths tried and choose the default depth
    (None when the index is too small for the estimate to mean anything)."""
    from . import search
    from .search import brute_force_top_k, two_stage_top_k

    rng = np.random.default_rng(seed)
    if len(table) < 4 * K:
        return None
    share = min(1.0, SAMPLE_PAGES / len(table))
    sample = (
        table.subset(np.sort(rng.choice(len(table), min(len(table), SAMPLE_PAGES), replace=False)))
        if share < 1
        else table
    )
    source_pages = (
        vectors.read(sample.offsets[:512], sample.counts[:512])
        if len(sample) > 512
        else vectors.read(sample.offsets, sample.counts)
    )
    queries = pseudo_queries([page for page in source_pages if len(page)], rng)
    exact = [brute_force_top_k(query, K, sample, vectors) for query in queries]
    measured = []
    for depth in [multiple * search.RERANK_PAGES for multiple in DEPTH_MULTIPLES]:
        scaled = max(4 * K, int(round(depth * share)))
        recalls, firsts = [], []
        for query, truth in zip(queries, exact):
            found = two_stage_top_k(query, K, sample, candidates, vectors, rerank=scaled)
            kth = truth[-1].score if truth else 0.0
            recalls.append(sum(1 for hit in found if hit.score >= kth - 1e-4) / max(1, len(truth)))
            firsts.append(bool(found) and found[0].score >= truth[0].score - 1e-4)
        measured.append((depth, float(np.mean(recalls)), float(np.mean(firsts))))
        if measured[-1][1] >= TARGET_RECALL:
            break
    depth, recall, top1 = measured[-1]
    return RecallEstimate(
        rerank=depth, recall_at_10=recall, top1=top1, queries=len(queries), pages=len(table), sample_pages=len(sample)
    )
