"""Ingest planning: walk the given paths, sniff and hash each file, and skip what is unchanged; the
files left to (re-)index become jobs. Also --sync's removal of documents whose files are gone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..errors import InputFileError
from ..index.store import NewPage
from ..inputs import sources
from ..inputs.render import count_pages
from .report import IngestReport

if TYPE_CHECKING:
    from ..index.storage import IndexStorage


@dataclass
class PlannedFile:
    """One file to (re-)index."""

    path: Path
    kind: str
    sha256: str
    size: int
    mtime: float
    page_count: int
    replaces: bool
    metadata: dict
    pages: list[NewPage] = field(default_factory=list)
    error: str | None = None

    def store_page(self, storage: IndexStorage, number: int, width: int, height: int, vectors: np.ndarray) -> None:
        """Append one encoded page's vectors (invisible until commit_job) and remember where they are."""
        self.pages.append(storage.append_page(number, width, height, vectors))


def plan_jobs(
    storage: IndexStorage, given: list[Path], report: IngestReport, seen: set[Path], timeout_s: float,
    scanned: tqdm, tags: dict[str, str],
) -> list[PlannedFile]:
    """Walk, sniff and hash; return the files whose content is new or changed (unchanged files
    only get `tags` added to their metadata)."""
    store = storage.store  # the index's catalogue: read here, written only for tags of unchanged files
    jobs: list[PlannedFile] = []
    for found in sources.walk(given):
        scanned.update()
        if isinstance(found, tuple):
            report.fail(found[0], found[1])
            continue
        seen.add(found)
        try:
            source = sources.classify(found)
            if source.kind is None:
                if source.claimed:
                    report.fail(found, sources.describe_content(sources.read_head(found)))
                else:
                    report.skipped += 1
                continue
            before = found.stat()
            digest = sources.sha256_of(found)
        except OSError as error:
            report.fail(found, f"cannot read the file: {error.strerror or error}")
            continue
        existing = store.document(found)
        if existing is not None and existing.sha256 == digest:
            report.unchanged += 1
            if tags:
                with store.transaction():
                    store.merge_metadata(existing.id, dict(tags))
            continue
        try:
            pages = count_pages(found, source.kind, timeout_s)
        except InputFileError as error:
            report.fail(error.path, error.reason)
            continue
        metadata = {**(store.metadata(existing.id) if existing else {}), **tags}  # an update keeps its tags
        jobs.append(
            PlannedFile(found, source.kind, digest, before.st_size, before.st_mtime, pages, existing is not None,
                        metadata)
        )
    return jobs


def remove_vanished(storage: IndexStorage, given: list[Path], seen: set[Path], report: IngestReport) -> None:
    """--sync: drop documents under the given folders whose files are gone."""
    resolved = [path.resolve() for path in given]
    gone = [doc for doc in storage.store.documents_under(resolved) if doc.file not in seen and not doc.file.exists()]
    if gone:
        report.removed += storage.delete([doc.id for doc in gone])
