"""Ingest planning: walk the given paths, sniff and hash each file, and skip what is unchanged; the
files left to (re-)index become jobs. Also --sync's removal of documents whose files are gone."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..config import IngestSettings
from ..errors import DocQAError, InputFileError
from ..index import NewPage
from ..inputs import sources
from ..inputs.render import count_pages
from .planning import plan_source
from .report import IngestReport

if TYPE_CHECKING:
    from ..index import IndexStorage


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
    converting: Future | None = None  # office/web/text files: the PDF being made (page_count 0 till then)
    resumed: int = 0  # pages taken from the checkpoint an earlier, stopped ingest left
    saved: int = 0  # pages (the first of `pages`) that are in the index's checkpoint
    saved_at: float = field(default_factory=time.monotonic)  # when they were last checkpointed
    committed: bool = False

    def converted(self, timeout_s: float) -> InputFileError | None:
        """Wait for the conversion to PDF and count its pages; the error if it failed."""
        if self.converting is None:
            return None
        future, self.converting = self.converting, None
        try:
            future.result()
            self.page_count = count_pages(self.path, self.kind, timeout_s)
        except InputFileError as error:
            return error
        except DocQAError as error:
            return InputFileError(sources.printable(self.path), str(error))
        return None

    def store_page(self, storage: IndexStorage, number: int, width: int, height: int, vectors: np.ndarray) -> None:
        """Append one encoded page's vectors (invisible until commit_job) and remember where they are."""
        self.pages.append(storage.append_page(number, width, height, vectors))

    def unchanged_on_disk(self) -> bool:
        """Whether the file still has the size and mtime it had when it was hashed."""
        try:
            after = self.path.stat()
        except OSError:
            return False
        return (after.st_size, after.st_mtime) == (self.size, self.mtime)

    def checkpoint_due(self, every_s: float) -> bool:
        """Whether pages encoded since the last checkpoint should be checkpointed now: the document is
        unfinished (a finished one commits instead) and `every_s` seconds have passed."""
        unsaved = self.saved < len(self.pages) < self.page_count
        return unsaved and time.monotonic() - self.saved_at >= every_s

    def checkpoint(self, storage: IndexStorage) -> int:
        """Checkpoint the pages encoded since the last checkpoint (not when the file changed since it
        was hashed: its pages may then mix two versions); returns the pages the checkpoint keeps."""
        if self.saved < len(self.pages) and self.unchanged_on_disk():
            storage.checkpoint(self.path, self.sha256, self.pages[self.saved :])
            self.saved, self.saved_at = len(self.pages), time.monotonic()
        return self.saved


def plan_jobs(
    storage: IndexStorage,
    given: list[Path],
    report: IngestReport,
    seen: set[Path],
    settings: IngestSettings,
    scanned: tqdm,
) -> list[PlannedFile]:
    """Walk, sniff and hash; return the files whose content is new or changed (unchanged files
    only get `tags` added to their metadata). Conversions to PDF start here, in the background."""
    timeout_s, tags = settings.render_timeout_s, settings.tags
    jobs: list[PlannedFile] = []
    for found in sources.walk(given, settings.walk):
        if isinstance(found, sources.Skipped):
            report.skip(found.path, found.reason, found.group)
            continue
        scanned.update()
        if isinstance(found, tuple):
            report.fail(found[0], found[1])
            continue
        seen.add(found)
        try:
            source = sources.classify(found)
            if not plan_source(source, report) or source.kind is None:
                continue
            before = found.stat()
            digest = sources.sha256_of(found)
        except OSError as error:
            report.fail(found, f"cannot read the file: {error.strerror or error}")
            continue
        existing = storage.document(found)  # the catalogue is read here, written only for tags of unchanged files
        if existing is not None and existing.sha256 == digest:
            report.unchanged += 1
            if tags:
                storage.add_tags(existing.id, dict(tags))
            continue
        converting = None
        try:
            if source.kind in sources.CONVERTED:
                pages, converting = 0, _converter().submit(found, source.kind, sha256=digest)
            else:
                pages = count_pages(found, source.kind, timeout_s)
        except InputFileError as error:
            report.fail(error.path, error.reason)
            continue
        metadata = {**(storage.metadata(existing.id) if existing else {}), **tags}  # an update keeps its tags
        jobs.append(
            PlannedFile(
                found,
                source.kind,
                digest,
                before.st_size,
                before.st_mtime,
                pages,
                existing is not None,
                metadata,
                converting=converting,
            )
        )
    return jobs


def resume_jobs(storage: IndexStorage, jobs: list[PlannedFile], report: IngestReport) -> None:
    """Start each job from the pages its checkpoint keeps (an earlier ingest of the same content that
    stopped mid-document); a checkpoint of other content at the path is dropped. Rendering then
    starts at the first missing page."""
    for job in jobs:
        pages = storage.checkpointed(job.path, job.sha256)
        if job.page_count:  # a conversion still running counts its pages later (see _page_stream)
            pages = pages[: job.page_count]
        if pages:
            job.pages, job.resumed, job.saved = list(pages), len(pages), len(pages)
            report.resume(job.path, len(pages))


def converted_jobs(jobs: list[PlannedFile], settings: IngestSettings, report: IngestReport) -> list[PlannedFile]:
    """`jobs` with every conversion finished and counted; those that failed are reported and dropped."""
    kept = []
    for job in jobs:
        error = job.converted(settings.render_timeout_s)
        if error is not None:
            report.fail(job.path, error.reason)
        else:
            kept.append(job)
    return kept


def _converter():
    from ..inputs.converters import default_converter

    return default_converter()


def remove_vanished(storage: IndexStorage, given: list[Path], seen: set[Path], report: IngestReport) -> None:
    """--sync: drop documents under the given folders whose files are gone."""
    resolved = list(dict.fromkeys([*given, *(path.resolve() for path in given)]))  # documents keep the given path
    gone = [doc for doc in storage.documents_under(resolved) if doc.file not in seen and not doc.file.exists()]
    if gone:
        report.removed += storage.delete([doc.id for doc in gone])
