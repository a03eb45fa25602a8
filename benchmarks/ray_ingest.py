"""Ray ingest against a plain ingest of the same files: pages/s and Ray's overhead per page.

Builds a retriever checkpoint (tiny, or the real architecture with random weights), writes
--docs A4 PDFs of --pages pages, then ingests them into fresh indexes: once in this process
(what `docqa ingest` runs) and once per --encoders N on a local Ray (`--ray`). Ray is started once
(its start-up is printed apart, and one untimed 1-page Ray ingest warms its task workers); each
wall time covers the whole `DocIndex.ingest` call, model loads (in every new actor) included. Overhead per page = (Ray wall - plain wall) / pages, for the same work.

The driver commits every page itself, so it caps a cluster's throughput whatever the number of
GPUs: --driver-pages synthetic pages of --driver-vectors vectors (749 = ColQwen2 at edge 896) are
committed through the same facade (append, fsync, one transaction per 10-page document, candidate
index) to measure that ceiling.

    python benchmarks/ray_ingest.py --size real --edge 512 --docs 6 --pages 4 --encoders 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # docqa, and the checkpoint factories of the tests
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # Ray workers

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers.documents import make_pdf  # noqa: E402
from helpers.tiny_retrievers import build_retriever_checkpoint  # noqa: E402

from docqa.api import DocIndex  # noqa: E402
from docqa.ingest.local import commit_job  # noqa: E402
from docqa.ingest.plan import PlannedFile  # noqa: E402
from docqa.ingest.report import IngestReport  # noqa: E402


def timed_ingest(index_dir: Path, corpus: Path, **settings) -> tuple[float, int]:
    started = time.monotonic()
    report = DocIndex.open(index_dir, create=True).ingest([corpus], **settings)
    assert report.failed == 0, report.failures
    return time.monotonic() - started, report.pages_added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--edge", type=int, default=512)
    parser.add_argument("--docs", type=int, default=6)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--encoders", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--plain-threads",
        type=int,
        nargs="+",
        default=[os.cpu_count() or 1],
        help="torch threads of the plain ingest, one run each (the first is the baseline)",
    )
    parser.add_argument("--driver-pages", type=int, default=200)
    parser.add_argument("--driver-vectors", type=int, default=749)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = str(build_retriever_checkpoint("colmodernvbert", work / "model", size=args.size))
        for number in range(args.docs):
            make_pdf(work / "docs" / f"report-{number}.pdf", args.pages, title=f"report {number}")
        common = dict(model=checkpoint, image_edge=args.edge, batch_size=args.batch_size)
        print(
            f"colmodernvbert ({args.size}, random weights), {args.docs} x {args.pages} A4 pages, "
            f"edge {args.edge}, batch {args.batch_size}, {os.cpu_count()} CPUs"
        )

        rows = []
        for threads in args.plain_threads:
            torch.set_num_threads(threads)
            wall, pages = timed_ingest(work / f"plain-{threads}", work / "docs", **common)
            rows.append(("plain ingest", f"{threads} torch thread(s)", wall))
        plain_s = rows[0][2]
        started = time.monotonic()
        ray.init(num_cpus=max(args.encoders) + 1, include_dashboard=False, logging_level="ERROR")
        print(f"ray.init (local, {max(args.encoders) + 1} logical CPUs): {time.monotonic() - started:.1f} s")
        make_pdf(work / "warm-up" / "one.pdf", 1)  # untimed: starts and warms the task workers
        timed_ingest(work / "warm-up-index", work / "warm-up", ray="local", ray_encoders=1, **common)
        for encoders in args.encoders:
            wall, ray_pages = timed_ingest(
                work / f"ray-{encoders}", work / "docs", ray="local", ray_encoders=encoders, **common
            )
            assert ray_pages == pages
            rows.append((f"--ray, {encoders} encoder actor(s)", "1 torch thread each", wall))
        ray.shutdown()

        print("\n| run | threads | wall s | pages/s | overhead s/page vs plain |\n|---|---|---|---|---|")
        for name, threads, wall in rows:
            overhead = "" if name == "plain ingest" else f"{(wall - plain_s) / pages:+.2f}"  # vs the first
            print(f"| {name} | {threads} | {wall:.1f} | {pages / wall:.2f} | {overhead} |")
        if args.driver_pages:
            rate = driver_commit_rate(work / "driver", args.driver_pages, args.driver_vectors)
            print(f"\ndriver commit ceiling: {rate:.0f} pages/s at {args.driver_vectors} vectors x 128 per page")


def driver_commit_rate(folder: Path, pages: int, vectors: int, per_document: int = 10) -> float:
    """Pages/s the driver's own work sustains: PlannedFile.store_page per page, commit_job per file,
    under one write lock as in a run (vectors come as float16, as from the encoder actors)."""
    rng = np.random.default_rng(0)
    page_vectors = rng.standard_normal((vectors, 128)).astype(np.float32)
    page_vectors = (page_vectors / np.linalg.norm(page_vectors, axis=1, keepdims=True)).astype(np.float16)
    index = DocIndex.open(folder / "index", create=True)
    index.add_embeddings("warm-up", [page_vectors])  # fixes dim 128
    report = IngestReport(index=str(folder))
    started = time.monotonic()
    storage = index.storage
    with storage.writing():  # what DocIndex.ingest holds around a pipeline
        for number in range(0, pages, per_document):
            source = folder / f"doc-{number}.pdf"
            source.write_bytes(b"%PDF")
            info = source.stat()
            count = min(per_document, pages - number)
            job = PlannedFile(source, "pdf", f"{number:064x}", info.st_size, info.st_mtime, count, False, {})
            for page in range(1, count + 1):
                job.store_page(storage, page, 0, 0, page_vectors)
            commit_job(storage, job, report)
    assert report.pages_added == pages
    return pages / (time.monotonic() - started)


if __name__ == "__main__":
    main()
