"""`docqa list`: the documents of an index, with path, pages, size, kind, tags and when each was added."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from ..index.store import PageFilter

if TYPE_CHECKING:
    from ..api import DocIndex


def list_documents(index: DocIndex, where: dict[str, str], path: str | None) -> list[dict]:
    """Every document matching `where` tags and the `path` glob, ordered by path."""
    clause, params = PageFilter(where=where, path=path).sql()
    rows = index.store.db.execute(
        "SELECT path, pages, size, kind, sha256, metadata, indexed_at FROM documents"
        f" WHERE {clause} ORDER BY path_key", params).fetchall()
    return [{"path": row[0], "pages": row[1], "size": row[2], "kind": row[3], "sha256": row[4],
             "tags": json.loads(row[5] or "{}"), "added": _iso(row[6])} for row in rows]


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def add_parser(commands: argparse._SubParsersAction, index_help: str, add_filters) -> argparse.ArgumentParser:
    parser = commands.add_parser("list", help="list the documents of an index",
                                 description="Print each document with its path, pages, size, kind, tags "
                                 "and when it was added (or updated).")
    parser.add_argument("--index", default=None, help=index_help)
    add_filters(parser)
    parser.add_argument("--json", action="store_true", help='print {"documents": [{"path", "pages", ...}]}')
    return parser


def run(args: argparse.Namespace, open_index, print_json) -> int:
    documents = list_documents(open_index(args.index), dict(args.where), args.path)
    if args.json:
        print_json({"documents": documents})
        return 0
    for document in documents:
        tags = " ".join(f"{key}={value}" for key, value in document["tags"].items())
        print(f"{document['path']}\t{document['pages']} pages\t{document['size']:,} bytes\t{document['kind']}"
              f"\t{document['added'] or ''}{chr(9) + tags if tags else ''}")
    if not documents:
        print("(no documents match)" if args.where or args.path else "(the index has no documents)")
    return 0
