"""The resident process (docqa.serve.daemon) as the CLI uses it: search and ask through it when it
serves this index and device, else None and the command runs in this process."""

from __future__ import annotations

import argparse
import sys

from ..config import MAX_RESULTS


def _resident(args: argparse.Namespace):
    """A connection to the resident process serving --index on --device (started when there is
    none), or None: then the command runs in this process (--shards, --ray, heatmaps, --image,
    --trust-remote-code, DOCQA_DAEMON=off, or no daemon could start)."""
    if (
        getattr(args, "shards", None)
        or getattr(args, "ray", None) is not None
        or getattr(args, "heatmaps", None)
        or getattr(args, "image", None)
        or getattr(args, "trust_remote_code", False)
    ):
        return None
    from ..config import index_path
    from ..serve.daemon import connect, enabled

    folder = index_path(args.index)
    if not enabled() or not folder.is_dir():
        return None
    return connect(folder, args.device)


def resident_search(args: argparse.Namespace):
    """The hits from the resident process, or None when it cannot serve this search."""
    connection = _resident(args)
    if connection is None:
        return None
    from ..serve.daemon import DaemonGone, RemoteHit

    try:
        reply = connection.request(
            {
                "op": "search",
                "query": args.query,
                "k": min(args.k, MAX_RESULTS),
                "exact": args.exact,
                "rerank": args.rerank,
                "where": dict(args.where),
                "path": args.path,
                "engine": args.engine,
            }
        )
        return [RemoteHit(**{**hit, "also_at": tuple(hit.get("also_at", ()))}) for hit in reply["hits"]]
    except DaemonGone:
        return None
    finally:
        connection.close()


def resident_asker(args: argparse.Namespace):
    """An asker whose models live in the resident process, or None."""
    connection = _resident(args)
    if connection is None:
        return None
    from ..serve.daemon import DaemonGone, RemoteAsker

    settings = {
        "answer_model": args.answer_model,
        "engine": args.engine,
        "k": args.k,
        "max_pages": getattr(args, "max_pages", args.k),
        "max_new_tokens": args.max_new_tokens,
        "max_images": getattr(args, "max_images", None),
        "where": dict(args.where),
        "path": args.path,
    }
    try:
        asker = RemoteAsker(connection, settings)
    except DaemonGone:
        connection.close()
        return None
    for note in asker.notes:
        print(f"docqa: note: {note}", file=sys.stderr)
    return asker
