"""LibreOffice conversion: the persistent pool against one soffice per file, and ingest of a mixed
folder against the same pages given as PDFs, in one run on the same files.

Writes --copies of each of six formats (docx, pptx, xlsx made by python-docx/-pptx/openpyxl; html
with CSS and an image; markdown with a table; a long txt), then:

1. persistent: docqa.inputs.converters.Converter (warm pool of --workers soffice) converts all
   files into an empty cache; the pool's start-up (first soffice) is timed apart.
2. per-file: `soffice --headless --convert-to pdf` once per file (the same private profile, made
   before timing, so no first-start cost), --workers processes at a time.
3. ingest mixed: `DocIndex.ingest` of the folder with an empty cache (conversion included), the
   tiny (or --size real) retriever, fresh index, pool started beforehand as a long-lived CLI or
   server would have it.
4. ingest PDFs: the same converted PDFs copied into a folder, ingested the same way.

    flock /tmp/docqa-cpu.lock python benchmarks/conversion.py --copies 4 --workers 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.office_files import (  # noqa: E402
    libreoffice_convert,
    make_docx,
    make_html,
    make_long_text,
    make_markdown,
    make_pptx,
    make_xlsx,
)
from helpers.tiny_retrievers import build_retriever_checkpoint  # noqa: E402

from docqa.api import DocIndex  # noqa: E402
from docqa.inputs import converters, sources  # noqa: E402


def make_corpus(folder: Path, copies: int) -> list[Path]:
    files: list[Path] = []
    for n in range(copies):
        files.append(make_docx(folder / f"report{n}.docx", pages=3, title=f"Report {n}"))
        files.append(make_pptx(folder / f"deck{n}.pptx", slides=4))
        files.append(make_xlsx(folder / f"book{n}.xlsx", sheets=2))
        files.append(make_html(folder / f"web{n}"))
        files.append(make_markdown(folder / f"notes{n}.md"))
        files.append(make_long_text(folder / f"log{n}.txt", lines=300 + 10 * n))
    return files


def pdf_pages(path: Path) -> int:
    output = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[-1] for line in output.splitlines() if line.startswith("Pages:")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="files of each of the six formats")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--size", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--edge", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="docqa-conversion-bench-"))
    os.environ["DOCQA_CACHE"] = str(work / "cache-a")
    files = make_corpus(work / "docs", args.copies)
    print(
        f"{len(files)} files; LibreOffice {subprocess.run(['soffice', '--version'], capture_output=True, text=True).stdout.strip()}"
    )

    # 1. persistent pool
    pool = converters.Converter(workers=args.workers)
    started = time.monotonic()
    pool.pdf_for(files[-1], sources.classify(files[-1]).kind)  # start-up + one tiny file
    startup = time.monotonic() - started
    rest = files[:-1]
    started = time.monotonic()
    futures = [pool.submit(path, sources.classify(path).kind) for path in rest]
    pdfs = [future.result() for future in futures]
    persistent_s = time.monotonic() - started
    pool.close()
    pages = sum(pdf_pages(pdf) for pdf in pdfs)
    print(f"persistent: start-up {startup:.2f} s; {len(rest)} files, {pages} pages in {persistent_s:.2f} s")

    # 2. one soffice per file (profile made first, untimed)
    profile = work / "profile"
    warm = make_long_text(work / "warm.txt", lines=3)
    libreoffice_convert([warm], "pdf", work / "warm", profile)
    profiles = [profile] + [work / f"profile{n}" for n in range(1, args.workers)]
    for extra in profiles[1:]:
        shutil.copytree(profile, extra)

    def one(index_path: tuple[int, Path]) -> None:
        index, path = index_path
        libreoffice_convert([path], "pdf", work / "per-file" / str(index), profiles[index % args.workers])

    started = time.monotonic()
    with ThreadPoolExecutor(args.workers) as threads:
        list(threads.map(one, enumerate(rest)))
    per_file_s = time.monotonic() - started
    print(f"per-file: {len(rest)} files in {per_file_s:.2f} s")

    # 3./4. ingest: mixed folder (empty cache) vs the same pages as PDFs
    checkpoint = build_retriever_checkpoint("colmodernvbert", work / "retriever", size=args.size)
    as_pdfs = work / "pdfs"
    as_pdfs.mkdir()
    for n, pdf in enumerate(pdfs):
        shutil.copyfile(pdf, as_pdfs / f"{n}.pdf")
    for path in files[-1:]:  # the warm-up file too, so both folders hold the same pages
        shutil.copyfile(converters.cached_pdf_path(sources.sha256_of(path)), as_pdfs / "last.pdf")
    os.environ["DOCQA_CACHE"] = str(work / "cache-b")
    pool = converters.Converter(workers=args.workers)
    converters.set_default_converter(pool)
    pool.pdf_for(warm, sources.TEXT)  # the pool is up, as in a long-lived process
    results = {}
    for name, folder in (("mixed", work / "docs"), ("pdfs", as_pdfs)):
        started = time.monotonic()
        report = DocIndex.open(work / f"index-{name}", create=True).ingest(
            [folder],
            model=str(checkpoint),
            image_edge=args.edge,
            batch_size=4,
            walk=sources.WalkOptions(exclude=["*.png", "*.css"]),
        )  # a page's own image and stylesheet
        seconds = time.monotonic() - started
        assert report.failed == 0, report.failures
        results[name] = (report.pages_added, seconds, report.timings)
        print(
            f"ingest {name}: {report.pages_added} pages in {seconds:.2f} s ({report.pages_added / seconds:.2f} pages/s);"
            f" render+convert {report.timings.render_s:.1f} s, encode {report.timings.encode_s:.1f} s"
        )
    pool.close()

    total_pages = pages
    print()
    print("| measure | files | pages | seconds | pages/s |")
    print("|---|---|---|---|---|")
    print(
        f"| convert: persistent pool ({args.workers} worker), warm | {len(rest)} | {total_pages} | {persistent_s:.2f} | {total_pages / persistent_s:.2f} |"
    )
    print(f"| convert: pool start-up (first soffice + 1 file) | 1 | - | {startup:.2f} | - |")
    print(
        f"| convert: one soffice per file ({args.workers} at a time) | {len(rest)} | {total_pages} | {per_file_s:.2f} | {total_pages / per_file_s:.2f} |"
    )
    for name, label in (
        ("mixed", "ingest: mixed folder (conversion included)"),
        ("pdfs", "ingest: same pages as PDFs"),
    ):
        count, seconds, _ = results[name]
        print(
            f"| {label} | {len(files) if name == 'mixed' else len(pdfs) + 1} | {count} | {seconds:.2f} | {count / seconds:.2f} |"
        )
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
