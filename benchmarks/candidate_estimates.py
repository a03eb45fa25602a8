"""Candidate-stage estimates on the corpus family (issue 16): the centroid walk alone, and the walk
raised by per-token hits from a 4-bit product-quantised index of every page vector.

The walk (docqa/index/candidates.py) scores each page, per query token, by the best cell centroid
it has. A vector unlike any centroid (a page's own content, as on forms and slide decks that share
most vectors with their template) gets the score of its centroid, far below its own, so the page
that holds the query's content can rank among the last. The second estimate looks each query token
up in a FAISS `IMI2x8,PQ32x4fs` index of all page vectors (the same inverted multi-index of 65,536
cells, 4-bit codes of 32 sub-vectors: 16 bytes per vector, plus its 8-byte page id) and raises the
walk's score of each page among the token's nearest `--per-token` vectors to the vector's coded
similarity. Both are then cut to their best R pages and those are scored exactly (search.py's
brute force over the subset), as two_stage_top_k does.

Printed per family: every generator parameter; build times; per depth R the share of the exact top
10 among the best R of each estimate, end-to-end recall@10 and top-1 agreement after the exact
rescoring, and the time of each part (one thread). `--sweep N` adds N corpora drawn by
synthetic_corpus.sweep at `--sweep-pages`.

    flock /tmp/docqa-cpu.lock python3 benchmarks/candidate_estimates.py --pages 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from index_search import docqa_build, nonzero_rows, top1_agreement  # noqa: E402
from synthetic_corpus import (  # noqa: E402
    CorpusParams,
    QueryParams,
    cache_dir,
    cached_corpus,
    cached_ground_truth,
    families,
    recall_at_k,
    sweep,
)

PQ_FACTORY = "IMI2x8,PQ32x4fs"  # page vectors are unit length, so L2 order is inner-product order


def build_pq(vectors: np.ndarray, ids: np.ndarray, nprobe: int) -> tuple[object, float, float]:
    """The product-quantised index of `vectors` (float32, unit rows) labelled `ids`; train and add seconds."""
    import faiss

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    index = faiss.index_factory(vectors.shape[1], PQ_FACTORY)
    index.train(vectors[rng.choice(len(vectors), min(len(vectors), 200_000), replace=False)])
    trained = time.perf_counter()
    index.add_with_ids(vectors, ids)
    index.nprobe = nprobe
    return index, trained - started, time.perf_counter() - trained


def raised_by_hits(per_token: np.ndarray, query: np.ndarray, pq, per_token_hits: int) -> np.ndarray:
    """`per_token` (tokens, rows) with each token's nearest coded vectors' similarities folded in (max)."""
    distances, rows = pq.search(query, per_token_hits)
    similarities = ((query * query).sum(axis=1)[:, None] + 1.0 - distances) / 2  # ||q - x||^2 with ||x|| = 1
    raised = per_token.copy()
    for token in range(len(query)):
        found = rows[token] >= 0
        np.maximum.at(raised[token], rows[token][found], similarities[token][found].astype(np.float32))
    return raised


def run_corpus(name: str, params: CorpusParams, query_params: QueryParams, pages: int, args) -> list[str]:
    import faiss

    from docqa.api import DocIndex
    from docqa.index.search import brute_force_top_k

    faiss.omp_set_num_threads(1)
    lines = [f"\n## {name}, {pages:,} pages", f"corpus: {asdict(params)}", f"queries: {asdict(query_params)}"]
    corpus = cached_corpus(params, pages)
    queries, _, truth = cached_ground_truth(corpus, query_params)
    queries, truth = queries[: args.queries], truth[: args.queries]
    folder = cache_dir() / f"estimates-{params.key()}-{pages}"
    if not folder.exists():
        corpus_args = (asdict(params), str(corpus.path), corpus.pages, corpus.offsets.tolist())
        built = docqa_build(corpus_args, str(folder), {})
        lines.append(f"docqa index built in {built['build_s']:.1f} s ({pages / built['build_s']:.0f} pages/s)")
    index = DocIndex.open(folder)
    storage = index.storage
    table, _, vector_name, _ = storage.store.snapshot()
    vectors = storage._vector_file(vector_name)
    candidates = storage.candidate_stage.caught_up(table, vectors)
    row_of_page = np.argsort(table.page_ids)  # documents went in in corpus order: page ids ascend with it
    corpus_page_of_row = np.argsort(row_of_page)
    sorted_ids = table.page_ids[row_of_page]

    counts = np.diff(corpus.offsets[: pages + 1])
    pq, train_s, add_s = build_pq(
        np.asarray(corpus.vectors[: corpus.offsets[pages]], dtype=np.float32),
        np.repeat(row_of_page, counts).astype(np.int64),
        args.nprobe,
    )
    lines.append(
        f"{PQ_FACTORY}: train {train_s:.1f} s, add {add_s:.1f} s ({corpus.offsets[pages] / add_s:,.0f} vectors/s, "
        f"{pages / add_s:,.0f} pages/s), {pq.ntotal * (pq.code_size + 8) / pages / 1024:.1f} KB per page (codes and ids); "
        f"nprobe {args.nprobe}, {args.per_token} hits per token"
    )
    found: dict[tuple[str, int], list[list[int]]] = {}
    share: dict[tuple[str, int], list[float]] = {}
    times: dict[str, list[float]] = {"walk": [], "hits": []}
    rescore_s: dict[int, list[float]] = {depth: [] for depth in args.depths}
    for query, exact in zip(queries, truth):
        query = np.ascontiguousarray(nonzero_rows(query), dtype=np.float32)
        started = time.perf_counter()
        walk = candidates.token_scores(query, table.page_ids)
        walked = time.perf_counter()
        raised = raised_by_hits(walk, query, pq, args.per_token)
        times["walk"].append(walked - started)
        times["hits"].append(time.perf_counter() - walked)
        top10 = set(np.argsort(-exact)[:10].tolist())
        for estimate, scores in (("walk", walk.sum(axis=0)), ("walk + hits", raised.sum(axis=0))):
            order = np.argsort(-scores, kind="stable")
            for depth in args.depths:
                best = order[:depth]
                share.setdefault((estimate, depth), []).append(len(top10 & set(corpus_page_of_row[best].tolist())) / 10)
                mask = np.zeros(len(table), dtype=bool)
                mask[best] = True
                started = time.perf_counter()
                hits = brute_force_top_k(query, 10, table.subset(mask), vectors)
                rescore_s[depth].append(time.perf_counter() - started)
                found.setdefault((estimate, depth), []).append(
                    np.searchsorted(sorted_ids, [hit.page_id for hit in hits]).tolist()  # the corpus page numbers
                )
    lines += [
        "",
        "| estimate | depth R | exact top 10 in its best R | recall@10 after exact rescoring | top-1 | ms: walk | ms: hits | ms: rescoring R |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for estimate, depth in share:
        result = found[(estimate, depth)]
        top1 = top1_agreement(result, truth)
        hits_ms = statistics.median(times["hits"]) * 1000 if estimate != "walk" else 0.0
        lines.append(
            f"| {estimate} | {depth:,} | {np.mean(share[(estimate, depth)]):.3f} | {recall_at_k(result, truth):.3f} | "
            f"{top1:.0%} | {statistics.median(times['walk']) * 1000:.1f} | {hits_ms:.1f} | "
            f"{statistics.median(rescore_s[depth]) * 1000:.1f} |"
        )
    index.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--families", nargs="+", default=list(families()), choices=list(families()))
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--depths", type=int, nargs="+", default=[256, 512, 1536, 4608])
    parser.add_argument("--nprobe", type=int, default=64, help="cells of the coded index visited per query token")
    parser.add_argument("--per-token", type=int, default=256, help="nearest coded vectors taken per query token")
    parser.add_argument("--sweep", type=int, default=0, help="also this many corpora drawn at random (seeded)")
    parser.add_argument("--sweep-pages", type=int, default=3000)
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {platform.machine()} {os.cpu_count()} cores, "
        f"load {load[0]:.1f}, one thread, `{' '.join(sys.argv[1:])}`",
        flush=True,
    )
    corpora = [(name, *families()[name], args.pages) for name in args.families]
    corpora += [(name, *drawn, args.sweep_pages) for name, drawn in sweep(args.sweep).items()] if args.sweep else []
    for name, params, query_params, pages in corpora:
        print("\n".join(run_corpus(name, params, query_params, pages, args)), flush=True)


if __name__ == "__main__":
    main()
