"""`docqa serve`: its flags and its command (kept together, in one small module), and the access
flags `docqa mcp` shares with it."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .common import EXIT_OK, INDEX_HELP, positive_int


def add_access_options(parser: argparse.ArgumentParser, what: str = "", *, random: bool = True) -> None:
    """--token-file, --token and --allow-host: who may call, and by which Host name (``what`` starts
    each help text; ``random``: a token is made up when none is given)."""
    made_up = ", else a random token is made and printed" if random else " (one of them is required)"
    parser.add_argument(
        "--token-file",
        help=f"{what}read the token from this file (at least 16 characters); else $DOCQA_TOKEN{made_up}",
    )
    parser.add_argument(
        "--token", help=f"{what}the token itself (visible in `ps`: prefer --token-file or $DOCQA_TOKEN)"
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help=f"{what}also answer to this Host name (repeatable; localhost, 127.0.0.1 and [::1] always)",
    )


def check_access(args: argparse.Namespace, *, random: bool = True) -> None:
    """Fail on a short, unreadable or (unless ``random``) missing token before anything loads."""
    import os

    from ..serve import resolve_token

    resolve_token(args.token, args.token_file, os.environ, random=random)


def add_serve_parser(commands, add_watch_options: Callable[..., None]) -> None:
    """The `serve` subcommand and its flags (``add_watch_options``: `docqa watch`'s --tag, --settle, --rescan)."""
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API and the web page over an index",
        description="Search, ask (streamed), page images with heatmaps, uploads ingested in the background "
        "and a documents list, as JSON endpoints under /api (schema at /openapi.json) and a web page at /. "
        "Every request needs a token (random unless given; the one-time login URL printed at start logs "
        "a browser in). Binds 127.0.0.1 unless --host says otherwise, which then requires TLS "
        '(--certfile/--keyfile) or --insecure. See docs/server-security.md. Needs the serve extra: pip install "docqa[serve]".',
    )
    serve.add_argument("--index", default=None, help=INDEX_HELP + " (created on the first upload)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other address requires --certfile/--keyfile or --insecure)",
    )
    serve.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    add_access_options(serve)
    serve.add_argument("--certfile", help="TLS certificate (PEM); with --keyfile the server speaks https")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without TLS")
    serve.add_argument(
        "--max-upload-pages", type=positive_int, default=500, help="most pages one uploaded file may have (default 500)"
    )
    serve.add_argument(
        "--upload-quota-mb",
        type=positive_int,
        default=2048,
        help="disk space all stored uploads may take, in MB (default 2048)",
    )
    serve.add_argument(
        "--absolute-paths", action="store_true", help="show documents' absolute paths in responses (default: relative)"
    )
    serve.add_argument("--model", help="retriever for a new index (as for ingest; ignored once the index has a model)")
    serve.add_argument("--answer-model", help="image-text-to-text model for /api/ask (loaded on the first question)")
    serve.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    serve.add_argument(
        "--max-upload-mb", type=positive_int, default=100, help="largest upload accepted, in MB (default 100)"
    )
    serve.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="FOLDER",
        help="keep the index in step with this folder while serving, as docqa watch does (repeatable; "
        'needs the watch extra: pip install "docqa[watch]")',
    )
    add_watch_options(serve, "with --watch: ")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from ..serve import check_bind, require_serve_extra, serve

    check_bind(args.host, tls=bool(args.certfile), insecure=args.insecure)
    require_serve_extra()
    check_access(args)
    serve(
        args.index,
        host=args.host,
        port=args.port,
        token=args.token,
        token_file=args.token_file,
        allow_hosts=args.allow_host,
        certfile=args.certfile,
        keyfile=args.keyfile,
        insecure=args.insecure,
        model=args.model,
        answer_model=args.answer_model,
        device=args.device,
        max_upload_mb=args.max_upload_mb,
        max_upload_pages=args.max_upload_pages,
        upload_quota_mb=args.upload_quota_mb,
        absolute_paths=args.absolute_paths,
        watch=args.watch,
        settle_s=args.settle,
        rescan_s=args.rescan,
        watch_tags=dict(args.tag),
    )
    return EXIT_OK
