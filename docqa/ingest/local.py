"""Ingest: walk → sniff → hash → render → encode (batched across files) → store → commit.

Each document commits in one SQLite transaction after all of its pages are encoded and their
vectors are durable, so a crash or a bad file never leaves a partial document visible. Until then a
long document's encoded pages are checkpointed now and then (IngestSettings.checkpoint_s), and when
the ingest stops (a failure, a cancel, Ctrl-C): the next ingest of the same content resumes from them.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..config import IngestSettings
from ..errors import InputFileError
from ..inputs.render import RenderedPage, render_pages
from ..memory import release_free_memory
from .plan import PlannedFile, converted_jobs, plan_jobs, remove_vanished, resume_jobs
from .report import IngestReport, Timings

if TYPE_CHECKING:
    from ..index import IndexStorage
    from ..models.retriever import Retriever


# Renders and encodes the planned jobs, storing pages and committing each finished job with
# commit_job: the local pipeline below, or docqa.cluster's on Ray.
Pipeline = Callable[["IndexStorage", list[PlannedFile], IngestSettings, IngestReport, tqdm], None]

_DONE = object()


def run_ingest(
    storage: IndexStorage,
    paths: Iterable[str | Path],
    settings: IngestSettings,
    retriever: Retriever | None,
    *,
    pipeline: Pipeline | None = None,
) -> IngestReport:
    """Bring the index stored by `storage` up to date with `paths` (the caller holds the write lock).

    Planning (walk, sniff, hash, skip unchanged), --sync and the report are the same whoever
    encodes: `pipeline` (default: render and encode here with `retriever`).
    """
    started = time.monotonic()
    report = IngestReport(index=str(storage.path))
    given = [Path(p).expanduser().absolute() for p in paths]
    seen: set[Path] = set()
    storage.sweep_checkpoints()  # of files gone since, or committed by a writer that stopped right after
    with tqdm(desc="scan", unit="file", disable=not settings.progress, leave=False) as scanned:
        jobs = plan_jobs(storage, given, report, seen, settings, scanned)
    if pipeline is not None:  # other pipelines need every page count up front
        jobs = converted_jobs(jobs, settings, report)
    resume_jobs(storage, jobs, report)
    if settings.sync:
        remove_vanished(storage, given, seen, report)
    total_pages = sum(job.page_count for job in jobs)
    if settings.on_progress is not None:
        settings.on_progress(sum(job.resumed for job in jobs), total_pages)
    with tqdm(total=total_pages, unit="page", desc="ingest", disable=not settings.progress, leave=False) as bar:
        if pipeline is None:
            assert retriever is not None, "a local ingest needs a retriever"
            _encode_and_commit(storage, jobs, settings, retriever, report, bar)
        else:
            pipeline(storage, jobs, settings, report, bar)
    storage.compact_if_wasteful()
    report.seconds = time.monotonic() - started
    return report


def _page_stream(
    jobs: list[PlannedFile],
    settings: IngestSettings,
    image_edge: int,
    bar: tqdm | None = None,
) -> Iterator[tuple[PlannedFile, RenderedPage | InputFileError | object]]:
    """Every page of every job in order, then a _DONE marker per job; errors come as items."""
    for job in jobs:
        if job.converting is not None:  # converted in the background while earlier files were encoded
            error = job.converted(settings.render_timeout_s)
            if error is not None:
                yield job, error
                continue
            if bar is not None and bar.total is not None:
                bar.total += job.page_count
            if len(job.pages) > job.page_count:  # a checkpoint longer than the document: start afresh
                job.pages, job.resumed, job.saved = [], 0, 0
        try:
            for page in render_pages(
                job.path,
                job.kind,
                image_edge,
                first_page=len(job.pages) + 1,  # after the pages resumed from a checkpoint
                chunk_pages=settings.chunk_pages,
                timeout_s=settings.render_timeout_s,
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

    pages: list[tuple[PlannedFile, RenderedPage]]
    inputs: dict


def _batches(items: Iterator, retriever: Retriever, batch_size: int, timings: Timings) -> Iterator:
    """Group rendered pages into preprocessed batches of `batch_size`; other items (a file's error or
    end) are passed on after the batch holding the pages that came before them, so a file's end
    never overtakes its last pages."""
    pages: list[tuple[PlannedFile, RenderedPage]] = []
    held: list[tuple[PlannedFile, object]] = []

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
    storage: IndexStorage,
    jobs: list[PlannedFile],
    settings: IngestSettings,
    retriever: Retriever,
    report: IngestReport,
    bar: tqdm,
) -> None:
    """Render (thread) -> preprocess (thread) -> encode and store (this thread), bounded queues between."""
    rendered: deque[PlannedFile] = deque()  # jobs fully rendered, in order, awaiting commit
    timings = report.timings
    encoded = [sum(job.resumed for job in jobs)]  # pages encoded so far (resumed ones included)
    total_pages = sum(job.page_count for job in jobs)
    bar.update(encoded[0])

    def encode(batch: _Batch) -> None:
        started = time.monotonic()
        embeddings = retriever.encode_batch(batch.inputs)
        stored = time.monotonic()
        timings.encode_s += stored - started
        for (job, page), vectors in zip(batch.pages, embeddings):
            if job.error is None:
                job.store_page(storage, page.number, *page.image.size, vectors)
        if any(job.error is None and job.checkpoint_due(settings.checkpoint_s) for job, _ in batch.pages):
            checkpoint_open(storage, jobs)  # before the progress report: the pages it counts are kept
        timings.store_s += time.monotonic() - stored
        release_free_memory()
        bar.update(len(batch.pages))
        encoded[0] += len(batch.pages)
        if settings.on_progress is not None:
            settings.on_progress(encoded[0], max(total_pages, bar.total or 0))

    def commit_rendered() -> None:
        started = time.monotonic()
        while rendered:  # a file's end comes after its last batch (_batches), so all its pages are encoded
            job = rendered.popleft()
            if job.error is None:
                commit_job(storage, job, report)
        timings.store_s += time.monotonic() - started

    pages = _prefetch(
        _timed(_page_stream(jobs, settings, retriever.stamp.image_edge, bar), timings), depth=2 * settings.batch_size
    )
    batches = _batches(pages, retriever, settings.batch_size, timings)
    with keeping_encoded_pages(storage, jobs):
        for event in _prefetch(batches, depth=1, name="docqa-preprocess"):
            if isinstance(event, _Batch):
                encode(event)
                commit_rendered()
                continue
            job, item = event
            if isinstance(item, InputFileError):  # its pages rendered before the error are encoded: keep them
                job.error = item.reason
                report.fail(job.path, kept_reason(item.reason, job.checkpoint(storage)))
            else:
                rendered.append(job)
                commit_rendered()
        commit_rendered()


@contextmanager
def keeping_encoded_pages(storage: IndexStorage, jobs: list[PlannedFile]) -> Iterator[None]:
    """An ingest's block: when it stops short (a cancel, Ctrl-C, a model or cluster failure), the
    encoded pages of unfinished documents are checkpointed before the error goes on; not when the
    store itself failed (a full disk): the rows appended last may then be torn."""
    try:
        yield
    except (OSError, sqlite3.Error):
        raise
    except BaseException:
        try:
            checkpoint_open(storage, jobs)
        except Exception:  # noqa: BLE001  the error that stopped the ingest is the one to raise
            pass
        raise


def kept_reason(reason: str, pages: int) -> str:
    """A failure's reason, saying what its checkpoint keeps for the next ingest."""
    if not pages:
        return reason
    return f"{reason} ({pages:,} encoded pages are kept: the next ingest of the file resumes after them)"


