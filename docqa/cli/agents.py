"""`docqa mcp`, `docqa watch`, `docqa daemon`: where agents and live folders are served."""

from __future__ import annotations

import argparse
import sys

from ..config import MAX_BATCH_SIZE, IngestSettings
from .common import EXIT_OK, INDEX_HELP, key_value, positive_int, positive_int_up_to, print_json
from .serving import add_access_options, check_access


def add_agent_parsers(commands, add_engine_option) -> None:
    """The `mcp`, `watch` and `daemon` subcommands and their flags."""
    mcp = commands.add_parser(
        "mcp",
        help="serve the index to LLM agents over the Model Context Protocol",
        description="Tools search, ask, get_page and list_documents (page images as MCP image content) and "
        "the page resources docqa://page/ID, over stdio (the agent starts this command) or streamable HTTP "
        '(127.0.0.1 only, Bearer token required). Needs the mcp extra: pip install "docqa[mcp]". '
        "Client set-up: docs/mcp.md.",
    )
    mcp.add_argument("--index", default=None, help=INDEX_HELP)
    mcp.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="stdio (default) or http")
    mcp.add_argument("--host", default="127.0.0.1", help="http: loopback address to bind (default 127.0.0.1)")
    mcp.add_argument("--port", type=positive_int, default=8765, help="http: port (default 8765)")
    add_access_options(mcp, "http: ", random=False)
    mcp.add_argument("--answer-model", help="image-text-to-text model for the ask tool (loaded on first use)")
    mcp.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    add_engine_option(mcp, "the answer model (the retriever always uses the index's engine)")
    mcp.set_defaults(handler=mcp_command)

    watch = commands.add_parser(
        "watch",
        help="keep an index in step with folders as their files change",
        description="Catch up with one ingest --sync of FOLDERs, then ingest new and changed files and remove "
        "deleted or moved ones as they happen, each file once it has stopped changing for --settle seconds. "
        "Safe to kill at any time: the next start catches up. One watcher per index. Ctrl-C stops.",
    )
    watch.add_argument("folders", nargs="+", metavar="FOLDER")
    watch.add_argument("--index", default=None, help=INDEX_HELP)
    watch.add_argument("--model", help="retriever for a new index (as for ingest)")
    watch.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    watch.add_argument(
        "--batch-size", type=positive_int_up_to(MAX_BATCH_SIZE), default=4, help="pages per forward pass (default 4)"
    )
    add_watch_options(watch)
    watch.add_argument("--json", action="store_true", help="print one JSON object per batch")
    watch.set_defaults(handler=watch_command, interrupted="stopped watching; everything synced so far is committed")

    daemon = commands.add_parser(
        "daemon",
        help="keep an index's models loaded for search, ask and chat (started on first use)",
        description="Serve --index to docqa search/ask/chat of this user over a private unix socket until idle "
        "for --idle-timeout seconds. Commands start one by themselves (DOCQA_DAEMON=off turns that off); "
        "this runs one in the foreground.",
    )
    daemon.add_argument("--index", default=None, help=INDEX_HELP)
    daemon.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    daemon.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="exit after this long without a request (default $DOCQA_DAEMON_IDLE_S or 600)",
    )
    daemon.add_argument("--socket", metavar="PATH", help="listen here instead of where clients look (for tests)")
    daemon.set_defaults(handler=daemon_command)


def add_watch_options(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--tag, --settle and --rescan, as `docqa watch` and `docqa serve --watch` take them (``what``
    starts each help text)."""
    parser.add_argument(
        "--tag",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help=f"{what}store this tag on every document added or updated (repeatable)",
    )
    parser.add_argument(
        "--settle",
        type=_settle_seconds,
        default=1.0,
        metavar="SECONDS",
        help=f"{what}a file is taken once unchanged for this long (0 to 3600, default 1.0)",
    )
    parser.add_argument(
        "--rescan",
        type=float,
        metavar="SECONDS",
        help=f"{what}also run a full ingest --sync this often (default: only at start)",
    )


def _settle_seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"takes 0 to 3600 seconds, not {text}")
    return value


def mcp_command(args: argparse.Namespace) -> int:
    from ..serve.mcp import run

    if args.transport == "http":
        check_access(args, random=False)
    run(
        args.index,
        transport=args.transport,
        host=args.host,
        port=args.port,
        token=args.token,
        token_file=args.token_file,
        allow_hosts=args.allow_host,
        device=args.device,
        answer_model=args.answer_model,
        engine=args.engine,
    )
    return EXIT_OK


def watch_command(args: argparse.Namespace) -> int:
    from ..watch import FolderWatcher, format_batch

    def report(batch) -> None:
        if args.json:
            print_json(batch.to_json())
        else:
            print(format_batch(batch), flush=True)
        for path, error in batch.failures:
            print(f"  failed: {path}: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()

    settings = IngestSettings(model=args.model, device=args.device, batch_size=args.batch_size, tags=dict(args.tag))
    watcher = FolderWatcher(
        args.folders, args.index, settings=settings, settle_s=args.settle, rescan_s=args.rescan, on_batch=report
    )
    print(
        f"docqa: watching {', '.join(map(str, watcher.folders))} into {watcher.index.path} (Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    watcher.run()
    return EXIT_OK


def daemon_command(args: argparse.Namespace) -> int:
    from ..serve.daemon import run_daemon

    run_daemon(args.index, socket_file=args.socket, device=args.device, idle_s=args.idle_timeout)
    return EXIT_OK
