"""Ingest speed of a retriever at its real size: the pipeline against the model's pure forward pass.

Builds the family's real architecture from its config (random weights: speed and memory are real),
writes --docs generated A4 PDFs of --pages pages, loads the retriever once on --engine, then for
each --edges value times, interleaved (A B C, B C A, C A B, ...: each goes first in turn) and
keeping the minimum of --repeats:

- forward: the model alone on the same pages in the same batches (rendered and preprocessed
  beforehand, untimed): ``encode_batch`` only. This is the ceiling ingest can reach.
- ingest: ``DocIndex.ingest`` of the PDFs into a fresh index (walk, sniff, hash, render thread,
  preprocess thread, encode, store, commit), batch --batch-size, the model already loaded.
- batch-1 no overlap (byaldi's way): render every page of every PDF first, then encode one page at
  a time (the same engine), storing nothing.

Prints pages/s of each and their ratio to the forward pass (the target: ingest >= 0.9), plus vectors
and index bytes per page.

    python benchmarks/ingest_speed.py --edges 1024 --docs 2 --pages 3 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # docqa, and the checkpoint factories of the tests

import torch  # noqa: E402
from helpers.documents import make_pdf  # noqa: E402
from helpers.tiny_retrievers import FAMILIES, build_retriever_checkpoint  # noqa: E402
from pdf2image import convert_from_path  # noqa: E402

from docqa.api import DocIndex  # noqa: E402
from docqa.inputs.render import render_pages  # noqa: E402
from docqa.inputs.sources import PDF  # noqa: E402
from docqa.models.retriever import Retriever  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="colmodernvbert")
    parser.add_argument("--size", choices=["tiny", "real"], default="real")
    parser.add_argument("--engine", choices=["torch", "openvino"], default="openvino")
    parser.add_argument("--docs", type=int, default=2)
    parser.add_argument("--pages", type=int, default=3, help="pages per PDF")
    parser.add_argument("--edges", type=int, nargs="+", default=[1024])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("DOCQA_CACHE", str(Path(tempfile.gettempdir()) / "docqa-bench-cache"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = build_retriever_checkpoint(args.family, work / "model", size=args.size)
        pdfs = [make_pdf(work / "docs" / f"report-{n}.pdf", args.pages, title=f"report {n}") for n in range(args.docs)]
        total = args.docs * args.pages
        print(
            f"{args.family} ({args.size} size, random weights), engine {args.engine}, "
            f"{torch.get_num_threads()} threads, {args.docs} PDFs x {args.pages} A4 pages, batch "
            f"{args.batch_size}, min of {args.repeats} interleaved"
        )
        print(
            "| edge | forward pages/s | ingest pages/s | ingest / forward | batch-1 no-overlap pages/s "
            "| no-overlap / forward | ingest s/page | vectors/page | index KB/page |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for edge in args.edges:
            retriever = Retriever.load(str(checkpoint), device="cpu", engine=args.engine, image_edge=edge)
            images = [page.image for pdf in pdfs for page in render_pages(pdf, PDF, edge)]
            batches = [
                retriever.preprocess_pages(images[i : i + args.batch_size]) for i in range(0, total, args.batch_size)
            ]
            best = {"forward": float("inf"), "ingest": float("inf"), "no overlap": float("inf")}
            shape: dict[str, float] = {}

            def forward() -> None:
                for batch in batches:
                    retriever.encode_batch(batch)

            def ingest() -> None:
                folder = work / f"index-{edge}"
                index = DocIndex.open(folder, create=True)
                index.adopt_retriever(retriever)
                report = index.ingest(
                    pdfs, model=str(checkpoint), image_edge=edge, engine=args.engine, batch_size=args.batch_size
                )
                assert report.pages_added == total, report.failures
                shape.update(vectors=index.vectors.rows, size=index.info().bytes_on_disk)
                index.close()
                shutil.rmtree(folder)

            def no_overlap() -> None:
                rendered = [image for pdf in pdfs for image in convert_from_path(str(pdf), size=edge)]
                for image in rendered:
                    retriever.encode_pages([image])

            ways = [("forward", forward), ("ingest", ingest), ("no overlap", no_overlap)]
            for repeat in range(args.repeats):
                for name, way in ways[repeat % 3 :] + ways[: repeat % 3]:  # each way goes first in turn
                    started = time.perf_counter()
                    way()
                    best[name] = min(best[name], time.perf_counter() - started)
            vectors, size = shape["vectors"], shape["size"]
            rate = {name: total / seconds for name, seconds in best.items()}
            print(
                f"| {edge} | {rate['forward']:.3f} | {rate['ingest']:.3f} | {rate['ingest'] / rate['forward']:.2f} "
                f"| {rate['no overlap']:.3f} | {rate['no overlap'] / rate['forward']:.2f} | "
                f"{best['ingest'] / total:.2f} | {vectors / total:.0f} | {size / 1024 / total:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
