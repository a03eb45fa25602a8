"""Ingest: walk → sniff → hash → render → encode (batched across files) → store → commit.

Each document commits in one SQLite transaction after all of its pages are encoded and their
vectors are durable, so a crash or a bad file never leaves a partial document visible.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tqdm import tqdm

from ..inputs import sources
from ..config import IngestSettings
from ..errors import DocQAError, InputFileError
from ..inputs.render import RenderedPage, count_pages, render_pages
from . import skipped as skips
from .planning import plan_source
from ..index.store import NewPage

if TYPE_CHECKING:
    from ..api import DocIndex
    from ..models.retriever import Retriever


@dataclass(frozen=True)
class Failure:
    path: str
    error: str


@dataclass
class IngestReport:
    index: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    skipped: int = 0
    pages_added: int = 0
    failures: list[Failure] = field(default_factory=list)
    skipped_files: list[skips.SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    timings: Timings = field(default_factory=lambda: Timings())

    def fail(self, path: Path | str, error: str) -> None:
        """Record a file that could not be indexed (its name made printable, whatever its bytes)."""
        self.failed += 1
        self.failures.append(Failure(sources.printable(path), error))

    def skip(self, path: Path | str, reason: str, group: str) -> None:
        """Record a file left out on purpose (hidden, excluded, unsupported, too large, no LibreOffice)."""
        self.skipped += 1
        self.skipped_files.append(skips.SkippedFile(sources.printable(path), reason, group))

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "documents": {
                "added": self.added,
                "updated": self.updated,
                "unchanged": self.unchanged,
                "removed": self.removed,
                "failed": self.failed,
                "skipped": self.skipped,
            },
            "pages_added": self.pages_added,
            "failures": [{"path": f.path, "error": f.error} for f in self.failures],
            "skipped": [item.to_json() for item in skips.all_skipped(self)],
            "seconds": round(self.seconds, 3),
            "timings": self.timings.to_json(),
        }


@dataclass
class Timings:
    """Where an ingest's time went, per stage (seconds of work; render and preprocess run in their
    own threads and overlap encode, so the stages add up to more than the wall time)."""

    render_s: float = 0.0  # poppler / image decoding (render thread)
    preprocess_s: float = 0.0  # the processor: resizing, tiling, tokenizing (preprocess thread)
    encode_s: float = 0.0  # the model's forward passes (main thread)
    store_s: float = 0.0  # vector appends and commits (main thread)

    def to_json(self) -> dict:
        return {name: round(value, 3) for name, value in asdict(self).items()}


@dataclass
class Job:
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

    def store_page(self, index: DocIndex, number: int, width: int, height: int, vectors: np.ndarray) -> None:
        """Append one encoded page's vectors (invisible until commit_job) and remember where they are."""
        self.pages.append(index.add_page(number, width, height, vectors))


# Renders and encodes the planned jobs, storing pages and committing each finished job with
# commit_job: the local pipeline below, or docqa.cluster's on Ray.
Pipeline = Callable[["DocIndex", list[Job], IngestSettings, IngestReport, tqdm], None]

_DONE = object()


def _glibc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or a no-op where the C library is not glibc.

    Each batch allocates and frees tens of MB of image arrays in two threads; glibc keeps such freed
    blocks in its per-thread heaps (its mmap threshold slides up past them), so a long ingest's
    resident memory creeps up by the spread of those heaps. Trimming after every batch hands the
    free pages back: measured, it halves how far a 200-page PDF raises peak RSS over a 10-page one
    (benchmarks/ingest_memory.py), at no measurable time.
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_release_free_memory = _glibc_trim()


