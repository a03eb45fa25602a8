"""Where indexes live and the knobs of a run, with environment overrides."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHUNK_PAGES = 8  # PDF pages per pdftoppm call (here, not in inputs/render: the CLI imports this module)
DEFAULT_TIMEOUT_S = 120.0  # poppler time allowed per file

DEFAULT_INDEX = "default"

# What one command may ask for at most: larger requests are lowered (with a note) or refused.
MAX_RESULTS = 1000  # pages one search returns (-k)
MAX_PAGE_IMAGES = 20  # page images one question shows the answer model (--max-pages, --max-images)
MAX_IMAGE_EDGE = 4096  # px, the retriever's page edge (--image-edge); 2048 is the largest default
MAX_BATCH_SIZE = 256  # pages per retriever forward pass (--batch-size)


def docqa_home() -> Path:
    """The folder that holds `indexes/`: $DOCQA_HOME, else the current directory."""
    return Path(os.environ.get("DOCQA_HOME") or os.getcwd())


def index_path(name_or_path: str | os.PathLike[str] | None) -> Path:
    """`indexes/<name>` under docqa_home(); a value containing a path separator is a path."""
    value = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_INDEX
    if os.sep in value or (os.altsep and os.altsep in value) or value in (".", ".."):
        return Path(value).expanduser().absolute()
    return docqa_home() / "indexes" / value


@dataclass(frozen=True)
class IngestSettings:
    """Per-run ingest knobs; None means the default of the index's model family."""

    model: str | None = None
    device: str | None = None
    batch_size: int = 4
    image_edge: int | None = None
    engine: str | None = None  # "torch" | "openvino"; None: the index's, else the device's default
    sync: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # stored on every document this run adds or updates
    chunk_pages: int = DEFAULT_CHUNK_PAGES  # PDF pages per pdftoppm call: bounds memory on huge files
    render_timeout_s: float = field(  # poppler time allowed per file
        default_factory=lambda: float(os.environ.get("DOCQA_RENDER_TIMEOUT", DEFAULT_TIMEOUT_S))
    )
    progress: bool = False
    ray: str | None = None  # render and encode on Ray: "local" starts one, else a cluster address
    ray_encoders: int | None = None  # encoder actors (default: one per GPU, else CPUs - 1)
    on_progress: Callable[[int, int], None] | None = None  # (pages encoded, pages planned), after each batch
