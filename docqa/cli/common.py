"""What every command shares: exit statuses, opening an index, printing JSON, the argument types."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import (
    DEFAULT_INDEX,
    split_key_value,
)
from ..errors import DocQAError

if TYPE_CHECKING:
    from ..api import VectorSearchable


EXIT_OK, EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


KEPT_ON_INTERRUPT = (
    "interrupted; every document committed before this point is kept, and so are the encoded pages of"
    " the one under way (run ingest again to go on)"
)


INDEX_HELP = (
    f"index name (default {DEFAULT_INDEX!r}, stored in $DOCQA_HOME/indexes/NAME, DOCQA_HOME"
    " defaults to the current directory) or, if it contains a slash, a folder path"
)


def open_index(name: str | None, create: bool = False, options: dict | None = None):
    """Open an index; the import is here so `--help` does not pay for importing torch."""
    from ..api import DocIndex

    return DocIndex.open(name, create=create, options=options)


def open_searchable(args: argparse.Namespace) -> VectorSearchable:
    """The index to search: --shards as one (threads, or Ray actors with --ray), else --index."""
    if args.shards:
        from ..cluster.shards import ShardSet

        return ShardSet.open(args.shards, ray=args.ray)
    if args.ray is not None:
        raise DocQAError("--ray needs --shards (a single index is searched in this process)")
    return open_index(args.index)


def print_json(payload: dict) -> None:
    print(json.dumps(payload, ensure_ascii=False))


def heatmap_folder(value: str) -> Path:
    folder = Path(value).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DocQAError(f"--heatmaps {value}: cannot create the folder ({error.strerror or error})") from error
    return folder


def key_value(text: str) -> tuple[str, str]:
    try:
        key, value = split_key_value(text)
    except ValueError:
        key, value = "", ""
    if not key or '"' in key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a non-empty key without double quotes, got {text!r}")
    return key, value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_int_up_to(ceiling: int):
    """An argparse type: a whole number from 1 to `ceiling` (larger values are refused, not lowered)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > ceiling:
            raise argparse.ArgumentTypeError(f"at most {ceiling}, got {value}")
        return value

    parse.__name__ = "whole number"  # how argparse names the type in its messages
    return parse
