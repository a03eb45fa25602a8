"""Ingest speed of a retriever at its real size (random weights: speed and memory are real).

Builds the family's real architecture from its config, then ingests the same generated A4 PDF at
each --image-edge through the normal DocIndex.ingest path (render thread, batching, storage) and
prints seconds per page, vectors per page and the index size per page.

    python benchmarks/ingest_speed.py --family colmodernvbert --pages 4 --edges 512 1024
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # docqa, and the checkpoint factories of the tests

import torch  # noqa: E402

from docqa.api import DocIndex  # noqa: E402
from documents import make_pdf  # noqa: E402
from tiny_retrievers import FAMILIES, build_retriever_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="colmodernvbert")
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--edges", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = build_retriever_checkpoint(args.family, work / "model", size="real")
        pdf = make_pdf(work / "docs" / "report.pdf", args.pages, title="quarterly report")
        print(f"{args.family} (real size, random weights, {torch.get_num_threads()} threads), "
              f"{args.pages} A4 pages, batch {args.batch_size}")
        print(f"{'edge':>5} {'s/page':>7} {'vectors/page':>13} {'KB/page':>8}")
        for edge in args.edges:
            index = DocIndex.open(work / f"index-{edge}", create=True)
            report = index.ingest([pdf], model=str(checkpoint), image_edge=edge, batch_size=args.batch_size)
            rows = index.vectors.rows
            size = index.info().bytes_on_disk
            print(f"{index.build['encoder']['image_edge']:>5} {report.seconds / report.pages_added:>7.1f}"
                  f" {rows / report.pages_added:>13.0f} {size / 1024 / report.pages_added:>8.0f}")


if __name__ == "__main__":
    main()
