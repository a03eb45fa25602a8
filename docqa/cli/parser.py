"""The argument parser: every command, flag and help text (serve's in cli/serving.py)."""

from __future__ import annotations

import argparse

from .. import __version__
from ..config import (
    MAX_BATCH_SIZE,
    MAX_IMAGE_EDGE,
    MAX_PAGE_IMAGES,
    MAX_RESULTS,
)
from .agents import add_agent_parsers, add_watch_options
from .asking import ask_command, chat_command, describe_command
from .common import EXIT_ERROR, INDEX_HELP, KEPT_ON_INTERRUPT, key_value, positive_int, positive_int_up_to
from .indexing import info_command, ingest_command, remove_command
from .listing import add_list_parser
from .searching import eval_command, search_command
from .serving import add_serve_parser


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
        "ingest",
        help="index PDFs, images, office, web and text files under the given paths",
        description="Walk PATHs recursively, render every PDF page and image, embed it with a "
        "ColPali-family retriever and store it in the index. Unchanged files are skipped, changed "
        "files replace their old pages. Safe to re-run; stop it any time without losing committed files.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to index")
    ingest.add_argument("--index", default=None, help=INDEX_HELP)
    ingest.add_argument(
        "--model",
        help="retriever: hub id or local checkpoint folder (fixed at the "
        "index's first ingest; default ModernVBERT/colmodernvbert-merged on CPU, "
        "vidore/colqwen2-v1.0-hf on GPU)",
    )
    ingest.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    ingest.add_argument(
        "--batch-size",
        type=positive_int_up_to(MAX_BATCH_SIZE),
        default=4,
        help=f"pages per forward pass (default 4, at most {MAX_BATCH_SIZE})",
    )
    ingest.add_argument(
        "--image-edge",
        type=positive_int_up_to(MAX_IMAGE_EDGE),
        help="longest page edge in "
        f"pixels fed to the retriever (default per model family, at most {MAX_IMAGE_EDGE}; fixed "
        "at the first ingest)",
    )
    ingest.add_argument(
        "--index-mode",
        choices=["fast", "exact"],
        help="set when the index is created: "
        "fast (default) reranks the candidate stage's best pages with exact MaxSim; exact scores "
        "every page on every search",
    )
    ingest.add_argument(
        "--vector-type",
        choices=["bfloat16", "float16"],
        help="set when the index is created: "
        "how vectors are stored, bfloat16 (fast mode's default: multiplied without conversion) or "
        "float16 (full precision; exact mode's default)",
    )
    ingest.add_argument(
        "--pool-factor",
        type=positive_int,
        help="set when the index is created: merge similar "
        "vectors of each page into about 1/N as many (hierarchical token pooling; default 1 = keep"
        " all)",
    )
    ingest.add_argument(
        "--tag",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="store this tag on every document added or updated (repeatable); filter on it with search/ask --where",
    )
    _add_engine_option(ingest, "the retriever (fixed at the index's first ingest)")
    _add_trust_option(ingest)
    ingest.add_argument(
        "--sync", action="store_true", help="also remove indexed documents whose files are gone from the given folders"
    )
    ingest.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="render and encode on a Ray cluster (ADDRESS: auto, host:6379, ray://host:10001; "
        "without one a local Ray is started); this process plans and commits. "
        'Needs pip install "docqa[ray]"',
    )
    ingest.add_argument(
        "--ray-encoders",
        type=positive_int,
        metavar="N",
        help="with --ray: encoder actors, one model each (default: one per GPU, else CPUs - 1)",
    )
    ingest.add_argument(
        "--shards",
        nargs="+",
        metavar="DIR",
        help="instead of --index: put each file into one of these indexes (created when missing), "
        "picked by a stable hash of its path; a folder with a shards.json stands for its shards",
    )
    ingest.add_argument(
        "--hidden",
        action="store_true",
        help="take hidden files and folders (names starting with a dot); by default they are skipped and counted",
    )
    ingest.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only files whose name or path under the folder given matches GLOB (repeatable; e.g. '*.docx')",
    )
    ingest.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files and folders matching GLOB (repeatable; e.g. 'drafts/*')",
    )
    ingest.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    ingest.set_defaults(handler=ingest_command, interrupted=KEPT_ON_INTERRUPT)

    search = commands.add_parser(
        "search",
        help="find the pages that best match a question",
        description="Embed QUERY with the index's retriever and print the top pages by exact "
        "late-interaction (MaxSim) score.",
    )
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--index", default=None, help=INDEX_HELP)
    search.add_argument(
        "-k", type=positive_int, default=5, help=f"number of pages to return (default 5; at most {MAX_RESULTS})"
    )
    search.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    search.add_argument(
        "--exact",
        action="store_true",
        help="score every page by brute-force MaxSim instead of using the candidate index",
    )
    search.add_argument(
        "--rerank",
        type=positive_int,
        metavar="N",
        help="fast mode: rerank the candidate stage's best N pages (default: the depth the index chose "
        "from its own recall estimate, see info; more finds more of the exact top k, slower)",
    )
    _add_filter_options(search)
    _add_shard_options(search)
    _add_engine_option(search, "the query encoder (must be the index's)")
    _add_trust_option(search)
    search.add_argument(
        "--heatmaps",
        metavar="DIR",
        help="write one PNG per result into DIR: the page with "
        "where the query matches drawn over it and the strongest region boxed",
    )
    search.add_argument("--json", action="store_true", help="print the results as one JSON object")
    search.set_defaults(handler=search_command)

    info = commands.add_parser(
        "info",
        help="show what an index holds",
        description="Print the index's model, document and page counts and size, and how searches run:"
        " exact, or two-stage with the recall@10 the index estimated for itself against exact MaxSim.",
    )
    info.add_argument("--index", default=None, help=INDEX_HELP)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=info_command)

    add_list_parser(commands, _add_filter_options)

    remove = commands.add_parser(
        "remove",
        help="remove documents from an index",
        description="Delete the documents at PATHs (a folder removes every "
        "document under it). The files themselves are not touched.",
    )
    remove.add_argument("paths", nargs="+", metavar="PATH")
    remove.add_argument("--index", default=None, help=INDEX_HELP)
    remove.add_argument("--json", action="store_true", help="print one JSON object")
    remove.set_defaults(
        handler=remove_command,
        interrupted="interrupted; a removal is one commit: the index holds all of it or none of it",
    )

    ask = commands.add_parser(
        "ask",
        help="answer a question from the best pages, citing file and page",
        description="Retrieve the top pages for QUESTION and let a vision-language model read their "
        "images and answer, streaming the text, then list the pages shown (* = cited by the answer). "
        "With --image, answer about one image or PDF page without any index.",
    )
    ask.add_argument("question", metavar="QUESTION")
    ask.add_argument("--index", default=None, help=INDEX_HELP)
    ask.add_argument("-k", type=positive_int, default=3, help="pages to retrieve (default 3)")
    ask.add_argument("--image", metavar="FILE", help="answer about this image or PDF page instead of an index")
    ask.add_argument("--page", type=positive_int, default=1, help="with --image: the page of a PDF (default 1)")
    _add_filter_options(ask)
    _add_shard_options(ask)
    ask.add_argument(
        "--heatmaps",
        metavar="DIR",
        help="write one PNG per page shown to the model into DIR, "
        "boxing the region that best matches the question together with the answer",
    )
    _add_answer_options(ask)
    ask.set_defaults(handler=ask_command)

    chat = commands.add_parser(
        "chat",
        help="multi-turn questions over an index (also reads questions from a pipe)",
        description="A conversation over the index: each question retrieves pages in the context of the "
        "conversation, and earlier pages stay in view up to --max-pages images (oldest dropped first, "
        "with a note). Commands: /pages lists the pages in context, /reset starts over, /quit leaves. "
        "With stdin a pipe, each line is one question.",
    )
    chat.add_argument("--index", default=None, help=INDEX_HELP)
    chat.add_argument("-k", type=positive_int, default=3, help="pages to retrieve per question (default 3)")
    chat.add_argument(
        "--max-images",
        type=positive_int,
        default=6,
        help="page images kept in the conversation (default 6; oldest dropped first; "
        f"lowered to at most {MAX_PAGE_IMAGES} and to what the model's context holds)",
    )
    _add_filter_options(chat)
    _add_shard_options(chat)
    _add_answer_options(chat)
    chat.set_defaults(handler=chat_command)

    describe = commands.add_parser(
        "describe",
        help="caption or describe one page of a PDF or an image",
        description="Describe one page of FILE (a PDF or an image) with the answer model; no index needed.",
    )
    describe.add_argument("file", metavar="FILE")
    describe.add_argument("--page", type=positive_int, default=1, help="the page to describe (default 1)")
    _add_answer_options(describe, max_pages=False)
    describe.set_defaults(handler=describe_command)

    evaluate = commands.add_parser(
        "eval",
        help="measure retrieval quality on judged queries (nDCG@5/10, recall@k, MRR@k)",
        description="Run every query of QRELS through the index and print nDCG@5, nDCG@10, recall@k "
        "and MRR@k averaged over queries (nDCG gain = grade, log2 discount, ideal DCG from all relevant "
        'pages). QRELS is a JSONL file of {"query": str, "relevant": [{"path", "page", '
        '"grade"}]} lines, or a folder in BEIR layout (queries, qrels, optional corpus) as ViDoRe '
        "publishes it. Relevant pages that match no indexed page are counted and named.",
    )
    evaluate.add_argument("qrels", metavar="QRELS", help="JSONL file or BEIR folder of judged queries")
    evaluate.add_argument("--index", default=None, help=INDEX_HELP)
    evaluate.add_argument("-k", type=positive_int, default=10, help="cut-off for recall@k and MRR@k (default 10)")
    evaluate.add_argument(
        "--exact",
        action="store_true",
        help="also evaluate exact (brute-force MaxSim) search, to see what the default costs",
    )
    evaluate.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=eval_command)

    add_serve_parser(commands, add_watch_options)
    add_agent_parsers(commands, _add_engine_option)
    return parser


