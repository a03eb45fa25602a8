"""Run fast-plaid (lightonai's PLAID engine) on a cached synthetic corpus; print one JSON object.

Runs under fast-plaid's own virtualenv (it pins its own torch), started by index_search.py:

    /work/venvs/fastplaid/bin/python benchmarks/fastplaid_runner.py build --corpus C.f16 \\
        --offsets O.npy --pages 1000 --index DIR
    /work/venvs/fastplaid/bin/python benchmarks/fastplaid_runner.py search --corpus C.f16 \\
        --offsets O.npy --pages 1000 --index DIR --queries Q.npy

`build` reports seconds and peak RSS; `search` opens the built index in a fresh process and
reports open time, per-query latencies, the top-10 page numbers of each query, RssAnon growth
(from opening and searching) and peak RSS. Only numpy, torch and fast_plaid are imported here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from fast_plaid import search as fast_plaid_search
from process_memory import peak_rss_bytes, rss_anon_bytes


def load_pages(corpus: Path, offsets_file: Path, pages: int, dim: int) -> list[torch.Tensor]:
    offsets = np.load(offsets_file)[: pages + 1]
    vectors = np.memmap(corpus, dtype=np.float16, mode="r", shape=(int(offsets[-1]), dim))
    return [torch.from_numpy(np.asarray(vectors[offsets[i] : offsets[i + 1]], dtype=np.float32)) for i in range(pages)]


def build(args: argparse.Namespace) -> dict:
    documents = load_pages(args.corpus, args.offsets, args.pages, args.dim)
    started = time.perf_counter()
    index = fast_plaid_search.FastPlaid(index=str(args.index), device="cpu")
    index.create(documents_embeddings=documents, nbits=args.nbits, kmeans_niters=args.kmeans_niters)
    seconds = time.perf_counter() - started
    return {"build_s": seconds, "peak_rss_bytes": peak_rss_bytes()}


def search(args: argparse.Namespace) -> dict:
    queries = torch.from_numpy(np.load(args.queries).astype(np.float32))
    baseline = rss_anon_bytes()
    started = time.perf_counter()
    index = fast_plaid_search.FastPlaid(index=str(args.index), device="cpu")
    opened = time.perf_counter() - started
    options = {
        "top_k": 10,
        "n_ivf_probe": args.n_ivf_probe,
        "n_full_scores": args.n_full_scores,
        "show_progress": False,
        "n_processes": 1,
    }
    for query in queries[: args.warmup]:  # first searches load the index's files
        index.search(queries_embeddings=query[None], **options)
    latencies, results = [], []
    for query in queries:  # all, or until --budget seconds were spent (at least 5 queries)
        started = time.perf_counter()
        found = index.search(queries_embeddings=query[None], **options)[0]
        latencies.append(time.perf_counter() - started)
        results.append([int(page) for page, _ in found])
        if args.budget is not None and sum(latencies) > args.budget and len(latencies) >= 5:
            break
    return {
        "open_s": opened,
        "latencies_s": latencies,
        "results": results,
        "rss_anon_growth_bytes": rss_anon_bytes() - baseline,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "search"])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--offsets", type=Path, required=True)
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nbits", type=int, default=4)
    parser.add_argument("--kmeans-niters", type=int, default=4)
    parser.add_argument("--n-ivf-probe", type=int, default=8)
    parser.add_argument("--n-full-scores", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, help="seconds of timed queries (at least 5 queries)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = build(args) if args.action == "build" else search(args)
    report.update(torch=torch.__version__, threads=torch.get_num_threads())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
