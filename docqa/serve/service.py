"""What the server does, without HTTP: one index, one retriever, one answer model, one upload queue.

Everything goes through the library (``DocIndex``, ``Asker``, ``grounding``): no SQL or vector
access here. Threads: searches run on a reader handle of the index (one at a time: the handle's
candidate index is not shared-safe); every write (an upload's ingest, a delete, a watched folder's
batch: ``watching``) runs through ``write``, the one writer, on a writer handle, so they never race,
and changes ``generation`` once it is done (readers see the commit at their next read). Both handles
share the one retriever (its forward passes take turns); the answer model is loaded once, on first
use, and answers one question at a time.

Expensive work is bounded (``slots.Slots``): one answer at a time with a short line behind it,
page renders by the bytes of pixels they decode, heatmaps one at a time. Answers are generated on
a thread of their own (``AnswerRun``), never inside a generator the HTTP layer might abandon, so a
client that leaves always hands the answer model back. Paths in what the service returns are
relative (to the uploads folder's index, or to the common folder of the other documents) unless
the service was made with ``absolute_paths``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

from ..answer.ask import Asker
from ..answer.grounding import Grounding, boxed_citations, ground
from ..api import EMBEDDINGS_KIND, DocIndex, Hit
from ..config import IngestSettings
from ..errors import (
    DocQAError,
    IndexLockedError,
    NotFound,
    QuotaExceeded,
    SourceChangedError,
    UploadRejected,
    UploadTooLarge,
)
from ..files import PendingFile, atomic_writer
from ..index import DocumentRecord
from ..inputs.converters import INSTALL_HINT, default_converter
from ..inputs.render import png_bytes
from ..inputs.sources import CONVERTED, IMAGE, PDF, classify, describe_content, sniff
from ..models.retriever import Retriever
from .jobs import Job, JobStore
from .slots import Limits, Slots, Ticket

if TYPE_CHECKING:
    from ..models.generator import Generator as AnswerModel

AnswerEvents = Generator[tuple[str, dict], None, None]

UPLOADS = "uploads"  # inside the index folder
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
T = TypeVar("T")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_IMAGE_TYPES = (  # the image kinds sniff() accepts, by their first bytes
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
    (b"RIFF", "image/webp"),
)
SPOOL_BYTES = 8 * 1024 * 1024  # an original up to this size is checked in memory, a bigger one in a temp file


class _Stop(DocQAError):
    """Raised from the ingest's progress callback: the job was cancelled or has too many pages."""


class Watching(Protocol):
    """Folders kept in step through ``Service.write`` (``watching.ServedWatch``), stopped by ``close``."""

    def to_json(self) -> dict: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class AnswerRun:
    """One question answered on a thread of its own; events go to ``emit`` as (name, data) pairs,
    ``("error", exception)`` for a failure, then ``("end", None)``. ``stop()`` never blocks: the
    thread stops at the next event and then hands the answer model back."""

    def __init__(
        self,
        events: Callable[[], AnswerEvents],
        ticket: Ticket,
        wait_s: float,
        emit: Callable[[tuple[str, Any]], None],
    ) -> None:
        self._events = events
        self._ticket = ticket
        self._wait_s = wait_s
        self._emit = emit
        self._stopped = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="docqa-answer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        try:
            self._ticket.wait(1, self._wait_s)
            if self._stopped.is_set():
                return
            events = self._events()
            try:
                for event in events:
                    if self._stopped.is_set():
                        break
                    self._emit(event)
            finally:
                events.close()  # in this thread, which iterated it: always safe, always runs
        except Exception as error:  # noqa: BLE001  handed to the HTTP layer as an event
            self._send(("error", error))
        finally:
            self._ticket.release()
            self.finished.set()
            self._send(("end", None))

    def _send(self, event: tuple[str, Any]) -> None:
        try:
            self._emit(event)
        except Exception:  # the event loop is gone (server stopping): nobody is listening
            pass


