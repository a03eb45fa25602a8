"""The search benchmark's corpus generator keeps its promises: shapes, structure, determinism,
exact ground truth (the benchmark itself is not a test: benchmarks/index_search.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers.paths import REPO

sys.path.insert(0, str(REPO))

from benchmarks.synthetic_corpus import (  # noqa: E402
    CorpusParams,
    QueryParams,
    SyntheticCorpus,
    cached_corpus,
    exact_maxsim_scores,
    recall_at_k,
)

PARAMS = CorpusParams(seed=7)


@pytest.fixture(scope="module")
def corpus() -> SyntheticCorpus:
    return SyntheticCorpus(PARAMS)


def test_pages_are_unit_float_vectors_of_varying_length(corpus):
    pages = [corpus.page(n) for n in range(60)]
    counts = [len(vectors) for vectors, _ in pages]
    assert all(vectors.shape[1] == 128 and vectors.dtype == np.float32 for vectors, _ in pages)
    assert np.allclose(np.linalg.norm(np.concatenate([v for v, _ in pages]), axis=1), 1.0, atol=1e-5)
    assert PARAMS.tokens_min <= min(counts) < max(counts) <= PARAMS.tokens_max
    assert abs(np.mean(counts) - PARAMS.tokens_mean) < 30


def test_a_third_of_tokens_sit_on_a_few_shared_background_directions(corpus):
    vectors, background = map(np.concatenate, zip(*(corpus.page(n) for n in range(40))))
    assert 0.25 < background.mean() < 0.42
    nearest = (vectors[background] @ corpus.background.T).max(axis=1)
    assert nearest.min() > 0.9  # margins all look alike
    assert (vectors[~background] @ corpus.background.T).max(axis=1).mean() < 0.3


def test_near_duplicates_are_small_perturbations_of_an_earlier_page(corpus):
    duplicate = int(np.flatnonzero(corpus.source[:200] >= 0)[0])
    source = int(corpus.source[duplicate])
    assert source < duplicate
    copy, original = corpus.page(duplicate)[0], corpus.page(source)[0]
    assert len(copy) <= len(original)
    assert (copy @ original.T).max(axis=1).mean() > 0.99
    unrelated = corpus.page(duplicate + 1)[0] if corpus.source[duplicate + 1] < 0 else corpus.page(0)[0]
    assert (copy @ unrelated.T).max(axis=1).mean() < 0.9


def test_pages_are_deterministic_and_prefixes_of_bigger_corpora(corpus, tmp_path, monkeypatch):
    assert np.array_equal(corpus.page(5)[0], SyntheticCorpus(PARAMS).page(5)[0])
    assert not np.allclose(corpus.page(5)[0][:10], SyntheticCorpus(CorpusParams(seed=8)).page(5)[0][:10])
    monkeypatch.setenv("DOCQA_BENCH_CACHE", str(tmp_path))
    small = cached_corpus(PARAMS, 12, chunk=5, log=None)
    extended = cached_corpus(PARAMS, 20, chunk=7, log=None)  # appends pages 12..19 to the cache
    assert np.array_equal(extended.vectors[: len(small.vectors)], small.vectors)
    assert np.array_equal(extended.page(17), corpus.page(17)[0].astype(np.float16))


def test_queries_mix_page_tokens_with_shared_generic_tokens(corpus):
    query_params = QueryParams(queries=8)
    queries, sources = corpus.queries(30, query_params)
    assert queries.shape == (8, 20, 128) and sources.max() < 30
    generic = queries[:, 12:]
    assert (generic[0] * generic[1]).sum(axis=1).min() > 0.95  # nearly the same in every query
    assert (generic[0] @ corpus.background.T).max(axis=1).min() > 0.5  # they lean on the background


def test_exact_scores_match_a_direct_maxsim_and_rank_the_source_page_first(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCQA_BENCH_CACHE", str(tmp_path))
    stored = cached_corpus(PARAMS, 30, log=None)
    queries, sources = corpus.queries(30, QueryParams(queries=4))
    scores = exact_maxsim_scores(stored, queries, chunk_rows=1000)
    for q, query in enumerate(queries):
        direct = [(query @ stored.page(n).astype(np.float32).T).max(axis=1).sum() for n in range(30)]
        assert np.allclose(scores[q], direct, atol=1e-4)
    family = [_original(corpus, int(page)) for page in scores.argmax(axis=1)]
    assert family == [_original(corpus, int(page)) for page in sources]  # the page or a near-copy of it
    assert recall_at_k([list(np.argsort(-row)[:10]) for row in scores], scores) == 1.0
    assert recall_at_k([[0] * 10 for _ in scores], scores) <= 0.1


def _original(corpus: SyntheticCorpus, page: int) -> int:
    while corpus.source[page] >= 0:
        page = int(corpus.source[page])
    return page
