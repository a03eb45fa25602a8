"""`docqa list`: the documents of an index, with path, pages, size, kind, tags, when each was added
and its other paths (files with the same content)."""

from __future__ import annotations

import argparse

from .common import INDEX_HELP, open_index, print_json


def add_list_parser(commands: argparse._SubParsersAction, add_filters) -> None:
    parser = commands.add_parser(
        "list",
        help="list the documents of an index",
        description="Print each document with its path, pages, size, kind, tags and when it was added (or"
        " updated), and under it the other paths that have the same content (also at PATH).",
    )
    parser.add_argument("--index", default=None, help=INDEX_HELP)
    add_filters(parser)
    parser.add_argument("--json", action="store_true", help='print {"documents": [{"path", "pages", ...}]}')
    parser.set_defaults(handler=list_command)


def list_command(args: argparse.Namespace) -> int:
    documents = open_index(args.index).list_documents(where=dict(args.where), path=args.path)
    if args.json:
        print_json({"documents": documents})
        return 0
    for document in documents:
        tags = " ".join(f"{key}={value}" for key, value in document["tags"].items())
        print(
            f"{document['path']}\t{document['pages']} pages\t{document['size']:,} bytes\t{document['kind']}"
            f"\t{document['added'] or ''}{chr(9) + tags if tags else ''}"
        )
        for other in document["also_at"]:
            print(f"  also at {other}")
    if not documents:
        print("(no documents match)" if args.where or args.path else "(the index has no documents)")
    return 0