@dataclass
class Original:
    """A document's file as it was indexed: a private copy of its bytes (sha256-checked against the
    index, so what is sent is what was indexed even if the file changes meanwhile), positioned at
    the start; whoever sends it closes ``body``."""

    name: str
    media_type: str  # application/pdf, an image type, or application/octet-stream (never shown inline)
    size: int
    body: IO[bytes]

    def disposition(self, download: bool) -> str:
        """A Content-Disposition value: ``inline`` for a PDF or image unless ``download``, with a
        safe ASCII ``filename`` and the real name (control characters dropped) as ``filename*``."""
        kind = "inline" if not download and self.media_type != "application/octet-stream" else "attachment"
        real = _CONTROL.sub("_", self.name)
        fallback = safe_name(real)
        value = f'{kind}; filename="{fallback}"'
        if fallback != real:
            value += f"; filename*=UTF-8''{quote(real, safe='')}"
        return value


class Service:
    """The server's state: index handles, models, upload jobs."""

    def __init__(
        self,
        index: str | os.PathLike[str] | None,
        *,
        model: str | None = None,
        answer_model: str | None = None,
        device: str | None = None,
        limits: Limits | None = None,
        absolute_paths: bool = False,
    ) -> None:
        self.limits = limits = limits or Limits()
        self.reader = DocIndex.open(index, create=True)
        self.model = model
        self.answer_model = answer_model
        self.device = device
        self.absolute_paths = absolute_paths
        self._read = threading.Lock()  # one search at a time on the reader handle
        self._write = threading.Lock()  # one writer (ingest, delete or watched batch) at a time: see write()
        # changes after every write; starts at the start time (ms), so a restarted server never repeats one
        self.generation = int(time.time() * 1000)
        self._seen_commits: int | None = None  # the reader's PRAGMA data_version when info() last looked
        self.watching: Watching | None = None  # a watching.ServedWatch sets itself here
        self._generator_lock = threading.Lock()  # loads the answer model once
        self._generator: AnswerModel | None = None
        self._retriever_lock = threading.Lock()
        self.slots = Slots(limits)
        self._store = JobStore(self.reader.path, keep=limits.max_jobs_kept)
        self._queue: list[Job] = self._store.recover()
        self._queue_ready = threading.Condition()
        self._images: OrderedDict[tuple, bytes] = OrderedDict()  # LRU of rendered pages, bounded in bytes
        self._images_bytes = 0
        self._images_lock = threading.Lock()
        self._root: str | None = None  # common folder of the documents not uploaded here (cached)
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="docqa-ingest", daemon=True)
        self._worker.start()

    # --- models ----------------------------------------------------------------------------
    def retriever(self) -> Retriever | None:
        """The index's retriever, loaded once (None while the index is empty and no --model given)."""
        with self._retriever_lock:
            if self.reader.build is None and self.model is None:
                return None
            return self.reader.retriever(None if self.reader.build else self.model, self.device)

    def load_models(self) -> None:
        """Load the retriever up front, so a bad model fails at start-up rather than on a request."""
        self.retriever()

    def _generator_instance(self) -> AnswerModel:
        from ..models.checkpoints import default_device
        from ..models.generator import Generator, default_answer_model

        with self._generator_lock:
            if self._generator is None:
                device = self.device or default_device()
                self._generator = Generator.load(self.answer_model or default_answer_model(device), device=device)
            return self._generator

    # --- paths -----------------------------------------------------------------------------
    def shown(self, path: str | os.PathLike[str]) -> str:
        """How a document's path appears in responses: relative unless ``absolute_paths``."""
        path = os.fspath(path)
        if self.absolute_paths:
            return path
        if _is_under(Path(path), self.reader.path):
            return os.path.relpath(path, self.reader.path)
        root = self._documents_root()
        if root and _is_under(Path(path), Path(root)):
            return os.path.relpath(path, root)
        return Path(path).name

    def scrub(self, text: str) -> str:
        """An error message with the server's folders taken out (unless ``absolute_paths``)."""
        if self.absolute_paths:
            return text
        text = text.replace(str(self.reader.path) + os.sep, "").replace(str(self.reader.path), "the index")
        root = self._documents_root()
        if root and root != os.sep:
            text = text.replace(root.rstrip(os.sep) + os.sep, "")
        return text

    def _documents_root(self) -> str | None:
        if self._root is None:
            with self._read:
                found = [r.file for r in self.reader.documents() if r.kind != EMBEDDINGS_KIND]  # labels are no files
                found += [a.file for a in self.reader.aliases()]
                files = [os.fspath(f) for f in found if not _is_under(f, self.reader.path)]
            self._root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
        return self._root or None

    def _content_changed(self) -> None:
        self._root = None
        self.generation += 1  # under the writer lock: one writer, so no lost increment

    # --- reading ---------------------------------------------------------------------------
    def search(
        self, query: str, k: int, *, exact: bool = False, where: dict | None = None, path: str | None = None
    ) -> list[Hit]:
        """The index's search, with its filters (tags ``where``, path glob ``path``) and ``exact``."""
        if self.retriever() is None:
            return []
        with self.slots.searches.take(), self._read:
            return self.reader.search(query, k=k, device=self.device, exact=exact, where=where, path=path)

    def page(self, page_id: int) -> Hit:
        with self._read:
            hit = self.reader.page(page_id)
        if hit is None:
            raise NotFound(f"no page with id {page_id}")
        return hit

    def hit_json(self, hit: Hit) -> dict:
        also_at = [self.shown(path) for path in hit.also_at]
        return {
            **hit.to_json(),
            "path": self.shown(hit.file),
            "name": Path(hit.path).name,
            "kind": hit.kind,
            "also_at": also_at,
        }

    def page_png(self, page_id: int, edge: int) -> bytes:
        """The page rendered from its source (sha256-checked), fitted into ``edge`` px, as PNG."""
        hit = self.page(page_id)
        key = ("page", page_id, hit.sha256, edge)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return self._cache(key, png_bytes(self.slots.render(hit, edge)))

    def grounding(self, page_id: int, query: str) -> Grounding:
        hit = self.page(page_id)
        retriever = self.retriever()
        if retriever is None:
            raise NotFound("the index is empty")
        with self.slots.heatmaps.take():
            image = self.slots.render(hit, retriever.stamp.image_edge)
            return ground(retriever, query, image)

    def heatmap_png(self, page_id: int, query: str) -> bytes:
        hit = self.page(page_id)
        key = ("heat", page_id, hit.sha256, query)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return self._cache(key, png_bytes(self.grounding(page_id, query).overlay()))

    def documents(self) -> list[dict]:
        with self._read:
            records, aliases = self.reader.documents(), self.reader.aliases_by_document()
        also_at = {document_id: [self.shown(alias.file) for alias in found] for document_id, found in aliases.items()}
        return [
            {
                "id": r.id,
                "path": self.shown(r.file),
                "name": Path(r.path).name,
                "kind": r.kind,
                "pages": r.pages,
                "size": r.size,
                "uploaded": _is_under(r.file, self.uploads),
                "status": "indexed",
                "also_at": also_at.get(r.id, []),
            }
            for r in records
        ]

    def pending(self) -> list[dict]:
        """Uploads that are not an indexed document (yet): queued, being converted or ingested, or
        failed or cancelled (with the reason), as job states with ``status`` set to the state."""
        indexed = self._indexed_files()
        return [
            {**self.job_json(job), "status": job.state}
            for job in self.jobs()
            if job.state != "done" and os.path.abspath(job.path) not in indexed
        ]

    def _indexed_files(self) -> set[str]:
        with self._read:
            return {os.path.abspath(r.file) for r in self.reader.documents()}

    def _document(self, document_id: int) -> DocumentRecord:
        with self._read:
            record = next((r for r in self.reader.documents() if r.id == document_id), None)
        if record is None:
            raise NotFound(f"no document with id {document_id}")
        return record

    def original(self, document_id: int) -> Original:
        """The indexed file of a document, read once into a private copy and refused
        (SourceChangedError) when its bytes are not the ones indexed: changed, gone, or replaced
        by something else (a symlink to another file, a folder, a pipe). Only the index says which
        file; nothing from a request names one."""
        record = self._document(document_id)
        shown = self.shown(record.file)
        if record.kind == EMBEDDINGS_KIND:
            raise NotFound(f"{shown} was added as embeddings: there is no file to open")
        with self.slots.files.take():
            body = _checked_copy(record.file, record.size, record.sha256, shown)
        head = body.read(16)
        body.seek(0)
        return Original(Path(record.path).name, _media_type(record.kind, head), record.size, body)

    def info(self) -> dict:
        with self._read:  # info reads the candidate stage's stats: a snapshot on the reader handle
            info = self.reader.info()
            seen = self.reader.store.others_commits()  # also another process's `docqa ingest`
            if seen != self._seen_commits:
                if self._seen_commits is not None:
                    self._content_changed()
                self._seen_commits = seen
        shown = info.to_json()
        if not self.absolute_paths:
            shown["index"] = self.reader.path.name
            if shown.get("model") and os.path.isabs(shown["model"]):
                shown["model"] = Path(shown["model"]).name
        return {
            **shown,
            "family": info.build.family if info.build else None,
            "answer_model": None
            if self.answer_model is None
            else (
                self.answer_model
                if self.absolute_paths or not os.path.isabs(self.answer_model)
                else Path(self.answer_model).name
            ),
            "limits": self.limits.__dict__,
            "jobs_running": sum(not job.finished for job in self.jobs()),
            "generation": self.generation,
            "watch": None if self.watching is None else self.watching.to_json(),
        }

    # --- asking ----------------------------------------------------------------------------
    def start_ask(
        self,
        question: str,
        k: int,
        max_pages: int,
        max_new_tokens: int,
        *,
        emit: Callable[[tuple[str, Any]], None],
        where: dict | None = None,
        path: str | None = None,
    ) -> AnswerRun:
        """Answer on a thread of its own (see ``AnswerRun``); Busy at once when too many wait."""
        retriever = self.retriever()
        with self._read:
            empty = self.reader.counts()[1] == 0
        if retriever is None or empty:
            raise NotFound("the index is empty: upload a document first")
        ticket = self.slots.asks.reserve()
        return AnswerRun(
            lambda: self._answer(retriever, question, k, max_pages, max_new_tokens, where, path),
            ticket,
            self.limits.ask_wait_s,
            emit,
        )

    def _answer(
        self,
        retriever: Retriever,
        question: str,
        k: int,
        max_pages: int,
        max_new_tokens: int,
        where: dict | None,
        path: str | None,
    ) -> AnswerEvents:
        """(event, data) pairs: ``pages`` (what the model is shown), ``token`` (answer text as it
        is generated), ``citations`` (each page shown, cited or not, with its box), ``done``."""
        asker = Asker(
            self._generator_instance(),
            _ReadOnly(self),
            k=k,
            max_pages=max_pages,
            max_new_tokens=max_new_tokens,
            where=where,
            path=path,
        )
        stream = asker.ask(question)
        yield (
            "pages",
            {
                "pages": [
                    {
                        "page_id": p.page_id,
                        "path": self._shown_page(p.path),
                        "name": Path(p.path).name,
                        "page": p.page,
                        "score": p.score,
                        **self._source(p.page_id),
                    }
                    for p in stream.pages
                ]
            },
        )
        for piece in stream:
            yield "token", {"text": piece}
        result = stream.result
        assert result is not None  # set once the stream is iterated to its end
        citations = []
        for page, citation, box in boxed_citations(retriever, question, result.answer, stream.pages):
            citations.append(
                {
                    "page_id": page.page_id,
                    "path": self._shown_page(citation.path),
                    "name": Path(citation.path).name,
                    "page": citation.page,
                    "score": citation.score,
                    "cited": citation.cited,
                    "box": box,
                    **self._source(page.page_id),
                    "also_at": [self._shown_page(other) for other in page.also_at],
                }
            )
        yield "citations", {"citations": citations, "notes": [self.scrub(n) for n in result.notes]}
        yield (
            "done",
            {
                "answer": result.answer.text,
                "answer_model": result.answer.model
                if self.absolute_paths or not os.path.isabs(result.answer.model)
                else Path(result.answer.model).name,
                "timings": result.to_json()["timings"],
            },
        )

    def _shown_page(self, path: str) -> str:
        return self.shown(path)

    def _source(self, page_id: int | None) -> dict:
        """The document a shown page is from and its kind (what the page's "open" and "download" need)."""
        try:
            hit = self.page(page_id) if page_id is not None else None
        except NotFound:  # deleted while the question was answered: the answer stands, without links
            hit = None
        return {"document_id": hit.document_id, "kind": hit.kind} if hit else {"document_id": None, "kind": None}

    # --- writing ---------------------------------------------------------------------------
    @property
    def uploads(self) -> Path:
        return self.reader.path / UPLOADS

    def upload(self, name: str, chunks: Iterator[bytes]) -> Job:
        """Store an uploaded file under the index's ``uploads/`` folder and queue its ingest.

        The stored name is derived from the content (its sha256) and a sanitised base name: the
        client's name never becomes a path. The content is sniffed as ingest sniffs a folder's files:
        a PDF, a supported image, or a document LibreOffice converts (office, OpenDocument, RTF,
        HTML, Markdown, text; refused when LibreOffice is missing or the document cannot be indexed:
        damaged, encrypted, a zip bomb). Anything else is refused, and so is an upload that would
        take the stored uploads over the quota.
        """
        self.uploads.mkdir(parents=True, exist_ok=True)
        room = self.limits.upload_quota_bytes - _folder_bytes(self.uploads)
        digest = hashlib.sha256()
        size = 0
        head = b""
        with atomic_writer(self.uploads, "upload") as pending:  # a refused upload leaves nothing behind
            for chunk in chunks:
                size += len(chunk)
                if size > self.limits.max_upload_bytes:
                    raise UploadTooLarge(f"the upload is over the {self.limits.max_upload_bytes} byte limit")
                if size > room:
                    raise QuotaExceeded(
                        f"the stored uploads would go over the server's quota of "
                        f"{self.limits.upload_quota_bytes} bytes; delete some first"
                    )
                if len(head) < 1024:
                    head += chunk[: 1024 - len(head)]
                digest.update(chunk)
                pending.file.write(chunk)
            kind = sniff(head) or self._converted_kind(pending, name, head)
            folder = self.uploads / digest.hexdigest()[:16]
            folder.mkdir(exist_ok=True)
            target = folder / safe_name(name, kind)
            pending.place(target)  # durable before jobs.json names it: a restart finds the whole file
        with self._queue_ready:
            job = self._store.add(target.name, target)
            self._queue.append(job)
            self._queue_ready.notify()
        return job

    @staticmethod
    def _converted_kind(pending: PendingFile, name: str, head: bytes) -> str:
        """The kind of an upload that is neither a PDF nor an image: one LibreOffice converts, or
        UploadRejected with the reason."""
        pending.file.flush()
        source = classify(pending.temp, name=safe_name(name))
        if source.kind not in CONVERTED:
            raise UploadRejected(f"{safe_name(name)}: {source.problem or describe_content(head)}")
        if source.problem is not None:
            raise UploadRejected(f"{safe_name(name)}: {source.problem}")
        if not default_converter().available():
            raise UploadRejected(
                f"{safe_name(name)}: a {source.kind} file: converting it needs LibreOffice on the server ({INSTALL_HINT})"
            )
        return source.kind

    def job(self, job_id: str) -> Job:
        job = self._store.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no upload job {job_id!r}")
        return job

    def jobs(self) -> list[Job]:
        return list(self._store.jobs.values())

    def job_json(self, job: Job) -> dict:
        state = job.to_json(self.reader.path)
        if state["report"] and not self.absolute_paths:
            report = dict(state["report"])
            report["index"] = self.reader.path.name
            report["failures"] = [
                {"path": self.shown(f["path"]), "error": self.scrub(f["error"])} for f in report.get("failures", [])
            ]
            state["report"] = report
        if state["error"]:
            state["error"] = self.scrub(state["error"])
        return state

    def delete_job(self, job_id: str) -> dict:
        """Cancel a queued or running job; forget a finished one, deleting its stored file unless a
        document of the index is that file (delete the document for that)."""
        job = self.job(job_id)
        with self._queue_ready:
            if job in self._queue:
                self._queue.remove(job)
                job.update(state="cancelled", error="cancelled before its ingest started")
                self._store.save()
        if job.state == "ingesting":
            job.cancel.set()
            return {**self.job_json(job), "cancelling": True}
        if not job.finished:  # queued -> ingesting in between: the ingest sees the flag
            job.cancel.set()
            return {**self.job_json(job), "cancelling": True}
        indexed = os.path.abspath(job.path) in self._indexed_files()
        deleted = False
        if not indexed and _is_under(job.path, self.uploads):
            job.path.unlink(missing_ok=True)
            _remove_empty(job.path.parent)
            deleted = True
        self._store.remove(job.id)
        return {**self.job_json(job), "deleted": True, "file_deleted": deleted}

    def delete_document(self, document_id: int) -> dict:
        """Remove a document (and its uploaded files, when it or its other paths were uploaded here)."""
        record = self._document(document_id)
        with self._read:
            aliases = self.reader.aliases(document_id)  # its other paths go with it
        report = self.write(lambda writer: writer.remove_documents([document_id]), wait_s=5)
        if report.removed:
            for file in [record.file, *(alias.file for alias in aliases)]:
                if _is_under(file, self.uploads):
                    file.unlink(missing_ok=True)
                    _remove_empty(file.parent)
        shown = report.to_json()
        if not report.removed:  # removed by another writer (a watched folder's batch) in between
            raise NotFound(f"no document with id {document_id}")
        if not self.absolute_paths:
            shown = {"index": self.reader.path.name, "removed": [self.shown(record.file)], "not_found": []}
        return shown

    def write(self, work: Callable[[DocIndex], T], *, wait_s: float | None = None) -> T:
        """Run one write on a writer handle as the server's one writer: uploads, deletes and watched
        folders take turns here, and ``generation`` changes once it is done (IndexLockedError when
        another write still runs after ``wait_s``; without it, wait for it)."""
        if not self._write.acquire(timeout=-1 if wait_s is None else wait_s):
            raise IndexLockedError(
                "the index is being written (an upload being ingested, or a watched folder's changes); "
                "try again when it is done, or cancel the upload (DELETE /api/jobs/ID)"
            )
        try:
            writer = self._writer()
            try:
                return work(writer)
            finally:
                writer.close()
                self._content_changed()
        finally:
            self._write.release()

    def _writer(self) -> DocIndex:
        writer = DocIndex.open(self.reader.path, create=True)
        retriever = self.retriever()
        if retriever is not None:
            writer.adopt_retriever(retriever)
        return writer

    def _work(self) -> None:
        while True:
            with self._queue_ready:
                while not self._queue and not self._stopping:
                    self._queue_ready.wait()
                if self._stopping:
                    return
                job = self._queue.pop(0)
            self._ingest(job)

    def _ingest(self, job: Job) -> None:
        if job.cancel.is_set():
            job.update(state="cancelled", error="cancelled before its ingest started")
            self._store.save()
            return
        if not self._converted(job):
            self._store.save()
            return
        job.update(state="ingesting")
        self._store.save()
        cap = self.limits.max_upload_pages

        def progress(done: int, total: int) -> None:
            job.update(pages_done=done, pages_total=total)
            if total > cap:
                raise _Stop(
                    f"{job.name} has {total} pages, over the server's limit of {cap} pages per upload "
                    "(docqa serve --max-upload-pages)"
                )
            if job.cancel.is_set():
                raise _Stop(f"cancelled after {done} of {total} pages")

        settings = IngestSettings(
            model=self.model if self.reader.build is None else None,
            device=self.device,
            batch_size=1,  # release the shared model between pages: searches go on
            checkpoint_s=0,  # every page is kept as it is encoded: a cancel or a crash loses none
            on_progress=progress,
        )
        try:
            report = self.write(lambda writer: writer.ingest([job.path], settings))
        except _Stop as stop:
            cancelled = job.cancel.is_set()
            job.update(state="cancelled" if cancelled else "failed", error=str(stop))
        except DocQAError as error:
            job.update(state="failed", error=str(error))
        except Exception as error:  # a bug: report it on the job rather than kill the worker
            job.update(state="failed", error=f"{type(error).__name__}: {error}")
        else:
            state = "failed" if report.failed else "done"
            reasons = "; ".join(f.error for f in report.failures) or None
            job.update(state=state, report=report.to_json(), error=reasons)
        self._keep_pages(job)
        self._store.save()

    def _converted(self, job: Job) -> bool:
        """Convert an office, web or text upload to PDF first (state "converting"; the converted PDF
        is cached, so the ingest that follows reuses it); False, with the job failed, when that fails."""
        try:
            kind = classify(job.path).kind
        except OSError as error:
            job.update(state="failed", error=f"cannot read the upload: {error.strerror or error}")
            return False
        if kind not in CONVERTED:
            return True
        job.update(state="converting")
        self._store.save()
        try:
            default_converter().submit(job.path, kind, shown_as=job.name).result()
        except DocQAError as error:
            job.update(state="failed", error=str(error))
            return False
        return True

    def _keep_pages(self, job: Job) -> None:
        """Say on an unfinished job how many of its encoded pages the index keeps for a re-run."""
        with self._read:
            kept = self.reader.checkpointed_pages(job.path)
        if kept and job.error and "pages are kept" not in job.error:
            job.update(error=f"{job.error}; its {kept:,} encoded pages are kept: upload it again to resume")
        job.update(pages_kept=kept)

    def close(self) -> None:
        with self._queue_ready:
            self._stopping = True
            self._queue_ready.notify_all()
        if self.watching is not None:
            self.watching.stop()  # a batch being ingested stops at its next page
        for job in self.jobs():
            if job.state == "ingesting":
                job.cancel.set()  # stops at its next page; jobs.json then says so
        self._worker.join(timeout=10)
        if self.watching is not None:
            self.watching.join(timeout=10)
        self.reader.close()

    # --- cache -----------------------------------------------------------------------------
    def _cached(self, key: tuple) -> bytes | None:
        with self._images_lock:
            value = self._images.get(key)
            if value is not None:
                self._images.move_to_end(key)
            return value

    def _cache(self, key: tuple, value: bytes) -> bytes:
        with self._images_lock:
            if key not in self._images:
                self._images[key] = value
                self._images_bytes += len(value)
            while self._images_bytes > self.limits.image_cache_bytes and self._images:
                _, dropped = self._images.popitem(last=False)
                self._images_bytes -= len(dropped)
        return value


