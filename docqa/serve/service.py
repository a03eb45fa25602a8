"""What the server does, without HTTP: one index, one retriever, one answer model, one upload queue.

Everything goes through the library (``DocIndex``, ``Asker``, ``grounding``): no SQL or vector
access here. Threads: searches run on a reader handle of the index (one at a time: the handle's
candidate index is not shared-safe); uploads are ingested, and deletes done, on a writer handle by
one worker, so they never race. Both handles share the one retriever (its forward passes take
turns); the answer model is loaded once, on first use, and answers one question at a time.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..api import DocIndex, Hit
from ..answer.ask import Asker
from ..config import IngestSettings
from ..models.retriever import Retriever
from ..errors import DocQAError, IndexLockedError, NotFound, UploadRejected, UploadTooLarge
from ..answer.grounding import Grounding, ground, ground_answer, render_indexed_page
from ..inputs.sources import describe_content, sniff

UPLOADS = "uploads"  # inside the index folder
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for."""

    max_upload_bytes: int = 100 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024  # any request other than an upload
    max_k: int = 50
    max_pages: int = 5  # pages shown to the answer model per question
    max_query_chars: int = 1000
    max_image_edge: int = 2048
    max_jobs_kept: int = 100


@dataclass
class Job:
    """One uploaded file being ingested in the background."""

    id: str
    name: str
    state: str = "queued"  # queued | ingesting | done | failed
    pages_done: int = 0
    pages_total: int = 0
    report: dict | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    path: Path | None = None
    changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "state": self.state, "pages_done": self.pages_done,
                "pages_total": self.pages_total, "report": self.report, "error": self.error}

    def update(self, **values: Any) -> None:
        with self.changed:
            for name, value in values.items():
                setattr(self, name, value)
            self.changed.notify_all()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