def checkpoint_open(storage: IndexStorage, jobs: list[PlannedFile]) -> None:
    """Checkpoint the encoded pages of every uncommitted document, in the order their rows were
    appended: a kill at any point then leaves every vector row committed, checkpointed, or past
    them all (dropped on recovery), never a hole of rows no one owns."""
    for job in jobs:
        if job.error is None and not job.committed and job.pages:
            job.checkpoint(storage)


def commit_job(storage: IndexStorage, job: PlannedFile, report: IngestReport) -> None:
    """Make one document visible, unless its file changed while it was being read."""
    try:
        after = job.path.stat()
    except OSError as error:
        job.error = f"the file vanished while being ingested ({error.strerror})"
        storage.forget_checkpoints([job.path])
        report.fail(job.path, job.error)
        return
    if (after.st_size, after.st_mtime) != (job.size, job.mtime):
        job.error = "the file changed while being ingested; run ingest again"
        storage.forget_checkpoints([job.path])  # its pages may mix two versions
        report.fail(job.path, job.error)
        return
    if len(job.pages) != job.page_count:
        report.fail(job.path, f"only {len(job.pages)} of {job.page_count} pages could be read")
        return
    storage.commit_document(
        job.path,
        sha256=job.sha256,
        size=job.size,
        mtime=job.mtime,
        kind=job.kind,
        pages=job.pages,
        metadata=job.metadata,
        aliases=job.aliases,
    )
    job.committed = True
    report.pages_added += len(job.pages)
    report.pages_resumed += job.resumed
    if job.replaces:
        report.updated += 1
    else:
        report.added += 1
