"""The command line: parse arguments, call the library, print (human text or --json). No logic.

Exit status: 0 all good; 1 finished but some inputs failed; 2 nothing done (bad usage, model or
index problem), with a one-line error on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .config import DEFAULT_INDEX, IngestSettings
from .errors import DocQAError

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2

INDEX_HELP = (
    f"index name (default {DEFAULT_INDEX!r}, stored in $DOCQA_HOME/indexes/NAME, DOCQA_HOME"
    " defaults to the current directory) or, if it contains a slash, a folder path"
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and a one-line message, never a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"docqa: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="docqa",
        description="OCR-free search and question answering over folders of PDFs and page images.",
    )
    parser.add_argument("--version", action="version", version=f"docqa {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    ingest = commands.add_parser(
        "ingest", help="index PDFs and page images under the given paths",
        description="Walk PATHs recursively, render every PDF page and image, embed it with a "
        "ColPali-family retriever and store it in the index. Unchanged files are skipped, changed "
        "files replace their old pages. Safe to re-run; stop it any time without losing committed files.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to index")
    ingest.add_argument("--index", default=None, help=INDEX_HELP)
    ingest.add_argument("--model", help="retriever: hub id or local checkpoint folder (fixed at the "
                        "index's first ingest; default ModernVBERT/colmodernvbert-merged on CPU, "
                        "vidore/colqwen2-v1.0-hf on GPU)")
    ingest.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    ingest.add_argument("--batch-size", type=_positive_int, default=4, help="pages per forward pass (default 4)")
    ingest.add_argument("--image-edge", type=_positive_int, help="longest page edge in pixels fed to the "
                        "retriever (default per model family; fixed at the first ingest)")
    ingest.add_argument("--sync", action="store_true",
                        help="also remove indexed documents whose files are gone from the given folders")
    ingest.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    ingest.set_defaults(handler=_ingest)

    search = commands.add_parser(
        "search", help="find the pages that best match a question",
        description="Embed QUERY with the index's retriever and print the top pages by exact "
        "late-interaction (MaxSim) score.",
    )
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--index", default=None, help=INDEX_HELP)
    search.add_argument("-k", type=_positive_int, default=5, help="number of pages to return (default 5)")
    search.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    search.add_argument("--json", action="store_true", help="print the results as one JSON object")
    search.set_defaults(handler=_search)

    info = commands.add_parser("info", help="show what an index holds",
                               description="Print the index's model, document and page counts and size.")
    info.add_argument("--index", default=None, help=INDEX_HELP)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=_info)

    remove = commands.add_parser("remove", help="remove documents from an index",
                                 description="Delete the documents at PATHs (a folder removes every "
                                 "document under it). The files themselves are not touched.")
    remove.add_argument("paths", nargs="+", metavar="PATH")
    remove.add_argument("--index", default=None, help=INDEX_HELP)
    remove.add_argument("--json", action="store_true", help="print one JSON object")
    remove.set_defaults(handler=_remove)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _open_index(name: str | None, create: bool = False):
    """Open an index; the import is here so `--help` does not pay for importing torch."""
    from .api import DocIndex

    return DocIndex.open(name, create=create)


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, ensure_ascii=False))


def _ingest(args: argparse.Namespace) -> int:
    index = _open_index(args.index, create=True)
    settings = IngestSettings(model=args.model, device=args.device, batch_size=args.batch_size,
                              image_edge=args.image_edge, sync=args.sync, progress=sys.stderr.isatty())
    report = index.ingest(args.paths, settings)
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"{report.index}: {report.added} added, {report.updated} updated, {report.unchanged} "
              f"unchanged, {report.removed} removed, {report.failed} failed, {report.skipped} skipped; "
              f"{report.pages_added} pages in {report.seconds:.1f} s")
        for failure in report.failures:
            print(f"  failed: {failure.path}: {failure.error}", file=sys.stderr)
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _search(args: argparse.Namespace) -> int:
    hits = _open_index(args.index).search(args.query, k=args.k, device=args.device)
    if args.json:
        _print_json({"query": args.query, "results": [hit.to_json() for hit in hits]})
    elif not hits:
        print("no pages in the index yet", file=sys.stderr)
    else:
        for hit in hits:
            print(f"{hit.rank:3d}. {hit.score:8.3f}  {hit.path}  page {hit.page}")
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    info = _open_index(args.index).info()
    if args.json:
        _print_json(info.to_json())
    else:
        print(f"index:     {info.index}\nmodel:     {info.model or '(none yet)'}\n"
              f"documents: {info.documents}\npages:     {info.pages}\n"
              f"on disk:   {info.bytes_on_disk / 1e6:.1f} MB")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    report = _open_index(args.index).remove(args.paths)
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"{report.index}: removed {len(report.removed)} document(s)")
        for path in report.not_found:
            print(f"  not in the index: {path}", file=sys.stderr)
    return EXIT_PARTIAL if report.not_found else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return args.handler(args)
    except DocQAError as error:
        print(f"docqa: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("docqa: interrupted; everything committed before this point is kept", file=sys.stderr)
        return 130
