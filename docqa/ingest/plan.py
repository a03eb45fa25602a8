"""Ingest planning: walk the given paths, sniff and hash each file, and skip what is unchanged; a
file whose content (sha256) is indexed already, or is an earlier job's, becomes another path (an
alias) of that document, not encoded again; the files left to (re-)index become jobs. Also --sync's
removal of documents and aliases whose files are gone."""

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
from ..index import AliasRecord, NewAlias, NewPage
from ..inputs import sources
from ..inputs.render import count_pages
from .planning import plan_source
from .report import IngestReport

if TYPE_CHECKING:
    from ..index import DocumentRecord, IndexStorage


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
    aliases: list[NewAlias] = field(default_factory=list)  # later files of this run with the same content

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
    only get `tags` added to their metadata). A file with the content of an indexed document is
    recorded as its alias here; one with the content of an earlier job is committed with it as its
    alias (an alias shares its document's tags). Conversions to PDF start here, in the background."""
    timeout_s, tags = settings.render_timeout_s, settings.tags
    jobs: list[PlannedFile] = []
    planned: dict[str, PlannedFile] = {}  # the jobs by content
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
        # the catalogue is read here, written only for tags of unchanged files and for aliases
        existing = storage.document(found) or storage.alias(found)
        if existing is not None and existing.sha256 == digest:
            report.unchanged += 1
            if tags:
                storage.add_tags(_document_id(existing), dict(tags))
            continue
        same = storage.document_with_content(digest)
        if same is not None:  # this content is indexed at another path
            storage.add_alias(found, same.id, size=before.st_size, mtime=before.st_mtime)
            report.duplicate(found, same.path)
            if tags:
                storage.add_tags(same.id, dict(tags))
            continue
        if digest in planned:  # an earlier file of this run: committed with it
            planned[digest].aliases.append(NewAlias(found, before.st_size, before.st_mtime))
            report.duplicate(found, sources.printable(planned[digest].path))
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
        # an update keeps its tags (an alias's are its document's)
        metadata = {**(storage.metadata(_document_id(existing)) if existing else {}), **tags}
        planned[digest] = PlannedFile(
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
        jobs.append(planned[digest])
    return jobs


def _document_id(record: DocumentRecord | AliasRecord) -> int:
    """The id of the document at a path: its own, or the one an alias is of."""
    return record.document_id if isinstance(record, AliasRecord) else record.id


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
    """--sync: take out the documents and aliases under the given folders whose files are gone. A
    document with an alias that still holds its content moves there (counted as moved, not removed)."""
    resolved = list(dict.fromkeys([*given, *(path.resolve() for path in given)]))  # documents keep the given path
    gone = [doc for doc in storage.documents_under(resolved) if doc.file not in seen and not doc.file.exists()]
    aliases = [alias for alias in storage.aliases_under(resolved) if alias.file not in seen and not alias.file.exists()]
    if gone or aliases:
        moved = storage.remove_paths(gone, aliases, fallback=False)
        report.removed += len(gone) - len(moved)
        report.moved += len(moved)