def _add_answer_options(parser: argparse.ArgumentParser, max_pages: bool = True) -> None:
    parser.add_argument(
        "--answer-model",
        help="image-text-to-text chat model: hub id or local folder "
        "(default HuggingFaceTB/SmolVLM-500M-Instruct on CPU, Qwen/Qwen2.5-VL-3B-Instruct on GPU)",
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    _add_engine_option(parser, "the answer model (the retriever always uses the index's engine)")
    if max_pages:
        parser.add_argument(
            "--max-pages",
            type=positive_int,
            default=3,
            help="most page images shown to the model at once (default 3; bounds CPU time; "
            f"lowered to at most {MAX_PAGE_IMAGES} and to what the model's context holds)",
        )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=256, help="longest answer in tokens (default 256)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (chat: one per line)")


def _add_trust_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the retriever checkpoint run Python code of its own (off by default; "
        "recorded in the index, and needed again on every command that loads it)",
    )


def _add_engine_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--engine",
        choices=("torch", "openvino"),
        help=f"what runs {what}: openvino (int8, the CPU default where it runs the model) "
        "or torch (fp32 on CPU, bf16 on GPU)",
    )


def _add_filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--where",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="only documents tagged KEY=VALUE (see ingest --tag; repeatable, all must hold)",
    )
    parser.add_argument(
        "--path",
        metavar="GLOB",
        help="only documents whose path matches GLOB (* matches across folders, e.g. '*/2024/*.pdf')",
    )


def _add_shard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards",
        nargs="+",
        metavar="DIR",
        help="search these indexes (shards of one collection, built with the same model) as "
        "one, instead of --index; a folder with a shards.json stands for the shards it lists",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="with --shards: hold each shard in a Ray actor on the cluster at ADDRESS (without "
        'one a local Ray is started); needs pip install "docqa[ray]"',
    )