def run_ingest(
    index: DocIndex, paths: Iterable[str | Path], settings: IngestSettings, retriever: Retriever | None,
    *, pipeline: Pipeline | None = None,
) -> IngestReport:
    """Bring the index up to date with `paths` (the caller holds the write lock).

    Planning (walk, sniff, hash, skip unchanged), --sync and the report are the same whoever
    encodes: `pipeline` (default: render and encode here with `retriever`).
    """
    started = time.monotonic()
    report = IngestReport(index=str(index.path))
    given = [Path(p).expanduser().absolute() for p in paths]
    seen: set[Path] = set()
    with tqdm(desc="scan", unit="file", disable=not settings.progress, leave=False) as scanned:
        jobs = _plan(index, given, report, seen, settings, scanned)
    if pipeline is not None:  # other pipelines need every page count up front
        jobs = _converted_jobs(jobs, settings, report)
    if settings.sync:
        _remove_vanished(index, given, seen, report)
    total_pages = sum(job.page_count for job in jobs)
    if settings.on_progress is not None:
        settings.on_progress(0, total_pages)
    with tqdm(
        total=total_pages, unit="page", desc="ingest", disable=not settings.progress, leave=False
    ) as bar:
        if pipeline is None:
            _encode_and_commit(index, jobs, settings, retriever, report, bar)
        else:
            pipeline(index, jobs, settings, report, bar)
    index.compact_if_wasteful()
    report.seconds = time.monotonic() - started
    return report


def _converted_jobs(jobs: list[Job], settings: IngestSettings, report: IngestReport) -> list[Job]:
    """`jobs` with every conversion finished and counted; those that failed are reported and dropped."""
    kept = []
    for job in jobs:
        error = job.converted(settings.render_timeout_s)
        if error is not None:
            report.fail(job.path, error.reason)
        else:
            kept.append(job)
    return kept


def _plan(
    index: DocIndex, given: list[Path], report: IngestReport, seen: set[Path], settings: IngestSettings,
    scanned: tqdm,
) -> list[Job]:
    """Walk, sniff and hash; return the files whose content is new or changed (unchanged files
    only get `tags` added to their metadata). Conversions to PDF start here, in the background."""
    jobs: list[Job] = []
    timeout_s, tags = settings.render_timeout_s, settings.tags
    for found in sources.walk(given, settings.walk):
        scanned.update()
        if isinstance(found, tuple):
            report.fail(found[0], found[1])
            continue
        if isinstance(found, sources.Skipped):
            report.skip(found.path, found.reason, found.group)
            continue
        seen.add(found)
        try:
            source = sources.classify(found)
            if not plan_source(source, report):
                continue
            before = found.stat()
            digest = sources.sha256_of(found)
        except OSError as error:
            report.fail(found, f"cannot read the file: {error.strerror or error}")
            continue
        existing = index.store.document(found)
        if existing is not None and existing.sha256 == digest:
            report.unchanged += 1
            if tags:
                with index.store.transaction():
                    index.store.merge_metadata(existing.id, tags)
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
        metadata = {**(index.store.metadata(existing.id) if existing else {}), **tags}  # an update keeps its tags
        jobs.append(
            Job(found, source.kind, digest, before.st_size, before.st_mtime, pages, existing is not None, metadata,
                converting=converting)
        )
    return jobs


def _converter():
    from ..inputs.converters import default_converter

    return default_converter()


def _remove_vanished(index: DocIndex, given: list[Path], seen: set[Path], report: IngestReport) -> None:
    """--sync: drop documents under the given folders whose files are gone."""
    resolved = list(dict.fromkeys([*given, *(path.resolve() for path in given)]))  # documents keep the given path
    gone = [doc for doc in index.store.documents_under(resolved) if doc.file not in seen and not doc.file.exists()]
    if gone:
        report.removed += index.delete_documents([doc.id for doc in gone])


def _page_stream(
    jobs: list[Job], settings: IngestSettings, image_edge: int, bar: tqdm | None = None,
) -> Iterator[tuple[Job, RenderedPage | InputFileError | object]]:
    """Every page of every job in order, then a _DONE marker per job; errors come as items."""
    for job in jobs:
        if job.converting is not None:  # converted in the background while earlier files were encoded
            error = job.converted(settings.render_timeout_s)
            if error is not None:
                yield job, error
                continue
            if bar is not None and bar.total is not None:
                bar.total += job.page_count
        try:
            for page in render_pages(
                job.path, job.kind, image_edge,
                chunk_pages=settings.chunk_pages, timeout_s=settings.render_timeout_s,
            ):
                yield job, page
        except InputFileError as error:
            yield job, error
            continue
        yield job, _DONE


def _timed(items: Iterator, timings: Timings) -> Iterator:
    """`items`, adding the time spent producing them to ``timings.render_s``."""
    while True:
        started = time.monotonic()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            timings.render_s += time.monotonic() - started
        yield item


