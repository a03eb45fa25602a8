"""The command line: parse arguments, call the library, print (human text or --json). No logic.

Exit status: 0 all good; 1 finished but some inputs failed; 2 nothing done (bad usage, model or
index problem), with a one-line error on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .. import __version__
from ..config import DEFAULT_INDEX, MAX_BATCH_SIZE, MAX_IMAGE_EDGE, MAX_PAGE_IMAGES, MAX_RESULTS, IngestSettings
from ..errors import DocQAError

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
KEPT_ON_INTERRUPT = "interrupted; every document committed before this point is kept (run ingest again to go on)"

INDEX_HELP = (
    f"index name (default {DEFAULT_INDEX!r}, stored in $DOCQA_HOME/indexes/NAME, DOCQA_HOME"
    " defaults to the current directory) or, if it contains a slash, a folder path"
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and a one-line message, never a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    ingest.add_argument("--batch-size", type=_positive_int_up_to(MAX_BATCH_SIZE), default=4,
                        help=f"pages per forward pass (default 4, at most {MAX_BATCH_SIZE})")
    ingest.add_argument("--image-edge", type=_positive_int_up_to(MAX_IMAGE_EDGE), help="longest page edge in "
                        f"pixels fed to the retriever (default per model family, at most {MAX_IMAGE_EDGE}; fixed "
                        "at the first ingest)")
    ingest.add_argument("--index-mode", choices=["fast", "exact"], help="set when the index is created: "
                        "fast (default) reranks the candidate stage's best pages with exact MaxSim; exact scores "
                        "every page on every search")
    ingest.add_argument("--vector-type", choices=["bfloat16", "float16"], help="set when the index is created: "
                        "how vectors are stored, bfloat16 (fast mode's default: multiplied without conversion) or "
                        "float16 (full precision; exact mode's default)")
    ingest.add_argument("--pool-factor", type=_positive_int, help="set when the index is created: merge similar "
                        "vectors of each page into about 1/N as many (hierarchical token pooling; default 1 = keep all)")
    ingest.add_argument("--tag", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                        help="store this tag on every document added or updated (repeatable); filter on it "
                        "with search/ask --where")
    _add_engine_option(ingest, "the retriever (fixed at the index's first ingest)")
    ingest.add_argument("--sync", action="store_true",
                        help="also remove indexed documents whose files are gone from the given folders")
    ingest.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="render and encode on a Ray cluster (ADDRESS: auto, host:6379, ray://host:10001; "
                        "without one a local Ray is started); this process plans and commits. "
                        'Needs pip install "docqa[ray]"')
    ingest.add_argument("--ray-encoders", type=_positive_int, metavar="N",
                        help="with --ray: encoder actors, one model each (default: one per GPU, else CPUs - 1)")
    ingest.add_argument("--shards", nargs="+", metavar="DIR",
                        help="instead of --index: put each file into one of these indexes (created when missing), "
                        "picked by a stable hash of its path; a folder with a shards.json stands for its shards")
    ingest.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    ingest.set_defaults(handler=_ingest, interrupted=KEPT_ON_INTERRUPT)

    search = commands.add_parser(
        "search", help="find the pages that best match a question",
        description="Embed QUERY with the index's retriever and print the top pages by exact "
        "late-interaction (MaxSim) score.",
    )
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--index", default=None, help=INDEX_HELP)
    search.add_argument("-k", type=_positive_int, default=5,
                        help=f"number of pages to return (default 5; at most {MAX_RESULTS})")
    search.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    search.add_argument("--exact", action="store_true",
                        help="score every page by brute-force MaxSim instead of using the candidate index")
    search.add_argument("--rerank", type=_positive_int, metavar="N", help="fast mode: rerank the candidate "
                        "stage's best N pages (default 1536; more finds more of the exact top k, slower)")
    _add_filter_options(search)
    _add_shard_options(search)
    _add_engine_option(search, "the query encoder (must be the index's)")
    search.add_argument("--heatmaps", metavar="DIR", help="write one PNG per result into DIR: the page with "
                        "where the query matches drawn over it and the strongest region boxed")
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
    remove.set_defaults(handler=_remove, interrupted="interrupted; a removal is one commit: the index "
                        "holds all of it or none of it")

    ask = commands.add_parser(
        "ask", help="answer a question from the best pages, citing file and page",
        description="Retrieve the top pages for QUESTION and let a vision-language model read their "
        "images and answer, streaming the text, then list the pages shown (* = cited by the answer). "
        "With --image, answer about one image or PDF page without any index.",
    )
    ask.add_argument("question", metavar="QUESTION")
    ask.add_argument("--index", default=None, help=INDEX_HELP)
    ask.add_argument("-k", type=_positive_int, default=3, help="pages to retrieve (default 3)")
    ask.add_argument("--image", metavar="FILE", help="answer about this image or PDF page instead of an index")
    ask.add_argument("--page", type=_positive_int, default=1, help="with --image: the page of a PDF (default 1)")
    _add_filter_options(ask)
    _add_shard_options(ask)
    ask.add_argument("--heatmaps", metavar="DIR", help="write one PNG per page shown to the model into DIR, "
                     "boxing the region that best matches the question together with the answer")
    _add_answer_options(ask)
    ask.set_defaults(handler=_ask)

    chat = commands.add_parser(
        "chat", help="multi-turn questions over an index (also reads questions from a pipe)",
        description="A conversation over the index: each question retrieves pages in the context of the "
        "conversation, and earlier pages stay in view up to --max-pages images (oldest dropped first, "
        "with a note). Commands: /pages lists the pages in context, /reset starts over, /quit leaves. "
        "With stdin a pipe, each line is one question.",
    )
    chat.add_argument("--index", default=None, help=INDEX_HELP)
    chat.add_argument("-k", type=_positive_int, default=3, help="pages to retrieve per question (default 3)")
    chat.add_argument("--max-images", type=_positive_int, default=6,
                      help="page images kept in the conversation (default 6; oldest dropped first; "
                      f"lowered to at most {MAX_PAGE_IMAGES} and to what the model's context holds)")
    _add_filter_options(chat)
    _add_shard_options(chat)
    _add_answer_options(chat)
    chat.set_defaults(handler=_chat)

    describe = commands.add_parser(
        "describe", help="caption or describe one page of a PDF or an image",
        description="Describe one page of FILE (a PDF or an image) with the answer model; no index needed.",
    )
    describe.add_argument("file", metavar="FILE")
    describe.add_argument("--page", type=_positive_int, default=1, help="the page to describe (default 1)")
    _add_answer_options(describe, max_pages=False)
    describe.set_defaults(handler=_describe)

    evaluate = commands.add_parser(
        "eval", help="measure retrieval quality on judged queries (nDCG@5/10, recall@k, MRR@k)",
        description="Run every query of QRELS through the index and print nDCG@5, nDCG@10, recall@k "
        "and MRR@k averaged over queries (nDCG gain = grade, log2 discount, ideal DCG from all relevant "
        "pages). QRELS is a JSONL file of {\"query\": str, \"relevant\": [{\"path\", \"page\", "
        "\"grade\"}]} lines, or a folder in BEIR layout (queries, qrels, optional corpus) as ViDoRe "
        "publishes it. Relevant pages that match no indexed page are counted and named.",
    )
    evaluate.add_argument("qrels", metavar="QRELS", help="JSONL file or BEIR folder of judged queries")
    evaluate.add_argument("--index", default=None, help=INDEX_HELP)
    evaluate.add_argument("-k", type=_positive_int, default=10, help="cut-off for recall@k and MRR@k (default 10)")
    evaluate.add_argument("--exact", action="store_true",
                          help="also evaluate exact (brute-force MaxSim) search, to see what the default costs")
    evaluate.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_eval)

    serve = commands.add_parser(
        "serve", help="serve the HTTP API and the web page over an index",
        description="Search, ask (streamed), page images with heatmaps, uploads ingested in the background "
        "and a documents list, as JSON endpoints under /api (schema at /openapi.json) and a web page at /. "
        "Binds 127.0.0.1 unless --host says otherwise, which then requires --token. Needs the serve "
        'extra: pip install "docqa[serve]".',
    )
    serve.add_argument("--index", default=None, help=INDEX_HELP + " (created on the first upload)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other "
                       "address requires --token)")
    serve.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    serve.add_argument("--token", help="require this token on every request (Authorization: Bearer TOKEN, "
                       "or open the page once as /?token=TOKEN); defaults to $DOCQA_TOKEN")
    serve.add_argument("--model", help="retriever for a new index (as for ingest; ignored once the index "
                       "has a model)")
    serve.add_argument("--answer-model", help="image-text-to-text model for /api/ask (loaded on the first "
                       "question)")
    serve.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    serve.add_argument("--max-upload-mb", type=_positive_int, default=100,
                       help="largest upload accepted, in MB (default 100)")
    serve.set_defaults(handler=_serve)

    mcp = commands.add_parser(
        "mcp", help="serve the index to LLM agents over the Model Context Protocol",
        description="Tools search, ask, get_page and list_documents (page images as MCP image content) and "
        "the page resources docqa://page/ID, over stdio (the agent starts this command) or streamable HTTP "
        "(127.0.0.1 only, Bearer token required). Needs the mcp extra: pip install \"docqa[mcp]\". "
        "Client set-up: docs/mcp.md.",
    )
    mcp.add_argument("--index", default=None, help=INDEX_HELP)
    mcp.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="stdio (default) or http")
    mcp.add_argument("--host", default="127.0.0.1", help="http: loopback address to bind (default 127.0.0.1)")
    mcp.add_argument("--port", type=_positive_int, default=8765, help="http: port (default 8765)")
    mcp.add_argument("--token", help="http: the Bearer token every request must carry; defaults to $DOCQA_TOKEN")
    mcp.add_argument("--answer-model", help="image-text-to-text model for the ask tool (loaded on first use)")
    mcp.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    _add_engine_option(mcp, "the answer model (the retriever always uses the index's engine)")
    mcp.set_defaults(handler=_mcp)

    watch = commands.add_parser(
        "watch", help="keep an index in step with folders as their files change",
        description="Catch up with one ingest --sync of FOLDERs, then ingest new and changed files and remove "
        "deleted or moved ones as they happen, each file once it has stopped changing for --settle seconds. "
        "Safe to kill at any time: the next start catches up. One watcher per index. Ctrl-C stops.",
    )
    watch.add_argument("folders", nargs="+", metavar="FOLDER")
    watch.add_argument("--index", default=None, help=INDEX_HELP)
    watch.add_argument("--model", help="retriever for a new index (as for ingest)")
    watch.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    watch.add_argument("--batch-size", type=_positive_int_up_to(MAX_BATCH_SIZE), default=4,
                       help="pages per forward pass (default 4)")
    watch.add_argument("--tag", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                       help="store this tag on every document added or updated (repeatable)")
    watch.add_argument("--settle", type=float, default=1.0, metavar="SECONDS",
                       help="a file is taken once unchanged for this long (default 1.0)")
    watch.add_argument("--rescan", type=float, metavar="SECONDS",
                       help="also run a full ingest --sync this often (default: only at start)")
    watch.add_argument("--json", action="store_true", help="print one JSON object per batch")
    watch.set_defaults(handler=_watch, interrupted="stopped watching; everything synced so far is committed")

    daemon = commands.add_parser(
        "daemon", help="keep an index's models loaded for search, ask and chat (started on first use)",
        description="Serve --index to docqa search/ask/chat of this user over a private unix socket until idle "
        "for --idle-timeout seconds. Commands start one by themselves (DOCQA_DAEMON=off turns that off); "
        "this runs one in the foreground.",
    )
    daemon.add_argument("--index", default=None, help=INDEX_HELP)
    daemon.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    daemon.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                        help="exit after this long without a request (default $DOCQA_DAEMON_IDLE_S or 600)")
    daemon.add_argument("--socket", metavar="PATH", help="listen here instead of where clients look (for tests)")
    daemon.set_defaults(handler=_daemon)
    return parser


def _add_answer_options(parser: argparse.ArgumentParser, max_pages: bool = True) -> None:
    parser.add_argument("--answer-model", help="image-text-to-text chat model: hub id or local folder "
                        "(default HuggingFaceTB/SmolVLM-500M-Instruct on CPU, Qwen/Qwen2.5-VL-3B-Instruct on GPU)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    _add_engine_option(parser, "the answer model (the retriever always uses the index's engine)")
    if max_pages:
        parser.add_argument("--max-pages", type=_positive_int, default=3,
                            help="most page images shown to the model at once (default 3; bounds CPU time; "
                            f"lowered to at most {MAX_PAGE_IMAGES} and to what the model's context holds)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=256,
                        help="longest answer in tokens (default 256)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (chat: one per line)")


def _add_engine_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--engine", choices=("torch", "openvino"),
                        help=f"what runs {what}: openvino (int8, the CPU default where it runs the model) "
                        "or torch (fp32 on CPU, bf16 on GPU)")


def _add_filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--where", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                        help="only documents tagged KEY=VALUE (see ingest --tag; repeatable, all must hold)")
    parser.add_argument("--path", metavar="GLOB",
                        help="only documents whose path matches GLOB (* matches across folders, e.g. '*/2024/*.pdf')")


def _add_shard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", nargs="+", metavar="DIR",
                        help="search these indexes (shards of one collection, built with the same model) as "
                        "one, instead of --index; a folder with a shards.json stands for the shards it lists")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="with --shards: hold each shard in a Ray actor on the cluster at ADDRESS (without "
                        'one a local Ray is started); needs pip install "docqa[ray]"')


def _open_searchable(args: argparse.Namespace):
    """The index to search: --shards as one (threads, or Ray actors with --ray), else --index."""
    if args.shards:
        from ..cluster.shards import ShardSet

        return ShardSet.open(args.shards, ray=args.ray)
    if args.ray is not None:
        raise DocQAError("--ray needs --shards (a single index is searched in this process)")
    return _open_index(args.index)



def _resident(args: argparse.Namespace):
    """A connection to the resident process serving --index on --device (started when there is
    none), or None: then the command runs in this process (--shards, --ray, heatmaps, --image,
    DOCQA_DAEMON=off, or no daemon could start)."""
    if getattr(args, "shards", None) or getattr(args, "ray", None) is not None or getattr(args, "heatmaps", None) \
            or getattr(args, "image", None):
        return None
    from ..config import index_path
    from ..serve.daemon import connect, enabled

    folder = index_path(args.index)
    if not enabled() or not folder.is_dir():
        return None
    return connect(folder, args.device)


def _resident_search(args: argparse.Namespace):
    """The hits from the resident process, or None when it cannot serve this search."""
    connection = _resident(args)
    if connection is None:
        return None
    from ..serve.daemon import DaemonGone, RemoteHit

    try:
        reply = connection.request({"op": "search", "query": args.query, "k": min(args.k, MAX_RESULTS),
                                    "exact": args.exact, "rerank": args.rerank, "where": dict(args.where),
                                    "path": args.path, "engine": args.engine})
        return [RemoteHit(**hit) for hit in reply["hits"]]
    except DaemonGone:
        return None
    finally:
        connection.close()


def _resident_asker(args: argparse.Namespace):
    """An asker whose models live in the resident process, or None."""
    connection = _resident(args)
    if connection is None:
        return None
    from ..serve.daemon import DaemonGone, RemoteAsker

    settings = {"answer_model": args.answer_model, "engine": args.engine, "k": args.k,
                "max_pages": getattr(args, "max_pages", args.k), "max_new_tokens": args.max_new_tokens,
                "max_images": getattr(args, "max_images", None), "where": dict(args.where), "path": args.path}
    try:
        asker = RemoteAsker(connection, settings)
    except DaemonGone:
        connection.close()
        return None
    for note in asker.notes:
        print(f"docqa: note: {note}", file=sys.stderr)
    return asker

def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or '"' in key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a non-empty key without double quotes, got {text!r}")
    return key, value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_int_up_to(ceiling: int):
    """An argparse type: a whole number from 1 to `ceiling` (larger values are refused, not lowered)."""

    def parse(text: str) -> int:
        value = _positive_int(text)
        if value > ceiling:
            raise argparse.ArgumentTypeError(f"at most {ceiling}, got {value}")
        return value

    parse.__name__ = "whole number"  # how argparse names the type in its messages
    return parse


def _open_index(name: str | None, create: bool = False, options: dict | None = None):
    """Open an index; the import is here so `--help` does not pay for importing torch."""
    from ..api import DocIndex

    return DocIndex.open(name, create=create, options=options)


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, ensure_ascii=False))


def _ingest(args: argparse.Namespace) -> int:
    options = {name: value for name, value in (("mode", args.index_mode), ("pool_factor", args.pool_factor),
                                               ("vector_type", args.vector_type)) if value is not None}
    settings = IngestSettings(model=args.model, device=args.device, batch_size=args.batch_size,
                              image_edge=args.image_edge, engine=args.engine, sync=args.sync, tags=dict(args.tag),
                              progress=sys.stderr.isatty(), ray=args.ray, ray_encoders=args.ray_encoders)
    if args.shards:
        from ..cluster.shards import ingest_sharded

        report = ingest_sharded(args.shards, args.paths, settings)
    else:
        report = _open_index(args.index, create=True, options=options).ingest(args.paths, settings)
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"{report.index}: {report.added} added, {report.updated} updated, {report.unchanged} "
              f"unchanged, {report.removed} removed, {report.failed} failed, {report.skipped} skipped; "
              f"{report.pages_added} pages in {report.seconds:.1f} s")
        times = report.timings
        print(f"  time: encode {times.encode_s:.1f} s, store {times.store_s:.1f} s; in background threads: "
              f"render {times.render_s:.1f} s, preprocess {times.preprocess_s:.1f} s")
        for failure in report.failures:
            print(f"  failed: {failure.path}: {failure.error}", file=sys.stderr)
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _search(args: argparse.Namespace) -> int:
    if args.k > MAX_RESULTS:
        print(f"docqa: note: -k {args.k} lowered to {MAX_RESULTS}: the most pages one search returns",
              file=sys.stderr)
    hits = _resident_search(args)  # the resident process, when one serves this index (else None)
    if hits is None:
        index = _open_searchable(args)
        hits = index.search(args.query, k=min(args.k, MAX_RESULTS), device=args.device, exact=args.exact,
                            rerank=args.rerank, where=dict(args.where), path=args.path, engine=args.engine)
    results = [hit.to_json() for hit in hits]
    failed = 0
    if args.heatmaps and hits:
        from ..answer.grounding import ground_hit, heatmap_name

        folder = _heatmap_folder(args.heatmaps)
        retriever = index.retriever(device=args.device, engine=args.engine)
        for hit, result in zip(hits, results):
            try:
                grounding = ground_hit(retriever, args.query, hit)
            except DocQAError as error:
                failed += 1
                result.update(heatmap=None, box=None)
                print(f"docqa: no heatmap for {hit.path} page {hit.page}: {error}", file=sys.stderr)
                continue
            target = folder / heatmap_name(hit.rank, hit.path, hit.page)
            grounding.overlay().save(target)
            result.update(heatmap=str(target), **grounding.to_json())
    if args.json:
        _print_json({"query": args.query, "results": results})
    elif not hits:
        print("no pages in the index yet", file=sys.stderr)
    else:
        for hit, result in zip(hits, results):
            heatmap = f"  heatmap {result['heatmap']}" if result.get("heatmap") else ""
            print(f"{hit.rank:3d}. {hit.score:8.3f}  {hit.path}  page {hit.page}{heatmap}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _heatmap_folder(value: str) -> Path:
    folder = Path(value).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DocQAError(f"--heatmaps {value}: cannot create the folder ({error.strerror or error})") from error
    return folder


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


def _asker(args: argparse.Namespace, with_index: bool):
    """The answer model (and index) a question command needs."""
    from ..models.generator import Conversation, Generator, default_answer_model
    from ..answer.ask import Asker
    from ..models.checkpoints import check_device

    index = _open_searchable(args) if with_index else None
    device = check_device(args.device)
    generator = Generator.load(args.answer_model or default_answer_model(device), device=device,
                               engine=args.engine)
    conversation = Conversation(max_images=args.max_images) if "max_images" in args else None
    asker = Asker(generator, index, k=getattr(args, "k", 1), max_pages=getattr(args, "max_pages", 1),
                  max_new_tokens=args.max_new_tokens, conversation=conversation,
                  where=dict(getattr(args, "where", [])), path=getattr(args, "path", None))
    for note in asker.notes:
        print(f"docqa: note: {note}", file=sys.stderr)
    return asker


def _print_answer(stream, as_json: bool, heatmaps: tuple[str, object] | None = None) -> None:
    """Stream the answer's text to stdout, then the pages it was given (* = cited).

    With ``heatmaps`` (folder, retriever), each page shown also gets a heatmap PNG and a box.
    """
    if as_json:
        payload = stream.run().to_json()
        if heatmaps:
            for citation, extra in zip(payload["citations"], _answer_heatmaps(stream, *heatmaps)):
                citation.update(extra)
        _print_json(payload)
        return
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    result = stream.result
    extras = _answer_heatmaps(stream, *heatmaps) if heatmaps else [{} for _ in result.answer.citations]
    print("\nSources (* = cited in the answer):")
    for number, (citation, extra) in enumerate(zip(result.answer.citations, extras), start=1):
        score = "" if citation.score is None else f"  score {citation.score:.3f}"
        heatmap = f"  heatmap {extra['heatmap']}" if extra.get("heatmap") else ""
        print(f" {'*' if citation.cited else ' '}[{number}] {citation.path}, page {citation.page}{score}{heatmap}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)


def _answer_heatmaps(stream, folder: str, retriever) -> list[dict]:
    """Ground question + answer on each page shown; write the PNGs; the box fields per citation."""
    from ..answer.grounding import answer_query, ground, heatmap_name

    target = _heatmap_folder(folder)
    query = answer_query(stream.result.answer.question, stream.result.answer.text)
    extras = []
    for rank, page in enumerate(stream.pages, start=1):
        grounding = ground(retriever, query, page.image)
        path = target / heatmap_name(rank, page.path, page.page)
        grounding.overlay().save(path)
        extras.append({"heatmap": str(path), **grounding.to_json()})
    return extras


def _ask(args: argparse.Namespace) -> int:
    from ..answer.ask import check_question

    check_question(args.question)  # before the answer model takes seconds to load
    if args.heatmaps and args.image:
        raise DocQAError("--heatmaps needs an index (its retriever draws them); it cannot be used with --image")
    if args.heatmaps:
        asker = _asker(args, with_index=True)
        _print_answer(asker.ask(args.question), args.json, (args.heatmaps, asker.index.retriever(device=args.device)))
        return EXIT_OK
    if args.image:
        from ..answer.ask import page_of_file

        asker = _asker(args, with_index=False)
        page = page_of_file(Path(args.image), args.page, asker.generator.max_image_edge)
        _print_answer(asker.over_pages(args.question, [page]), args.json)
    else:
        remote = _resident_asker(args)
        if remote is not None:
            from ..serve.daemon import DaemonGone

            stream = remote.ask(args.question)
            try:
                _print_answer(stream, args.json)
                return EXIT_OK
            except DaemonGone:
                print(f"{chr(10) if stream.started else ''}docqa: note: the resident process ended mid-answer;"
                      " answering in this process", file=sys.stderr)
        _print_answer(_asker(args, with_index=True).ask(args.question), args.json)
    return EXIT_OK


def _describe(args: argparse.Namespace) -> int:
    from ..answer.ask import DESCRIBE_PROMPT, page_of_file

    asker = _asker(args, with_index=False)
    page = page_of_file(Path(args.file), args.page, asker.generator.max_image_edge)
    stream = asker.over_pages(DESCRIBE_PROMPT, [page])
    if args.json:
        result = stream.run()
        _print_json({"path": page.path, "page": page.page, "description": result.answer.text,
                     "answer_model": result.answer.model,
                     "timings": {"generate_s": round(result.answer.generate_s, 3)}})
    else:
        for piece in stream:
            print(piece, end="", flush=True)
        print()
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from ..eval import evaluate_index, read_qrels

    qrels = read_qrels(args.qrels)
    report = evaluate_index(_open_index(args.index), qrels, k=args.k, exact=args.exact, device=args.device)
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"{report.index}: {len(qrels.queries)} queries from {report.qrels}, k={report.k},"
              " nDCG gain = grade")
        print(f"{'mode':8} {'nDCG@5':>7} {'nDCG@10':>8} {f'recall@{report.k}':>10} {f'MRR@{report.k}':>8}"
              f" {'p50 ms':>8}")
        for mode, result in report.modes.items():
            m = result.metrics
            print(f"{mode:8} {m.ndcg_at_5:7.4f} {m.ndcg_at_10:8.4f} {m.recall_at_k:10.4f} {m.mrr_at_k:8.4f}"
                  f" {result.latency_ms_p50:8.1f}")
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
    return EXIT_PARTIAL if report.unmatched else EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    import os

    from ..serve import check_bind, require_serve_extra, serve

    token = args.token or os.environ.get("DOCQA_TOKEN") or None
    check_bind(args.host, token)
    require_serve_extra()
    print(f"docqa: serving {args.index or 'default'} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          file=sys.stderr)
    serve(args.index, host=args.host, port=args.port, token=token, model=args.model,
          answer_model=args.answer_model, device=args.device, max_upload_mb=args.max_upload_mb)
    return EXIT_OK



def _mcp(args: argparse.Namespace) -> int:
    from ..serve.mcp import run

    run(args.index, transport=args.transport, host=args.host, port=args.port,
        token=args.token or os.environ.get("DOCQA_TOKEN") or None, device=args.device,
        answer_model=args.answer_model, engine=args.engine)
    return EXIT_OK


def _watch(args: argparse.Namespace) -> int:
    from ..ingest.watch import FolderWatcher, format_batch

    if not 0 <= args.settle <= 3600:
        raise DocQAError(f"--settle takes 0 to 3600 seconds, not {args.settle}")

    def report(batch) -> None:
        if args.json:
            _print_json(batch.to_json())
        else:
            print(format_batch(batch), flush=True)
        for path, error in batch.failures:
            print(f"  failed: {path}: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()

    settings = IngestSettings(model=args.model, device=args.device, batch_size=args.batch_size, tags=dict(args.tag))
    watcher = FolderWatcher(args.folders, args.index, settings=settings, settle_s=args.settle,
                            rescan_s=args.rescan, on_batch=report)
    print(f"docqa: watching {', '.join(map(str, watcher.folders))} into {watcher.index.path} (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    watcher.run()
    return EXIT_OK


def _daemon(args: argparse.Namespace) -> int:
    from ..serve.daemon import run_daemon

    run_daemon(args.index, socket_file=args.socket, device=args.device, idle_s=args.idle_timeout)
    return EXIT_OK

CHAT_COMMANDS = ("/pages", "/reset", "/quit")


def _chat(args: argparse.Namespace) -> int:
    """One question per line. With --json every stdout line is one JSON object: an answer, a
    failed turn ({"question", "error"}) or a command's output ({"command", ...})."""
    asker = _resident_asker(args) or _asker(args, with_index=True)
    interactive = sys.stdin.isatty()
    if interactive:
        print("docqa chat: ask about your documents. /pages lists the pages in view, /reset starts over,"
              " /quit leaves.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        question = line.strip()
        if not question:  # a blank line is no question
            continue
        if question == "/quit":
            break
        if question == "/reset":
            asker.conversation.reset()
            if args.json:
                _print_json({"command": "/reset"})
            else:
                print("conversation cleared", file=sys.stderr)
        elif question == "/pages":
            pages = asker.conversation.pages()
            if args.json:
                _print_json({"command": "/pages", "pages": [{"path": p.path, "page": p.page} for p in pages]})
            else:
                for page in pages:
                    print(f"  {page.path}, page {page.page}")
                if not pages:
                    print("  (no pages in view)")
        elif question.startswith("/") and " " not in question:
            _chat_error(args, question, f"unknown command {question}; use {', '.join(CHAT_COMMANDS)}")
        else:
            if not interactive and not args.json:
                print(f"> {question}")  # piped: say which question the answer below belongs to
            try:
                _print_answer(asker.ask(question), args.json)
            except DocQAError as error:  # one bad turn does not end the conversation
                _chat_error(args, question, str(error))
            except Exception as error:  # the resident process died: go on in this process
                if type(error).__name__ != "DaemonGone":
                    raise
                print("\ndocqa: note: the resident process ended; the conversation goes on in this process"
                      " (earlier pages are no longer in view)", file=sys.stderr)
                asker = _asker(args, with_index=True)
                _print_answer(asker.ask(question), args.json)
    return EXIT_OK


def _chat_error(args: argparse.Namespace, question: str, message: str) -> None:
    print(f"docqa: error: {message}", file=sys.stderr)
    if args.json:
        _print_json({"question": question, "error": message})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        if getattr(args, "device", None) is not None:  # a bad --device is refused before any work
            from ..models.checkpoints import check_device

            check_device(args.device)
        return args.handler(args)
    except DocQAError as error:
        print(f"docqa: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        _interrupted(getattr(args, "interrupted", "interrupted"))


def _interrupted(message: str) -> NoReturn:
    """Ctrl-C: say so and end the process at once with status 130.

    A prefill under way cannot be cut short, Python's own shutdown would wait for it (and a
    second Ctrl-C would then abort torch mid-operation), and even with no model running, tearing
    down torch and transformers takes seconds on a busy machine. So after flushing, the process
    ends with os._exit: what is worth keeping is committed already, and a later writer recovers
    anything written past the last commit.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the exit short
    print(f"docqa: {message}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_INTERRUPTED)
