"""Ingest on Ray: render as Ray Data tasks, encode in an actor pool, commit on the driver.

    driver: plan (docqa.ingest.plan: walk, sniff, hash, skip unchanged)
      └▶ one row per document ──flat_map: render (CPU tasks)──▶ page rows (raw RGB) + an end row
           ──map_batches: PageEncoder actors (one model each; a GPU each when the cluster has them)──▶
      ◀── page vectors streamed back; each document committed (docqa.ingest.local.commit_job) once all
          of its pages arrived, in one transaction, exactly as a local ingest does. Unfinished
          documents' pages are checkpointed as a local ingest's are (every checkpoint_s, after a render
          error, when the ingest stops short), and the next ingest renders only the pages after them.

Exactly once: Ray retries a render task or an encoder batch whose worker died, and only the output
of a finished task reaches the driver; the driver also drops any page it already holds. A document
whose pages did not all arrive is never committed. If the driver dies, the index keeps what was
committed or checkpointed (recovery drops the rest), and a re-run skips the committed documents by
content hash and resumes the checkpointed ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..build import BuildStamp, EncoderStamp
from ..cluster.ray_runtime import cluster_cpus, cluster_gpus, connect
from ..config import IngestSettings
from ..errors import ClusterError, IndexMismatchError, InputFileError
from ..index import IndexStorage
from ..inputs.render import render_pages
from ..models.checkpoints import is_gpu
from ..models.retriever import Retriever, default_retriever
from .local import checkpoint_open, commit_job, keeping_encoded_pages, kept_reason
from .plan import PlannedFile
from .report import IngestReport

# Row kinds flowing through the dataset.
PAGE, END, ERROR = "page", "end", "error"
STORED_DTYPE = np.float16  # what the index stores; sending it halves the transfer, values unchanged
RETRIES = 3  # retries of the model-loading task whose worker died


def render_document(row: dict, *, image_edge: int, chunk_pages: int, timeout_s: float) -> Iterator[dict]:
    """Ray Data flat_map: the pages of one document from ``row["first_page"]`` on (those before it
    were resumed from a checkpoint) as raw RGB, then an END row with the number of its last page.
    When the file cannot be rendered (further), an ERROR row instead carries the reason and the
    number of the last page rendered before it."""
    path = os.fsdecode(row["path"])
    pages = row["first_page"] - 1
    try:
        for page in render_pages(
            Path(path),
            row["kind"],
            image_edge,
            first_page=row["first_page"],
            chunk_pages=chunk_pages,
            timeout_s=timeout_s,
        ):
            width, height = page.image.size
            pages += 1
            yield _row(
                row["job"],
                PAGE,
                number=page.number,
                width=width,
                height=height,
                image=page.image.convert("RGB").tobytes(),
            )
    except InputFileError as error:
        yield _row(row["job"], ERROR, number=pages, error=error.reason)
        return
    yield _row(row["job"], END, number=pages)


def _row(
    job: int, kind: str, *, number: int = 0, width: int = 0, height: int = 0, image: bytes = b"", error: str = ""
) -> dict:
    """One dataset row (every row has every column, so blocks share one schema)."""
    return {
        "job": job,
        "kind": kind,
        "number": number,
        "width": width,
        "height": height,
        "image": image,
        "error": error,
    }


class PageEncoder:
    """Ray Data actor: loads the retriever once, encodes the PAGE rows of each batch, passes the
    other rows through. Output rows carry float16 vectors as bytes plus their row count.

    It loads what ``stamp`` (the ingest's first load, as JSON) records: model, image edge, engine,
    loader and whether the checkpoint's own code may run; and refuses to encode when its own load
    differs from that one in anything recorded (another revision of the checkpoint on its node, or one
    changed since the ingest began): an index never mixes vectors of two checkpoints."""

    def __init__(self, stamp: dict, device: str) -> None:
        expected = EncoderStamp.from_json(stamp)
        self.retriever = _load(
            expected.model, device, expected.image_edge, expected.engine, expected.loader, expected.trust_remote_code
        )
        loaded = self.retriever.stamp
        differs = [
            f"{name} {str(getattr(loaded, name))[:19]} instead of {str(getattr(expected, name))[:19]}"
            for name in EncoderStamp.__dataclass_fields__
            if getattr(loaded, name) != getattr(expected, name)
        ]
        if differs:
            raise IndexMismatchError(
                f"an encoder actor's load of {expected.model!r} differs from the ingest's first load"
                f" ({'; '.join(differs)}); give every node the same checkpoint and run ingest again"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        is_page = batch["kind"] == PAGE
        images = [
            Image.frombytes("RGB", (int(width), int(height)), data)
            for width, height, data in zip(batch["width"][is_page], batch["height"][is_page], batch["image"][is_page])
        ]
        encoded = iter(self.retriever.encode_pages(images))
        vectors = np.empty(len(is_page), dtype=object)
        counts = np.zeros(len(is_page), dtype=np.int64)
        for row in np.flatnonzero(is_page):
            page = np.asarray(next(encoded), dtype=STORED_DTYPE)
            vectors[row], counts[row] = page.tobytes(), len(page)
        vectors[~is_page] = b""
        return {
            "job": batch["job"],
            "kind": batch["kind"],
            "number": batch["number"],
            "width": batch["width"],
            "height": batch["height"],
            "error": batch["error"],
            "vectors": vectors,
            "count": counts,
        }


def _load(
    model: str, device: str, image_edge: int | None, engine: str | None, loader: str | None, trust_remote_code: bool
) -> Retriever:
    return Retriever.load(
        model, device=device, image_edge=image_edge, engine=engine, loader=loader, trust_remote_code=trust_remote_code
    )


def _load_stamp(*args: Any) -> EncoderStamp:
    """On a worker like the encoders' own: load the model once (``_load``'s arguments), for the
    stamp the index records and every encoder actor loads again."""
    return _load(*args).stamp


@dataclass
class _Arrivals:
    """What the driver holds of one document until it commits (or, after a render error, until the
    pages rendered before the error are in, to checkpoint them)."""

    job: PlannedFile
    numbers: set[int] = field(default_factory=set)
    rendered: int | None = None  # the last page the render task produced, once its END or ERROR row arrived
    error: str | None = None  # the render task's ERROR row

    @property
    def complete(self) -> bool:
        return self.rendered is not None and len(self.numbers) == self.rendered


@dataclass
class RayPipeline:
    """An ingest pipeline (docqa.ingest.local.Pipeline) that renders and encodes on a Ray cluster."""

    ray: ModuleType
    stamp: EncoderStamp
    device: str
    encoders: int
    gpus_per_encoder: float

    @classmethod
    def start(cls, settings: IngestSettings, build: BuildStamp | None) -> RayPipeline:
        """Connect to Ray, pick the device and actor count, and load the model once on a worker
        (fails fast, before any file is planned, if it cannot load there)."""
        ray = connect(settings.ray)
        gpus = cluster_gpus(ray)
        device = settings.device or ("cuda" if gpus else "cpu")
        if is_gpu(device) and not gpus:
            raise ClusterError(f"--device {device} asked for, but the Ray cluster has no GPU")
        encoded_by = build.encoder if build is not None else None
        model = settings.model or (encoded_by.model if encoded_by else None) or default_retriever(device)
        image_edge = settings.image_edge or (encoded_by.image_edge if encoded_by else None)
        engine = settings.engine or (encoded_by.engine if encoded_by else None)
        loader = encoded_by.loader if encoded_by else None  # as a local ingest: the index's loader
        gpus_per_encoder = 1.0 if is_gpu(device) else 0.0
        encoders = settings.ray_encoders or (gpus if gpus_per_encoder else max(1, cluster_cpus(ray) - 1))
        load = ray.remote(num_cpus=1, num_gpus=gpus_per_encoder, max_retries=RETRIES)(_load_stamp)
        stamp = ray.get(load.remote(model, device, image_edge, engine, loader, settings.trust_remote_code))
        return cls(ray, stamp, device, encoders, gpus_per_encoder)

    def __call__(
        self, storage: IndexStorage, jobs: list[PlannedFile], settings: IngestSettings, report: IngestReport, bar: tqdm
    ) -> None:
        if not jobs:
            return
        waiting = {number: _Arrivals(job, {page.number for page in job.pages}) for number, job in enumerate(jobs)}
        bar.update(sum(job.resumed for job in jobs))
        with keeping_encoded_pages(storage, jobs):
            for batch in self._batches(jobs, settings):
                for row in range(len(batch["job"])):
                    arrivals = waiting.get(int(batch["job"][row]))
                    if arrivals is None:  # already committed or failed: a duplicate from a retry
                        continue
                    stored = self._take(storage, arrivals, batch, row)
                    bar.update(stored)
                    if arrivals.complete:
                        del waiting[int(batch["job"][row])]
                        self._finish(storage, arrivals, report)
                    elif stored and arrivals.job.checkpoint_due(settings.checkpoint_s):
                        checkpoint_open(storage, jobs)
        for arrivals in waiting.values():
            job = arrivals.job
            job.error = arrivals.error or (
                f"{len(arrivals.numbers)} of {job.page_count} pages came back from the cluster; run ingest again"
            )
            report.fail(job.path, kept_reason(job.error, job.checkpoint(storage)))

    def _finish(self, storage: IndexStorage, arrivals: _Arrivals, report: IngestReport) -> None:
        """Commit a document whose pages are all in; after a render error, checkpoint the pages
        rendered before it and report the failure instead."""
        job = arrivals.job
        job.pages.sort(key=lambda page: page.number)
        if arrivals.error is None:
            commit_job(storage, job, report)
            return
        job.error = arrivals.error
        report.fail(job.path, kept_reason(job.error, job.checkpoint(storage)))

    def _batches(self, jobs: list[PlannedFile], settings: IngestSettings) -> Iterator[dict[str, np.ndarray]]:
        """The dataset's output batches; an encoder actor that could not start (its model did not
        load, or loaded otherwise than the first load) ends the ingest with its reason in one line."""
        try:
            yield from self._dataset(jobs, settings).iter_batches(batch_size=None, batch_format="numpy")
        except self.ray.exceptions.RayActorError as error:
            if not getattr(error, "actor_init_failed", False):
                raise
            reason = str(getattr(error, "error_msg", "") or error).strip().splitlines()[-1]
            raise ClusterError(f"an encoder actor could not start: {reason}") from error

    def _take(self, storage: IndexStorage, arrivals: _Arrivals, batch: dict[str, np.ndarray], row: int) -> int:
        """Apply one row to its document; returns the number of new pages stored (0 or 1)."""
        kind = batch["kind"][row]
        job = arrivals.job
        if kind == ERROR:
            arrivals.error = str(batch["error"][row])
            arrivals.rendered = int(batch["number"][row])
        elif kind == END:
            arrivals.rendered = int(batch["number"][row])
        elif int(batch["number"][row]) not in arrivals.numbers:
            number = int(batch["number"][row])
            vectors = np.frombuffer(batch["vectors"][row], dtype=STORED_DTYPE).reshape(
                int(batch["count"][row]), self.stamp.dim
            )
            job.store_page(storage, number, int(batch["width"][row]), int(batch["height"][row]), vectors)
            arrivals.numbers.add(number)
            return 1
        return 0

    def _dataset(self, jobs: list[PlannedFile], settings: IngestSettings):
        """The lazy Ray Data pipeline over `jobs` (nothing runs until the driver iterates it)."""
        documents = [
            {"job": number, "path": os.fsencode(job.path), "kind": job.kind, "first_page": len(job.pages) + 1}
            for number, job in enumerate(jobs)
        ]
        dataset = self.ray.data.from_items(documents, override_num_blocks=len(documents))
        pages = dataset.flat_map(
            render_document,
            num_cpus=1,
            fn_kwargs={
                "image_edge": self.stamp.image_edge,
                "chunk_pages": settings.chunk_pages,
                "timeout_s": settings.render_timeout_s,
            },
        )
        return pages.map_batches(
            PageEncoder,
            batch_size=settings.batch_size,
            batch_format="numpy",
            compute=self.ray.data.ActorPoolStrategy(size=self.encoders),
            fn_constructor_kwargs={"stamp": self.stamp.to_json(), "device": self.device},
            num_cpus=1,
            num_gpus=self.gpus_per_encoder,
        )  # Ray Data restarts a dead encoder actor and retries its batch (max_restarts=-1 by default)