class _ReadOnly:
    """The index as an Asker sees it (a docqa.api.Searchable): searches go through the service (one
    at a time on the reader)."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self.path = service.reader.path

    def search(self, query: str, k: int = 5, *, where: dict | None = None, path: str | None = None) -> list[Hit]:
        return self._service.search(query, k, where=where, path=path)


def safe_name(name: str, kind: str | None = None) -> str:
    """A file name made only of safe characters (no folders, no dot files), with an extension
    matching the sniffed content."""
    base = _SAFE_NAME.sub("_", Path(str(name).replace("\\", "/").replace("\x00", "")).name).strip(" .")[:100]
    base = base or "upload"
    if kind == "pdf" and not base.lower().endswith(".pdf"):
        base += ".pdf"
    return base


def _checked_copy(file: Path, size: int, sha256: str, shown: str) -> IO[bytes]:
    """``file``'s bytes in a temporary copy, if they are ``size`` bytes with digest ``sha256``;
    SourceChangedError otherwise (opened without blocking, so a pipe put in its place cannot hang)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise SourceChangedError(f"{shown} is gone since it was indexed; run `docqa ingest` again") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SourceChangedError(f"{shown} is no longer a regular file since it was indexed; run `docqa ingest` again")
    copy: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        with open(fd, "rb", closefd=True) as source:
            digest = hashlib.sha256()
            copied = 0
            while copied <= size and (chunk := source.read(min(1 << 20, size + 1 - copied))):
                digest.update(chunk)
                copy.write(chunk)
                copied += len(chunk)
        if copied != size or digest.hexdigest() != sha256:
            raise SourceChangedError(f"{shown} changed since it was indexed; run `docqa ingest` again")
    except BaseException:
        copy.close()
        raise
    copy.seek(0)
    return copy


def _media_type(kind: str, head: bytes) -> str:
    """What an original is sent as: PDF and images by their (checked) content, all else as bytes."""
    if kind == PDF:
        return "application/pdf"
    if kind == IMAGE:
        return next((media for magic, media in _IMAGE_TYPES if head.startswith(magic)), "application/octet-stream")
    return "application/octet-stream"


def _folder_bytes(folder: Path) -> int:
    total = 0
    for entry in folder.rglob("*"):
        try:
            if entry.is_file() and not entry.is_symlink():
                total += entry.stat().st_size
        except OSError:
            pass
    return total


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _is_under(path: Path, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
    except (OSError, ValueError):
        return False
