"""`docqa search` and `docqa eval`: parse, call the library, print."""

from __future__ import annotations

import argparse
import sys

from ..config import (
    MAX_RESULTS,
    MAX_RESULTS_WHY,
    lowered,
)
from ..errors import DocQAError
from .common import EXIT_OK, EXIT_PARTIAL, heatmap_folder, open_index, open_searchable, print_json
from .resident import resident_search


def search_command(args: argparse.Namespace) -> int:
    k, note = lowered("-k", args.k, MAX_RESULTS, MAX_RESULTS_WHY)
    if note is not None:
        print(f"docqa: note: {note}", file=sys.stderr)
    hits = resident_search(args)  # the resident process, when one serves this index (else None)
    if hits is None:
        index = open_searchable(args)
        if args.trust_remote_code:  # load it trusted; search reuses it
            from ..api import DocIndex

            if isinstance(index, DocIndex):
                index.retriever(device=args.device, engine=args.engine, trust_remote_code=True)
        hits = index.search(
            args.query,
            k=k,
            device=args.device,
            exact=args.exact,
            rerank=args.rerank,
            where=dict(args.where),
            path=args.path,
            engine=args.engine,
        )
    results = [hit.to_json() for hit in hits]
    failed = 0
    if args.heatmaps and hits:
        from ..answer.grounding import ground_hits, save_heatmap

        folder = heatmap_folder(args.heatmaps)
        retriever = index.retriever(device=args.device, engine=args.engine)
        for hit, result, grounding in zip(hits, results, ground_hits(retriever, args.query, hits)):
            if isinstance(grounding, DocQAError):
                failed += 1
                result.update(heatmap=None, box=None)
                print(f"docqa: no heatmap for {hit.path} page {hit.page}: {grounding}", file=sys.stderr)
                continue
            target = save_heatmap(folder, hit.rank, hit.path, hit.page, grounding)
            result.update(heatmap=str(target), **grounding.to_json())
    if args.json:
        print_json({"query": args.query, "results": results})
    elif not hits:
        print("no pages in the index yet", file=sys.stderr)
    else:
        for hit, result in zip(hits, results):
            heatmap = f"  heatmap {result['heatmap']}" if result.get("heatmap") else ""
            print(f"{hit.rank:3d}. {hit.score:8.3f}  {hit.path}  page {hit.page}{heatmap}")
            for other in hit.also_at:  # the same content at other paths
                print(f"{'':15}also at {other}")
    return EXIT_PARTIAL if failed else EXIT_OK


def eval_command(args: argparse.Namespace) -> int:
    from ..eval import evaluate_index, read_qrels

    qrels = read_qrels(args.qrels)
    report = evaluate_index(open_index(args.index), qrels, k=args.k, exact=args.exact, device=args.device)
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.index}: {len(qrels.queries)} queries from {report.qrels}, k={report.k}, nDCG gain = grade")
        print(
            f"{'mode':8} {'nDCG@5':>7} {'nDCG@10':>8} {f'recall@{report.k}':>10} {f'MRR@{report.k}':>8} {'p50 ms':>8}"
        )
        for mode, result in report.modes.items():
            m = result.metrics
            print(
                f"{mode:8} {m.ndcg_at_5:7.4f} {m.ndcg_at_10:8.4f} {m.recall_at_k:10.4f} {m.mrr_at_k:8.4f}"
                f" {result.latency_ms_p50:8.1f}"
            )
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
    return EXIT_PARTIAL if report.unmatched else EXIT_OK
