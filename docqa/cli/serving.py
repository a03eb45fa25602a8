"""`docqa serve`: its flags and its command (kept together, in one small module)."""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK, INDEX_HELP, positive_int


def add_serve_parser(commands) -> None:
    """The `serve` subcommand and its flags."""
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
    serve.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    serve.add_argument("--token", help="require this token on every request (Authorization: Bearer TOKEN, "
                       "or open the page once as /?token=TOKEN); defaults to $DOCQA_TOKEN")
    serve.add_argument("--model", help="retriever for a new index (as for ingest; ignored once the index "
                       "has a model)")
    serve.add_argument("--answer-model", help="image-text-to-text model for /api/ask (loaded on the first "
                       "question)")
    serve.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    serve.add_argument("--max-upload-mb", type=positive_int, default=100,
                       help="largest upload accepted, in MB (default 100)")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
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
