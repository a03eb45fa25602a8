"""Where indexes live and the knobs of a run, with environment overrides."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_INDEX = "default"
DEFAULT_CHUNK_PAGES = 8  # PDF pages per pdftoppm call
DEFAULT_TIMEOUT_S = 120.0  # poppler time allowed per file

# What one command may ask for at most: larger requests are lowered (with a note) or refused.
MAX_RESULTS = 1000  # pages one search returns (-k)
MAX_PAGE_IMAGES = 20  # page images one question shows the answer model (--max-pages, --max-images)
MAX_IMAGE_EDGE = 4096  # px, the retriever's page edge (--image-edge); 2048 is the largest default
MAX_BATCH_SIZE = 256  # pages per retriever forward pass (--batch-size)
MAX_RESULTS_WHY = "the most pages one search returns"


def lowered(option: str, value: int, ceiling: int, why: str) -> tuple[int, str | None]:
    """`value` kept within `ceiling`, and the note saying it was lowered (None when it fits)."""
    if value <= ceiling:
        return value, None
    return ceiling, f"{option} {value} lowered to {ceiling}: {why}"


def split_key_value(text: str) -> tuple[str, str]:
    """KEY=VALUE (a tag given to --tag / --where or the server's ``where``) as (key, value); the
    value may be empty or hold more "=" signs. ValueError when there is no "=" or no key."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def docqa_home() -> Path:
    """The folder that holds `indexes/`: $DOCQA_HOME, else the current directory."""
    return Path(os.environ.get("DOCQA_HOME") or os.getcwd())


def index_path(name_or_path: str | os.PathLike[str] | None) -> Path:
    """`indexes/<name>` under docqa_home(); a value containing a path separator is a path."""
    value = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_INDEX
    if os.sep in value or (os.altsep and os.altsep in value) or value in (".", ".."):
        return Path(value).expanduser().absolute()
    return docqa_home() / "indexes" / value


def index_location_problem(name_or_path: str | os.PathLike[str] | None, path: Path) -> str | None:
    """Why `path` (resolved from --index `name_or_path`) cannot hold an index, or None."""
    given = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_INDEX
    blocker = next((folder for folder in [path, *path.parents] if folder.exists() and not folder.is_dir()), None)
    if blocker is None:
        return None
    what = "is a file" if blocker == path else f"is under {blocker}, which is a file"
    return (
        f"--index {given}: {path} {what}, not an index folder (name a folder, or a name under {where_indexes_live()})"
    )


def where_indexes_live() -> str:
    """Where index names are looked up, said for messages."""
    home = os.environ.get("DOCQA_HOME")
    root = docqa_home() / "indexes"
    return f"{root} (DOCQA_HOME={home})" if home else f"{root} (DOCQA_HOME is not set: the current folder)"


def index_not_found_message(name_or_path: str | os.PathLike[str] | None, path: Path) -> str:
    """ "No index" naming where it looked (and, for a name, where names are looked up)."""
    given = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_INDEX
    where = f" (index names are looked up in {where_indexes_live()})" if path.parent == docqa_home() / "indexes" else ""
    return f"no index at {path}{where}; create it with `docqa ingest PATH... --index {given}`"


@dataclass(frozen=True)
class WalkOptions:
    """What the walk takes: hidden files and folders (names starting with "."), and glob filters.

    `include` globs (any must match) apply to files; `exclude` globs to files and folders. A glob
    matches a file's name or its path relative to the folder given (``*.docx``, ``drafts/*``).
    """

    hidden: bool = False
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()


@dataclass(frozen=True)
class IngestSettings:
    """Per-run ingest knobs; None means the default of the index's model family."""

    model: str | None = None
    device: str | None = None
    batch_size: int = 4
    image_edge: int | None = None
    engine: str | None = None  # "torch" | "openvino"; None: the index's, else the device's default
    trust_remote_code: bool = False  # let a retriever checkpoint run code of its own (never kept from the index)
    sync: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # stored on every document this run adds or updates
    chunk_pages: int = DEFAULT_CHUNK_PAGES  # PDF pages per pdftoppm call: bounds memory on huge files
    render_timeout_s: float = field(  # poppler time allowed per file
        default_factory=lambda: float(os.environ.get("DOCQA_RENDER_TIMEOUT", DEFAULT_TIMEOUT_S))
    )
    # A long document's encoded pages are checkpointed (kept for a resume if the ingest stops) at
    # least this often, in seconds of ingest; 0: after every batch. A stop that is not a kill (a
    # failure, a cancel, Ctrl-C) checkpoints them anyway.
    checkpoint_s: float = 30.0
    progress: bool = False
    ray: str | None = None  # render and encode on Ray: "local" starts one, else a cluster address
    ray_encoders: int | None = None  # encoder actors (default: one per GPU, else CPUs - 1)
    on_progress: Callable[[int, int], None] | None = None  # (pages encoded, pages planned), after each batch
    walk: WalkOptions = field(default_factory=WalkOptions)  # --hidden, --include, --exclude