class Service:
    """The server's state: index handles, models, upload jobs."""

    def __init__(self, index: str | os.PathLike[str] | None, *, model: str | None = None,
                 answer_model: str | None = None, device: str | None = None,
                 limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.reader = DocIndex.open(index, create=True)
        self.model = model
        self.answer_model = answer_model
        self.device = device
        self._read = threading.Lock()  # one search at a time on the reader handle
        self._write = threading.Lock()  # one writer (ingest or delete) at a time
        self._generator_lock = threading.Lock()  # loads the answer model once; one answer at a time
        self._generator = None
        self._retriever_lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: list[Job] = []
        self._queue_ready = threading.Condition()
        self._ids = itertools.count(1)
        self._images: OrderedDict[tuple, bytes] = OrderedDict()  # small LRU of rendered pages
        self._images_lock = threading.Lock()
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

    def _generator_instance(self):
        from ..models.generator import Generator, default_answer_model
        from ..models.checkpoints import default_device

        if self._generator is None:
            device = self.device or default_device()
            self._generator = Generator.load(self.answer_model or default_answer_model(device), device=device)
        return self._generator

    # --- reading ---------------------------------------------------------------------------
    def search(self, query: str, k: int, *, exact: bool = False, where: dict | None = None,
               path: str | None = None) -> list[Hit]:
        """The index's search, with its filters (tags ``where``, path glob ``path``) and ``exact``."""
        if self.retriever() is None:
            return []
        with self._read:
            return self.reader.search(query, k=k, device=self.device, exact=exact, where=where, path=path)

    def page(self, page_id: int) -> Hit:
        with self._read:
            hit = self.reader.page(page_id)
        if hit is None:
            raise NotFound(f"no page with id {page_id}")
        return hit

    def page_png(self, page_id: int, edge: int) -> bytes:
        """The page rendered from its source (sha256-checked), fitted into ``edge`` px, as PNG."""
        hit = self.page(page_id)
        key = ("page", page_id, hit.sha256, edge)
        cached = self._cached(key)
        if cached is not None:
            return cached
        image = render_indexed_page(hit.file, hit.page, hit.sha256, hit.kind, edge, hit.path)
        return self._cache(key, _png(image))

    def grounding(self, page_id: int, query: str) -> Grounding:
        hit = self.page(page_id)
        retriever = self.retriever()
        if retriever is None:
            raise NotFound("the index is empty")
        image = render_indexed_page(hit.file, hit.page, hit.sha256, hit.kind, retriever.stamp.image_edge, hit.path)
        return ground(retriever, query, image)

    def heatmap_png(self, page_id: int, query: str) -> bytes:
        hit = self.page(page_id)
        key = ("heat", page_id, hit.sha256, query)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return self._cache(key, _png(self.grounding(page_id, query).overlay()))

    def documents(self) -> list[dict]:
        with self._read:
            records = self.reader.documents()
        return [{"id": r.id, "path": r.path, "name": Path(r.path).name, "kind": r.kind, "pages": r.pages,
                 "size": r.size, "uploaded": _is_under(r.file, self.uploads)} for r in records]

    def info(self) -> dict:
        info = self.reader.info()
        return {**info.to_json(), "family": info.build.family if info.build else None,
                "answer_model": self.answer_model, "limits": self.limits.__dict__,
                "jobs_running": sum(not job.finished for job in list(self._jobs.values()))}

    # --- asking ----------------------------------------------------------------------------
    def ask(self, question: str, k: int, max_pages: int, max_new_tokens: int, *, where: dict | None = None,
            path: str | None = None) -> Iterator[tuple[str, dict]]:
        """(event, data) pairs: ``pages`` (what the model is shown), ``token`` (answer text as it
        is generated), ``citations`` (each page shown, cited or not, with its box), ``done``.
        One question at a time; the others wait their turn."""
        retriever = self.retriever()
        if retriever is None or self.reader.info().pages == 0:
            raise NotFound("the index is empty: upload a document first")
        with self._generator_lock:
            asker = Asker(self._generator_instance(), _ReadOnly(self), k=k, max_pages=max_pages,
                          max_new_tokens=max_new_tokens, where=where, path=path)
            stream = asker.ask(question)
            yield "pages", {"pages": [{"page_id": p.page_id, "path": p.path, "name": Path(p.path).name,
                                       "page": p.page, "score": p.score} for p in stream.pages]}
            for piece in stream:
                yield "token", {"text": piece}
            result = stream.result
            notes = result.notes
        citations = []
        groundings = ground_answer(retriever, question, result.answer.text, stream.pages)
        for page, citation, grounding in zip(stream.pages, result.answer.citations, groundings):
            box = grounding.to_json()
            citations.append({"page_id": page.page_id, "path": citation.path, "name": Path(citation.path).name,
                              "page": citation.page, "score": citation.score, "cited": citation.cited,
                              "box": box["box_fraction"]})
        yield "citations", {"citations": citations, "notes": notes}
        yield "done", {"answer": result.answer.text, "answer_model": result.answer.model,
                       "timings": {"retrieve_s": round(result.retrieve_s, 3),
                                   "generate_s": round(result.answer.generate_s, 3)}}

    # --- writing ---------------------------------------------------------------------------
    @property
    def uploads(self) -> Path:
        return self.reader.path / UPLOADS

    def upload(self, name: str, chunks: Iterator[bytes]) -> Job:
        """Store an uploaded file under the index's ``uploads/`` folder and queue its ingest.

        The stored name is derived from the content (its sha256) and a sanitised base name: the
        client's name never becomes a path. Content that is not a PDF or supported image is refused.
        """
        self.uploads.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        head = b""
        with tempfile.NamedTemporaryFile(dir=self.uploads, prefix=".upload-", delete=False) as handle:
            temp = Path(handle.name)
            try:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.limits.max_upload_bytes:
                        raise UploadTooLarge(f"the upload is over the {self.limits.max_upload_bytes} byte limit")
                    if len(head) < 1024:
                        head += chunk[: 1024 - len(head)]
                    digest.update(chunk)
                    handle.write(chunk)
                kind = sniff(head)
                if kind is None:
                    raise UploadRejected(f"{safe_name(name)}: {describe_content(head)}")
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        folder = self.uploads / digest.hexdigest()[:16]
        folder.mkdir(exist_ok=True)
        target = folder / safe_name(name, kind)
        os.replace(temp, target)
        job = Job(id=str(next(self._ids)), name=target.name, path=target)
        with self._queue_ready:
            self._jobs[job.id] = job
            while len(self._jobs) > self.limits.max_jobs_kept:
                oldest = next(iter(self._jobs.values()))
                if not oldest.finished:
                    break
                self._jobs.popitem(last=False)
            self._queue.append(job)
            self._queue_ready.notify()
        return job

    def job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no upload job {job_id!r}")
        return job

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def delete_document(self, document_id: int) -> dict:
        """Remove a document (and its uploaded file, when it was uploaded here)."""
        if not self._write.acquire(timeout=5):
            raise IndexLockedError("an upload is being ingested; try the delete again when it is done")
        try:
            with self._read:
                record = next((r for r in self.reader.documents() if r.id == document_id), None)
            if record is None:
                raise NotFound(f"no document with id {document_id}")
            writer = self._writer()
            try:
                report = writer.remove_documents([document_id])
            finally:
                writer.close()
            if _is_under(record.file, self.uploads):
                record.file.unlink(missing_ok=True)
            return report.to_json()
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
        job.update(state="ingesting")
        settings = IngestSettings(model=self.model if self.reader.build is None else None, device=self.device,
                                  batch_size=1,  # release the shared model between pages: searches go on
                                  on_progress=lambda done, total: job.update(pages_done=done, pages_total=total))
        try:
            with self._write:
                writer = self._writer()
                try:
                    report = writer.ingest([job.path], settings)
                finally:
                    writer.close()
        except DocQAError as error:
            job.update(state="failed", error=str(error))
            return
        except Exception as error:  # a bug: report it on the job rather than kill the worker
            job.update(state="failed", error=f"{type(error).__name__}: {error}")
            return
        state = "failed" if report.failed else "done"
        error = "; ".join(f.error for f in report.failures) or None
        job.update(state=state, report=report.to_json(), error=error)

    def close(self) -> None:
        with self._queue_ready:
            self._stopping = True
            self._queue_ready.notify_all()
        self._worker.join(timeout=5)
        self.reader.close()

    # --- cache -----------------------------------------------------------------------------
    def _cached(self, key: tuple) -> bytes | None:
        with self._images_lock:
            value = self._images.get(key)
            if value is not None:
                self._images.move_to_end(key)
            return value

    def _cache(self, key: tuple, value: bytes, keep: int = 256) -> bytes:
        with self._images_lock:
            self._images[key] = value
            while len(self._images) > keep:
                self._images.popitem(last=False)
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


def _is_under(path: Path, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
    except (OSError, ValueError):
        return False


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()

