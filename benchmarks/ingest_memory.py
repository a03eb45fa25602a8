"""Peak memory of `docqa ingest` against document length: a short and a long PDF, one process each.

Writes two real multi-page A4 PDFs (reportlab; default 10 and 1,000 pages), then runs the real
command line (`python -m docqa ingest FILE --index DIR --model CKPT --image-edge PX --json`) once per
PDF into a fresh index, each in its own process, and reads that process's peak resident set from
the kernel (``wait4``'s ru_maxrss: the child's own high-water mark, imports, model and engine
included). An untimed 1-page ingest first fills the converted-model cache, so neither measured run
pays for a conversion. The target: the long PDF raises peak RSS by < 300 MB over the short one.

The retriever is the CPU default's family (ColModernVBert) built by the tests' factory: ``--size
tiny`` (default) keeps a 1,000-page run to minutes while rendering, tiling and storing run at the
real page size (the tiny model has the real 512 px tiles, so the same tiles per page); the model's
own memory is a constant that a longer document does not change. ``--size real`` checks that too.

    python benchmarks/ingest_memory.py --pages 10 1000 --edge 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # docqa, and the checkpoint factories of the tests

from helpers.documents import make_pdf  # noqa: E402
from helpers.tiny_retrievers import build_retriever_checkpoint  # noqa: E402


def ingest_peak(pdf: Path, index: Path, checkpoint: Path, args: argparse.Namespace) -> tuple[int, float, dict]:
    """(peak RSS bytes, wall seconds, --json summary) of one `docqa ingest` process."""
    command = [
        sys.executable,
        "-m",
        "docqa",
        "ingest",
        str(pdf),
        "--index",
        str(index),
        "--model",
        str(checkpoint),
        "--device",
        "cpu",
        "--image-edge",
        str(args.edge),
        "--batch-size",
        str(args.batch_size),
        "--json",
    ]
    if args.engine:
        command += ["--engine", args.engine]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        out.seek(0)
        summary = json.loads(out.read() or b"{}")
    if child.returncode != 0:
        raise SystemExit(f"ingest of {pdf.name} exited {child.returncode}: {summary}")
    return usage.ru_maxrss * 1024, wall, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--edge", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--engine", choices=["torch", "openvino"], help="default: the CPU default")
    args = parser.parse_args()
    os.environ.setdefault("DOCQA_CACHE", str(Path(tempfile.gettempdir()) / "docqa-bench-cache"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = build_retriever_checkpoint("colmodernvbert", work / "model", size=args.size)
        ingest_peak(make_pdf(work / "warm.pdf", 1), work / "index-warm", checkpoint, args)  # conversion
        print(
            f"ColModernVBert ({args.size}, random weights), engine {args.engine or 'default'}, A4 pages at "
            f"{args.edge} px, batch {args.batch_size}; one `docqa ingest` process per PDF"
        )
        print(
            "| PDF pages | peak RSS MB | over the first | wall s | pages/s | render s | preprocess s | encode s "
            "| store s |\n|---|---|---|---|---|---|---|---|---|"
        )
        first = None
        for pages in args.pages:
            pdf = make_pdf(work / f"doc-{pages}.pdf", pages, title=f"report {pages}")
            peak, wall, summary = ingest_peak(pdf, work / f"index-{pages}", checkpoint, args)
            if summary["pages_added"] != pages:
                raise SystemExit(f"only {summary['pages_added']} of {pages} pages were ingested")
            first = peak if first is None else first
            t = summary["timings"]
            print(
                f"| {pages} | {peak / 2**20:.0f} | {(peak - first) / 2**20:+.0f} | {wall:.1f} | {pages / wall:.2f} | "
                f"{t['render_s']:.1f} | {t['preprocess_s']:.1f} | {t['encode_s']:.1f} | {t['store_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
