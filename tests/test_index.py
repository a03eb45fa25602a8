"""The candidate stage never changes the result: exact MaxSim top-k, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from docqa.index.search import TokenIndex, exact_top_k, maxsim
from docqa.index.store import PageTable
from docqa.index.vectors import VectorFile


def _normalised(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _build(tmp_path, rng, pages: int, dim: int = 16):
    vectors = VectorFile(tmp_path, dim)
    tokens = TokenIndex(dim)
    offsets, counts = [], []
    for _ in range(pages):
        page = _normalised(rng, int(rng.integers(3, 40)), dim).astype(np.float16)
        offset = vectors.append(page)
        tokens.add(offset, page.astype(np.float32))
        offsets.append(offset)
        counts.append(len(page))
    vectors.sync()
    table = PageTable(np.arange(100, 100 + pages), np.array(offsets), np.array(counts))
    return vectors, tokens, table


def _brute_force(query, vectors, table, k):
    pages = vectors.read(table.offsets, table.counts)
    scores = [float((query @ page.T).max(axis=1).sum()) for page in pages]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], table.page_ids[i]))[:k]
    return [(int(table.page_ids[i]), scores[i]) for i in order]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [1, 5, 30])
def test_exact_top_k_equals_brute_force(tmp_path, seed, k):
    rng = np.random.default_rng(seed)
    vectors, tokens, table = _build(tmp_path, rng, pages=int(rng.integers(1, 120)))
    query = _normalised(rng, int(rng.integers(1, 12)), 16)
    got = [(hit.page_id, hit.score) for hit in exact_top_k(query, k, table, tokens, vectors)]
    expected = _brute_force(query, vectors, table, k)
    assert [page for page, _ in got] == [page for page, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=0, atol=1e-4)


def test_exact_top_k_with_correlated_query_pages(tmp_path):
    """A query close to one page must find it first even among many distractors."""
    rng = np.random.default_rng(7)
    vectors, tokens, table = _build(tmp_path, rng, pages=200)
    target = vectors.read(table.offsets[42:43], table.counts[42:43])[0]
    query = target[:5] + 0.05 * _normalised(rng, 5, 16)
    hits = exact_top_k(query, 3, table, tokens, vectors)
    assert hits[0].page_id == table.page_ids[42]
    assert [h.page_id for h in hits] == [p for p, _ in _brute_force(query, vectors, table, 3)]


def test_removed_and_unowned_rows_are_never_returned(tmp_path):
    rng = np.random.default_rng(3)
    vectors, tokens, table = _build(tmp_path, rng, pages=30)
    keep = np.arange(len(table)) % 3 != 0  # a third of the pages deleted from the store
    live = PageTable(table.page_ids[keep], table.offsets[keep], table.counts[keep])
    query = _normalised(rng, 4, 16)
    got = [hit.page_id for hit in exact_top_k(query, 10, live, tokens, vectors)]
    assert set(got) <= set(live.page_ids.tolist())
    assert got == [p for p, _ in _brute_force(query, vectors, live, 10)]


def test_saved_index_round_trips_and_catches_up(tmp_path):
    rng = np.random.default_rng(5)
    vectors, tokens, table = _build(tmp_path, rng, pages=10)
    tokens.save(tmp_path)
    loaded = TokenIndex.load(tmp_path, 16)
    assert loaded is not None and loaded.size == tokens.size and loaded.high_water == tokens.high_water
    extra = _normalised(rng, 7, 16).astype(np.float16)
    offset = vectors.append(extra)
    vectors.sync()
    grown = PageTable(np.append(table.page_ids, 999), np.append(table.offsets, offset), np.append(table.counts, 7))
    loaded.catch_up(grown, vectors)
    assert loaded.size == tokens.size + 7
    hits = exact_top_k(extra[:3].astype(np.float32), 1, grown, loaded, vectors)
    assert hits[0].page_id == 999


def test_corrupt_saved_index_is_ignored(tmp_path):
    (tmp_path / "tokens.faiss").write_bytes(b"not an index")
    assert TokenIndex.load(tmp_path, 16) is None


def test_maxsim_matches_reference_loop():
    rng = np.random.default_rng(0)
    query = _normalised(rng, 6, 8)
    pages = [_normalised(rng, n, 8) for n in (1, 5, 33)]
    expected = [sum(max(float(q @ d) for d in page) for q in query) for page in pages]
    np.testing.assert_allclose(maxsim(query, pages), expected, rtol=1e-5)