@dataclass
class _Batch:
    """Rendered pages and the model inputs made from them."""

    pages: list[tuple[Job, RenderedPage]]
    inputs: dict


def _batches(items: Iterator, retriever: Retriever, batch_size: int, timings: Timings) -> Iterator:
    """Group rendered pages into preprocessed batches of `batch_size`; other items (a file's error or
    end) are passed on after the batch holding the pages that came before them, so a file's end
    never overtakes its last pages."""
    pages: list[tuple[Job, RenderedPage]] = []
    held: list[tuple[Job, object]] = []

    def flush() -> Iterator:
        if pages:
            started = time.monotonic()
            inputs = retriever.preprocess_pages([page.image for _, page in pages])
            timings.preprocess_s += time.monotonic() - started
            yield _Batch(list(pages), inputs)
        yield from held
        pages.clear()
        held.clear()

    for job, item in items:
        if isinstance(item, RenderedPage):
            pages.append((job, item))
            if len(pages) >= batch_size:
                yield from flush()
        elif pages:
            held.append((job, item))
        else:
            yield job, item
    yield from flush()


def _prefetch(items: Iterator, depth: int, name: str = "docqa-render") -> Iterator:
    """Run `items` in a background thread, `depth` items ahead (overlapping the consumer's work)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        """Hand one item over; False once the consumer has gone away."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(error)

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while (item := buffer.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _encode_and_commit(
    index: DocIndex,
    jobs: list[Job],
    settings: IngestSettings,
    retriever: Retriever,
    report: IngestReport,
    bar: tqdm,
) -> None:
    """Render (thread) -> preprocess (thread) -> encode and store (this thread), bounded queues between."""
    rendered: deque[Job] = deque()  # jobs fully rendered, in order, awaiting commit
    timings = report.timings
    encoded = [0]  # pages encoded so far
    total_pages = sum(job.page_count for job in jobs)

    def encode(batch: _Batch) -> None:
        started = time.monotonic()
        embeddings = retriever.encode_batch(batch.inputs)
        stored = time.monotonic()
        timings.encode_s += stored - started
        for (job, page), vectors in zip(batch.pages, embeddings):
            if job.error is None:
                job.store_page(index, page.number, *page.image.size, vectors)
        timings.store_s += time.monotonic() - stored
        _release_free_memory()
        bar.update(len(batch.pages))
        encoded[0] += len(batch.pages)
        if settings.on_progress is not None:
            settings.on_progress(encoded[0], max(total_pages, bar.total or 0))

    def commit_rendered() -> None:
        started = time.monotonic()
        while rendered:  # a file's end comes after its last batch (_batches), so all its pages are encoded
            job = rendered.popleft()
            if job.error is None:
                commit_job(index, job, report)
        timings.store_s += time.monotonic() - started

    pages = _prefetch(_timed(_page_stream(jobs, settings, retriever.stamp.image_edge, bar), timings),
                      depth=2 * settings.batch_size)
    batches = _batches(pages, retriever, settings.batch_size, timings)
    for event in _prefetch(batches, depth=1, name="docqa-preprocess"):
        if isinstance(event, _Batch):
            encode(event)
            commit_rendered()
            continue
        job, item = event
        if isinstance(item, InputFileError):
            job.error = item.reason
            report.fail(job.path, item.reason)
        else:
            rendered.append(job)
            commit_rendered()
    commit_rendered()


def commit_job(index: DocIndex, job: Job, report: IngestReport) -> None:
    """Make one document visible, unless its file changed while it was being read."""
    try:
        after = job.path.stat()
    except OSError as error:
        report.fail(job.path, f"the file vanished while being ingested ({error.strerror})")
        return
    if (after.st_size, after.st_mtime) != (job.size, job.mtime):
        report.fail(job.path, "the file changed while being ingested; run ingest again")
        return
    if len(job.pages) != job.page_count:
        report.fail(job.path, f"only {len(job.pages)} of {job.page_count} pages could be read")
        return
    index.commit_document(
        job.path, sha256=job.sha256, size=job.size, mtime=job.mtime, kind=job.kind, pages=job.pages,
        metadata=job.metadata,
    )
    report.pages_added += len(job.pages)
    if job.replaces:
        report.updated += 1
    else:
        report.added += 1
