"""Search benchmark: docqa's index modes against brute force and fast-plaid on one synthetic corpus.

The corpus (benchmarks/synthetic_corpus.py) has the structure of real page vectors: topic
clusters, a third of each page near shared background directions, near-duplicate pages, queries
with generic tokens. Its parameters, the machine and one row per (method, pages) are printed:
build speed, open time, p50/p95 search latency (query encoding excluded: queries are given as
vectors), recall@10 against exact MaxSim, anonymous memory per page while serving (RssAnon after
opening and searching, less the process's RssAnon before opening; memory-mapped files are not
counted) and disk bytes per page. Each method runs in a fresh process so memory is its own; docqa's
vector file is read once before its queries are timed (as on a server that has been running).

Methods:
- docqa:<mode>  DocIndex.add_embeddings / search_embeddings, with the mode's creation options;
- brute         numpy MaxSim over every page, fp32 matmul over chunks of the memory-mapped fp16
                vectors (exact: recall 1.0 by construction, a check of the ground truth);
- before        docqa's index before issue 7 (every vector in one FAISS flat index, searched with a
                per-token threshold bound), its code extracted from git (--before-ref) and driven
                through its internals; also used for the structured-vs-iid check printed first;
- fast-plaid    lightonai's PLAID engine, in its own virtualenv (--fastplaid-python), run by
                benchmarks/fastplaid_runner.py; its build is cached (hours at 100k on 2 cores).

    python benchmarks/index_search.py --sizes 1000 10000
    python benchmarks/index_search.py --sizes 1000 10000 100000 --json > search.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
from process_memory import peak_rss_bytes, rss_anon_bytes  # noqa: E402
from synthetic_corpus import (  # noqa: E402
    CorpusFile,
    CorpusParams,
    QueryParams,
    cache_dir,
    cached_corpus,
    cached_ground_truth,
    families,
    recall_at_k,
    sweep,
)

PAGES_PER_DOCUMENT = 10
WARMUP_QUERIES = 2
# docqa index modes: name -> options given to DocIndex.open(path, create=True, options=...).
# Others on the command line: --mode NAME:key=value,key=value
DOCQA_MODES: dict[str, dict] = {
    "fast": {"mode": "fast"},
    "fast, float16": {"mode": "fast", "vector_type": "float16"},
    "fast, pool 2": {"mode": "fast", "pool_factor": 2},
    "exact": {"mode": "exact"},
}
FASTPLAID_PYTHON = "/work/venvs/fastplaid/bin/python"
# The last commit with the index from before issue 7 (one FAISS flat index of every vector, searched
# with a per-token threshold bound): its docqa/ is extracted with `git archive` for the "before" row.
BEFORE_REF = "95c66cf"


# --- measurements inside a method's own process ------------------------------------------------


def folder_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def open_corpus(params: dict, path: str, pages: int, offsets: list[int]) -> CorpusFile:
    corpus_params = CorpusParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    vectors = np.memmap(path, dtype=np.float16, mode="r", shape=(offsets[-1], corpus_params.dim))
    return CorpusFile(corpus_params, Path(path), pages, np.asarray(offsets, np.int64), vectors)


def time_queries(
    search, queries: np.ndarray, budget_s: float | None = None, minimum: int = 5
) -> tuple[list[float], list[list[int]]]:
    """Warm up, then time `search(query) -> page numbers` per query (all, or until the budget)."""
    for query in queries[:WARMUP_QUERIES]:
        search(query)
    latencies, results = [], []
    spent = 0.0
    for query in queries:
        started = time.perf_counter()
        results.append(search(query))
        latencies.append(time.perf_counter() - started)
        spent += latencies[-1]
        if budget_s is not None and spent > budget_s and len(latencies) >= minimum:
            break
    return latencies, results


def brute_serve(corpus_args: tuple, queries: np.ndarray, budget_s: float) -> dict:
    """Exact MaxSim over every page: fp32 matmul per chunk of the memory-mapped fp16 rows."""
    baseline = rss_anon_bytes()
    started = time.perf_counter()
    corpus = open_corpus(*corpus_args)
    opened = time.perf_counter() - started
    offsets, chunk_rows = corpus.offsets, 1 << 16
    bounds = [0]
    while bounds[-1] < corpus.pages:
        stop = int(np.searchsorted(offsets, offsets[bounds[-1]] + chunk_rows, side="right")) - 1
        bounds.append(min(corpus.pages, max(stop, bounds[-1] + 1)))

    def search(query: np.ndarray) -> list[int]:
        scores = np.empty(corpus.pages, np.float32)
        query_t = np.ascontiguousarray(query.T, dtype=np.float32)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            low, high = int(offsets[start]), int(offsets[stop])
            similarities = np.asarray(corpus.vectors[low:high], dtype=np.float32) @ query_t
            scores[start:stop] = np.maximum.reduceat(similarities, offsets[start:stop] - low, axis=0).sum(axis=1)
        top = np.argpartition(-scores, min(10, len(scores) - 1))[:10]
        return top[np.argsort(-scores[top])].tolist()

    latencies, results = time_queries(search, queries, budget_s)
    return {
        "open_s": opened,
        "latencies_s": latencies,
        "results": results,
        "rss_anon_growth_bytes": rss_anon_bytes() - baseline,
        "peak_rss_bytes": peak_rss_bytes(),
        "disk_bytes": int(offsets[-1]) * corpus.params.dim * 2,
    }


def old_docqa(root: str):
    """The pre-issue-7 index modules, imported from an extracted old checkout (call only in a fresh
    process: it must be the first docqa that process imports)."""
    sys.path.insert(0, root)
    import docqa.index.search as search
    import docqa.index.store as store
    import docqa.index.vectors as vectors

    assert Path(search.__file__).is_relative_to(root), "the old docqa must be imported before any other"
    return search, store, vectors


def _before_parts(old, corpus: CorpusFile):
    search, store, vectors = old
    table = store.PageTable(
        page_ids=np.arange(corpus.pages, dtype=np.int64),
        offsets=corpus.offsets[:-1].copy(),
        counts=np.diff(corpus.offsets),
    )
    return table, vectors.VectorFile(corpus.path.parent, corpus.params.dim, corpus.path.name)


def before_build(root: str, corpus_args: tuple, folder: str) -> dict:
    """The pre-issue-7 candidate index: every vector in one FAISS fp16 flat index, saved."""
    old = old_docqa(root)
    corpus = open_corpus(*corpus_args)
    table, vectors = _before_parts(old, corpus)
    started = time.perf_counter()
    tokens = old[0].TokenIndex.build(table, vectors, epoch=0)
    tokens.save(Path(folder))
    return {
        "build_s": time.perf_counter() - started,
        "peak_rss_bytes": peak_rss_bytes(),
        "disk_bytes": folder_bytes(Path(folder)) + int(corpus.offsets[-1]) * corpus.params.dim * 2,
    }


def before_serve(root: str, corpus_args: tuple, folder: str, queries: np.ndarray, budget_s: float) -> dict:
    old = old_docqa(root)
    baseline = rss_anon_bytes()
    corpus = open_corpus(*corpus_args)
    started = time.perf_counter()
    tokens = old[0].TokenIndex.load(Path(folder), corpus.params.dim)
    table, vectors = _before_parts(old, corpus)
    opened = time.perf_counter() - started

    def search(query: np.ndarray) -> list[int]:
        return [hit.page_id for hit in old[0].exact_top_k(query, 10, table, tokens, vectors)]

    latencies, results = time_queries(search, queries, budget_s)
    return {
        "open_s": opened,
        "latencies_s": latencies,
        "results": results,
        "rss_anon_growth_bytes": rss_anon_bytes() - baseline,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def before_checkout(ref: str) -> str:
    """docqa/ as it was at `ref`, extracted once into the cache folder; returns the folder."""
    root = cache_dir() / f"docqa-{ref}"
    if not (root / "docqa" / "index" / "search.py").exists():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "docqa"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return str(root)


def _before_row(root: str, corpus_args: tuple, queries: np.ndarray, budget_s: float) -> tuple[dict, str]:
    folder = Path(tempfile.mkdtemp(prefix="before-", dir=cache_dir()))
    try:
        built = in_fresh_process(before_build, root, corpus_args, str(folder))
        served = in_fresh_process(before_serve, root, corpus_args, str(folder), queries, budget_s)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {**built, **served}, "per-token FAISS threshold search"


def docqa_build(corpus_args: tuple, folder: str, options: dict) -> dict:
    """Add the corpus as documents of PAGES_PER_DOCUMENT pages through the public API, timing the
    whole loop: the pages go in as the corpus stores them (float16 views of its file, converted by
    add_embeddings), so no work of the loop's own overlaps the index's background cell assignment."""
    from docqa.api import DocIndex

    corpus = open_corpus(*corpus_args)
    index = DocIndex.open(folder, create=True, options=options)
    started = time.perf_counter()
    with index.bulk():  # one write session, synced to disk at its end (each document still commits alone)
        for first in range(0, corpus.pages, PAGES_PER_DOCUMENT):
            pages = [corpus.page(n) for n in range(first, min(corpus.pages, first + PAGES_PER_DOCUMENT))]
            index.add_embeddings(_document_path(first), pages)
    index.close()
    return {
        "build_s": time.perf_counter() - started,
        "peak_rss_bytes": peak_rss_bytes(),
        "disk_bytes": folder_bytes(Path(folder)),
    }


def _document_path(first_page: int) -> str:
    return f"doc-{first_page:07d}.pdf"


def docqa_serve(
    folder: str, queries: np.ndarray, exact: bool, budget_s: float, rerank: int | None = None, warm: bool = True
) -> dict:
    import torch  # noqa: F401  search's products run in torch; like docqa, a library, not the index

    from docqa.api import DocIndex  # imported before the baseline: the library is not the index

    baseline = rss_anon_bytes()
    started = time.perf_counter()
    index = DocIndex.open(folder)
    opened = time.perf_counter() - started
    if warm:
        warm_page_cache(index.vectors.path)

    def search(query: np.ndarray) -> list[int]:
        hits = index.search_embeddings(nonzero_rows(query), k=10, exact=exact, rerank=rerank)
        return [int(Path(hit.path).stem.split("-")[1]) + hit.page - 1 for hit in hits]

    latencies, results = time_queries(search, queries, budget_s)
    stats = index.storage.search_stats() if hasattr(index.storage, "search_stats") else {}
    return {
        "open_s": opened,
        "latencies_s": latencies,
        "results": results,
        "recall_estimate": stats.get("recall_estimate"),
        "rerank": stats.get("rerank"),
        "rss_anon_growth_bytes": rss_anon_bytes() - baseline,
        "peak_rss_bytes": peak_rss_bytes(),
    }


CAP_BASE_BYTES = 1 << 30
CAP_PER_PAGE_BYTES = 24 << 10


def capped_serve(folder: Path, queries: np.ndarray, budget_s: float, pages: int) -> dict | None:
    """docqa_serve inside a memory cgroup of 1 GB + 24 KB per page that counts page cache, the
    index's files evicted from the page cache first, the vector file not pre-read (None, with the
    reason printed, where no cgroup can be made)."""
    import memory_cap

    reason = memory_cap.why_not()
    if reason is not None:
        raise RuntimeError(f"capped run skipped: {reason}")
    queries_file = cache_dir() / f"capped-queries-{os.getpid()}.npy"
    np.save(queries_file, queries)
    memory_cap.evict(list(Path(folder).iterdir()))
    limit = CAP_BASE_BYTES + CAP_PER_PAGE_BYTES * pages
    code = (
        f"import sys, json, numpy as np; sys.path[:0] = {[str(ROOT), str(ROOT / 'benchmarks')]!r};"
        "import index_search as b;"
        f"print(json.dumps(b.docqa_serve({str(folder)!r}, np.load({str(queries_file)!r}), False, {budget_s!r},"
        " warm=False)))"
    )
    try:
        done = memory_cap.run_capped([sys.executable, "-c", code], limit, "docqa-capped")
    finally:
        queries_file.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"capped search failed (rc {done.returncode}): {done.stderr.strip()[-1500:]}")
    served = json.loads(done.stdout.strip().splitlines()[-1])
    served["limit_bytes"] = limit
    return served


def nonzero_rows(query: np.ndarray) -> np.ndarray:
    """A query without its padding (queries of fewer tokens are padded with zero rows, which add 0
    to every page's MaxSim)."""
    return query[np.abs(query).sum(axis=1) > 0]


def warm_page_cache(path: Path) -> None:
    """Read a file once, so searches are timed as on a server that has been running (its memory-
    mapped vectors in the OS page cache, which is not anonymous memory)."""
    with open(path, "rb", buffering=0) as handle:
        while handle.read(1 << 24):
            pass


def in_fresh_process(function, *args) -> dict:
    """Run a top-level function in a new interpreter (its memory is its own); return its result."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


# --- fast-plaid, in its own virtualenv -------------------------------------------------------------
def fastplaid(python: str, corpus: CorpusFile, queries_file: Path, rebuild: bool, budget_s: float) -> dict:
    runner = [python, str(ROOT / "benchmarks" / "fastplaid_runner.py")]
    common = [
        "--corpus",
        str(corpus.path),
        "--offsets",
        str(corpus.offsets_file()),
        "--pages",
        str(corpus.pages),
        "--dim",
        str(corpus.params.dim),
    ]
    folder = cache_dir() / f"fastplaid-{corpus.params.key()}-{corpus.pages}"
    stamp = folder / "docqa-bench-build.json"
    if rebuild or not stamp.exists():
        shutil.rmtree(folder, ignore_errors=True)
        built = _run_json([*runner, "build", *common, "--index", str(folder)])
        built["disk_bytes"] = folder_bytes(folder)
        built["built_at"] = time.strftime("%Y-%m-%d %H:%M")
        stamp.write_text(json.dumps(built))
        built["cached"] = False
    else:
        built = json.loads(stamp.read_text())
        built["cached"] = True
    served = _run_json(
        [*runner, "search", *common, "--index", str(folder), "--queries", str(queries_file), "--budget", str(budget_s)]
    )
    return {
        **served,
        "build_s": built["build_s"],
        "disk_bytes": built["disk_bytes"],
        "peak_rss_bytes": max(built["peak_rss_bytes"], served["peak_rss_bytes"]),
        "build_cached": built["cached"],
        "built_at": built.get("built_at"),
        "torch": served.get("torch"),
    }


def _fastplaid_row(args: argparse.Namespace, corpus: CorpusFile, queries_file: Path) -> tuple[dict, str]:
    measured = fastplaid(args.fastplaid_python, corpus, queries_file, args.rebuild_fastplaid, args.budget)
    note = f"torch {measured['torch']}, nbits 4, 8 probes"
    if measured["build_cached"]:
        note += f"; build from cache ({measured['built_at']})"
    return measured, note


def _run_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- why the structure matters -------------------------------------------------------------------
class _DepthRecorder:
    """Stands in for TokenIndex.faiss: forwards searches and records each per-token depth asked."""

    def __init__(self, index) -> None:
        self.index, self.depths = index, []

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, query: np.ndarray, depth: int):
        self.depths.append(depth)
        return self.index.search(query, depth)


def threshold_scan_check(root: str, corpus_args: tuple, query_params: QueryParams, queries: int) -> dict:
    """How far the pre-issue-7 threshold search must read each query token's FAISS ranking before
    its bound proves the top 10, on this corpus and on iid random unit vectors of the same page
    sizes (iid queries: 12 noisy tokens of one page, as here, plus 8 random tokens)."""
    old = old_docqa(root)
    old_search = old[0]
    corpus = open_corpus(*corpus_args)
    pages = corpus.pages
    small = QueryParams(**{**asdict(query_params), "queries": queries})
    structured_queries, _, _ = cached_ground_truth(corpus, small, log=None)
    rng = np.random.default_rng(corpus.params.seed)
    rows, dim = int(corpus.offsets[-1]), corpus.params.dim
    iid = rng.standard_normal((rows, dim), dtype=np.float32)
    iid /= np.linalg.norm(iid, axis=1, keepdims=True)
    iid_queries = rng.standard_normal(structured_queries.shape, dtype=np.float32)
    n_taken = query_params.page_tokens
    for row, source in enumerate(rng.integers(0, pages, queries)):
        low, high = corpus.offsets[source], corpus.offsets[source + 1]
        taken = iid[rng.choice(np.arange(low, high), n_taken, replace=False)]
        noise = rng.standard_normal(taken.shape, dtype=np.float32) * np.float32(query_params.query_noise / np.sqrt(dim))
        iid_queries[row, :n_taken] = taken + noise
    iid_queries /= np.linalg.norm(iid_queries, axis=2, keepdims=True)

    report: dict = {"pages": pages, "queries": queries, "vectors": rows}
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        iid_file = Path(tmp) / "iid.f16"
        iid.astype(np.float16).tofile(iid_file)
        iid_corpus = CorpusFile(
            corpus.params,
            iid_file,
            pages,
            corpus.offsets,
            np.memmap(iid_file, dtype=np.float16, mode="r", shape=(rows, dim)),
        )
        for name, data, query_set in (("structured", corpus, structured_queries), ("iid", iid_corpus, iid_queries)):
            table, vectors = _before_parts(old, data)
            tokens = old_search.TokenIndex.build(table, vectors, epoch=0)
            recorder = _DepthRecorder(tokens.faiss)
            tokens.faiss = recorder
            final_depths, read, scored = [], [], []
            real_maxsim = old_search.maxsim  # wrapped to count the pages it scores
            old_search.maxsim = lambda query, pages: (scored.append(len(pages)), real_maxsim(query, pages))[1]
            try:
                started = time.perf_counter()
                for query in query_set:
                    recorder.depths.clear()
                    old_search.exact_top_k(query, 10, table, tokens, vectors)
                    final_depths.append(recorder.depths[-1] / rows)
                    read.append(sum(recorder.depths) / rows)
                seconds = (time.perf_counter() - started) / len(query_set)
            finally:
                old_search.maxsim = real_maxsim
            report[name] = {
                "final_depth_share": float(np.median(final_depths)),
                "rankings_read": float(np.median(read)),
                "pages_scored_share": sum(scored) / (len(query_set) * pages),
                "seconds": seconds,
            }
            vectors.close()
    return report


# --- the run -------------------------------------------------------------------------------------
def parse_mode(text: str) -> tuple[str, dict]:
    name, _, options = text.partition(":")
    parsed: dict = {}
    for pair in filter(None, options.split(",")):
        key, _, value = pair.partition("=")
        parsed[key] = _literal(value)
    return name, parsed


def _literal(value: str):
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(int(memory) / 2**20, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def truth_shape(scores: np.ndarray, sources: np.ndarray) -> dict:
    """How peaked exact MaxSim is: what the approximate methods are asked to reproduce."""
    ranked = -np.sort(-scores, axis=1)
    at = lambda rank: float(ranked[:, min(rank, ranked.shape[1]) - 1].mean())  # noqa: E731
    return {
        "source_first": float(np.mean(np.argmax(scores, axis=1) == sources)),
        "rank1": at(1),
        "rank10": at(10),
        "rank100": at(100),
        "median": float(np.median(ranked)),
    }


def summarise(method: str, pages: int, measured: dict, scores: np.ndarray, note: str = "") -> dict:
    latencies = np.asarray(measured["latencies_s"])
    build_s = measured.get("build_s")
    return {
        "method": method,
        "pages": pages,
        "build_pages_per_s": pages / build_s if build_s else None,
        "build_s": build_s,
        "open_s": measured["open_s"],
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p95_ms": float(np.percentile(latencies, 95) * 1000),
        "queries_timed": len(latencies),
        "recall_at_10": recall_at_k(measured["results"], scores[: len(measured["results"])]),
        "top1": top1_agreement(measured["results"], scores),
        "rss_anon_kb_per_page": measured["rss_anon_growth_bytes"] / pages / 1024,
        "disk_kb_per_page": measured["disk_bytes"] / pages / 1024 if measured.get("disk_bytes") else None,
        "peak_rss_mb": measured["peak_rss_bytes"] / 2**20,
        "note": note,
    }


def top1_agreement(found: list[list[int]], scores: np.ndarray, tie: float = 1e-4) -> float:
    """Share of queries whose first result is the exact top-1 page (or ties with it)."""
    return float(np.mean([bool(pages) and row[pages[0]] >= row.max() - tie for row, pages in zip(scores, found)]))


def table(rows: list[dict]) -> str:
    def number(value, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    lines = [
        "| family | method | pages | build pages/s | open s | p50 ms | p95 ms | queries | recall@10 | top-1 "
        "| RssAnon KB/page | disk KB/page | peak RSS MB | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.get('family', '')} | {row['method']} | {row['pages']:,} | {number(row['build_pages_per_s'], ',.0f')} "
            f"| {row['open_s']:.3f} | {row['p50_ms']:,.1f} | {row['p95_ms']:,.1f} | {row['queries_timed']} "
            f"| {row['recall_at_10']:.3f} | {row['top1']:.0%} | {row['rss_anon_kb_per_page']:.1f} "
            f"| {number(row['disk_kb_per_page'], ',.1f')} | {row['peak_rss_mb']:,.0f} | {row['note']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="corpus sizes in pages")
    parser.add_argument(
        "--families",
        nargs="*",
        default=list(families()),
        help=f"corpus families (benchmarks/synthetic_corpus.py): {', '.join(families())}",
    )
    parser.add_argument("--sweep", type=int, default=0, help="also this many corpora with random generator parameters")
    parser.add_argument("--sweep-seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=50, help="queries per size (at least 50 for p95)")
    parser.add_argument(
        "--mode",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="a docqa index mode: DocIndex.open options (repeatable; default: the built-in modes)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["docqa", "brute", "fast-plaid"],
        choices=["docqa", "exact", "brute", "fast-plaid", "before"],
        help="exact = docqa's search_embeddings(exact=True) on the first mode's index",
    )
    parser.add_argument("--fastplaid-python", default=FASTPLAID_PYTHON)
    parser.add_argument(
        "--fastplaid-max-pages",
        type=int,
        default=10000,
        help="fast-plaid builds at ~11 pages/s here: larger sizes are skipped",
    )
    parser.add_argument(
        "--fastplaid-families",
        nargs="*",
        default=None,
        help="families fast-plaid runs on (default: all); its builds take 15-35 min per 10k pages here",
    )
    parser.add_argument("--rebuild-fastplaid", action="store_true", help="ignore a cached fast-plaid build")
    parser.add_argument("--before-ref", default=BEFORE_REF, help="git commit of the pre-issue-7 index")
    parser.add_argument(
        "--before-sizes",
        type=int,
        nargs="*",
        default=[1000, 2000],
        help="sizes for the pre-issue-7 index (seconds per query beyond 2k pages)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds of timed queries per slow method and size (at least 5 queries)",
    )
    parser.add_argument(
        "--sanity-pages", type=int, default=0, help="pages for the structured-vs-iid threshold-search check (0: skip)"
    )
    parser.add_argument(
        "--rerank",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also time the first mode's index with search_embeddings(rerank=N), one row each",
    )
    parser.add_argument(
        "--capped",
        action="store_true",
        help="also search the first mode's index inside a memory cgroup of 1 GB + 24 KB/page",
    )
    parser.add_argument("--keep-indexes", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    log = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print

    chosen = {**families(), **sweep(args.sweep, args.sweep_seed)}
    names = [name for name in chosen if name in args.families or name.startswith("sweep-")]
    modes = dict(parse_mode(text) for text in args.mode) or DOCQA_MODES
    report = {
        "machine": machine(),
        "pages_per_document": PAGES_PER_DOCUMENT,
        "modes": modes,
        "families": {},
        "rows": [],
        "skipped": [],
    }
    log(f"machine: {report['machine']}")
    log(f"cache: {cache_dir()}")
    for family in names:
        params, query_params = chosen[family]
        query_params = QueryParams(**{**asdict(query_params), "queries": args.queries})
        report["families"][family] = {"corpus": asdict(params), "queries": asdict(query_params)}
        log(f"[{family}] corpus parameters: {asdict(params)}")
        log(f"[{family}] query parameters: {asdict(query_params)}")
        run_family(args, family, params, query_params, modes, report, log)

    if args.json:
        print(json.dumps(report))
        return
    print()
    print(table(report["rows"]))
    for line in versus_fastplaid(report["rows"]):
        print(line)
    for line in report["skipped"]:
        print(f"skipped: {line}")


def run_family(
    args: argparse.Namespace,
    family: str,
    params: CorpusParams,
    query_params: QueryParams,
    modes: dict,
    report: dict,
    log,
) -> None:
    sizes = sorted(set(args.sizes) | (set(args.before_sizes) if "before" in args.methods else set()))
    full = cached_corpus(params, max(sizes), log=log)
    before_root = before_checkout(args.before_ref) if "before" in args.methods or args.sanity_pages else ""
    if args.sanity_pages:
        small = full.prefix(args.sanity_pages)
        small_args = (asdict(params), str(small.path), small.pages, small.offsets.tolist())
        report["threshold_scan"] = check = in_fresh_process(
            threshold_scan_check, before_root, small_args, query_params, 10
        )
        structured, iid = check["structured"], check["iid"]
        log(
            f"why structure matters: the pre-issue-7 threshold search over {check['pages']:,} pages"
            f" ({check['vectors']:,} vectors), median of {check['queries']} queries, reads each query"
            f" token's FAISS ranking to depth {structured['final_depth_share']:.2%} of all vectors and"
            f" MaxSim-scores {structured['pages_scored_share']:.0%} of the pages"
            f" ({structured['seconds'] * 1000:,.0f} ms/query) on this corpus; on iid random vectors"
            f" {iid['final_depth_share']:.2%} and {iid['pages_scored_share']:.0%}"
            f" ({iid['seconds'] * 1000:,.0f} ms/query)"
        )

    index_root = cache_dir() / "indexes"
    for pages in sizes:
        corpus = full.prefix(pages)
        queries, sources, scores = cached_ground_truth(corpus, query_params, log=log)
        report.setdefault("truth", {}).setdefault(family, {})[pages] = truth = truth_shape(scores, sources)
        log(
            f"[{family}] exact MaxSim at {pages:,} pages: the query's source page ranks first for"
            f" {truth['source_first']:.0%} of queries; mean score of rank 1 / 10 / 100 / median:"
            f" {truth['rank1']:.2f} / {truth['rank10']:.2f} / {truth['rank100']:.2f} / {truth['median']:.2f}"
        )
        queries_file = cache_dir() / f"queries-{params.key()}-{query_params.key()}-{pages}.npy"
        np.save(queries_file, queries)
        corpus_args = (asdict(params), str(corpus.path), pages, corpus.offsets.tolist())
        in_main = pages in args.sizes

        def add(method: str, run) -> None:
            """Measure one method (`run` returns its measurements and a note); a failure is reported, not fatal."""
            try:
                measured, note = run()
            except Exception as error:  # noqa: BLE001 - one method's failure must not lose the others' rows
                report["skipped"].append(
                    f"{family}: {method} at {pages:,} pages failed: {type(error).__name__}: {error}"
                )
                log(report["skipped"][-1])
                return
            if measured is not None:
                row = {"family": family, **summarise(method, pages, measured, scores, note)}
                report["rows"].append(row)
                log(table([row]).splitlines()[-1])

        if in_main and {"docqa", "exact"} & set(args.methods):
            for position, (name, options) in enumerate(modes.items()):
                folder = index_root / f"{family}-{name}-{pages}"
                built: dict = {}

                def build_and_serve(
                    exact: bool,
                    rerank: int | None = None,
                    capped: bool = False,
                    folder=folder,
                    options=options,
                    built=built,
                ):
                    if not built:
                        shutil.rmtree(folder, ignore_errors=True)
                        folder.parent.mkdir(parents=True, exist_ok=True)
                        built.update(in_fresh_process(docqa_build, corpus_args, str(folder), options))
                    if capped:
                        served = capped_serve(folder, queries, args.budget, pages)
                        if served is None:
                            return None, ""
                    else:
                        served = in_fresh_process(docqa_serve, str(folder), queries, exact, args.budget, rerank)
                    plain = not exact and rerank is None and not capped
                    notes = [json.dumps(options)] if options and plain else []
                    if served.get("recall_estimate") is not None and plain:
                        notes.append(
                            f"depth chosen {served['rerank']:,}, the index's own recall estimate there"
                            f" {served['recall_estimate']:.3f}"
                        )
                    note = "; ".join(notes)
                    return {**built, **served}, note

                if "docqa" in args.methods:
                    add(f"docqa:{name}", lambda: build_and_serve(False))
                if "exact" in args.methods and position == 0:
                    add(f"docqa:{name} --exact", lambda: build_and_serve(True))
                for rerank in args.rerank if position == 0 else []:
                    add(f"docqa:{name} --rerank {rerank}", lambda rerank=rerank: build_and_serve(False, rerank))
                if args.capped and position == 0:
                    add(f"docqa:{name}, capped 1 GB + 24 KB/page", lambda: build_and_serve(False, capped=True))
                if not args.keep_indexes:
                    shutil.rmtree(folder, ignore_errors=True)
        if in_main and "brute" in args.methods:
            add(
                "brute force (numpy fp32)",
                lambda: (
                    in_fresh_process(brute_serve, corpus_args, queries, args.budget),
                    "fp16 vectors memory-mapped, no build",
                ),
            )
        if in_main and "fast-plaid" in args.methods:
            if pages > args.fastplaid_max_pages:
                report["skipped"].append(f"{family}: fast-plaid at {pages:,} pages (above --fastplaid-max-pages)")
            elif args.fastplaid_families is not None and family not in args.fastplaid_families:
                report["skipped"].append(f"{family}: fast-plaid at {pages:,} pages (not in --fastplaid-families)")
            elif not Path(args.fastplaid_python).exists():
                report["skipped"].append(f"fast-plaid: no {args.fastplaid_python}")
            else:
                add("fast-plaid 1.7", lambda: _fastplaid_row(args, corpus, queries_file))
        if "before" in args.methods and pages in args.before_sizes:
            add(
                f"before issue 7 ({args.before_ref})",
                lambda: _before_row(before_root, corpus_args, queries, args.budget),
            )


def versus_fastplaid(rows: list[dict]) -> list[str]:
    """docqa's default mode against fast-plaid at each size both ran: the p50 ratio and both recalls."""
    lines = []
    for plaid in (row for row in rows if row["method"].startswith("fast-plaid")):
        ours = next(
            (
                row
                for row in rows
                if row["pages"] == plaid["pages"]
                and row.get("family") == plaid.get("family")
                and row["method"].startswith("docqa:")
            ),
            None,
        )
        if ours is not None:
            lines.append(
                f"[{plaid.get('family', '')}] {ours['method']} vs {plaid['method']} at {plaid['pages']:,} pages: p50 {ours['p50_ms']:,.1f} vs "
                f"{plaid['p50_ms']:,.1f} ms ({plaid['p50_ms'] / ours['p50_ms']:.1f}x faster), recall@10 "
                f"{ours['recall_at_10']:.3f} vs {plaid['recall_at_10']:.3f}"
            )
    return lines


if __name__ == "__main__":
    main()
