"""The facade a user imports: open an index, ingest folders, search, remove, describe it.

    from docqa import DocIndex
    index = DocIndex.open("papers", create=True)
    index.ingest(["~/papers"])
    for hit in index.search("quarterly revenue by region", k=5):
        print(hit.path, hit.page, hit.score)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .checkpoints import default_device
from .config import IngestSettings, index_path
from .encoders import EncoderStamp, Retriever, default_retriever
from .errors import (
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    ModelRequiredError,
    QueryError,
    StorageFullError,
)
from .index.search import ScoredPage, TokenIndex, brute_force_top_k, exact_top_k
from .ingest import IngestReport, run_ingest
from .index.locking import WriteLock
from .index.store import DB_NAME, NewPage, PageFilter, PageTable, Store, check_metadata_key
from .index.vectors import VECTOR_DTYPE, VectorFile

BUILD_KEY = "build"
EMBEDDINGS_KIND = "embeddings"  # documents added with add_embeddings (no file behind them)


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    path: str
    page: int  # 1-based
    document_id: int
    page_id: int
    sha256: str
    kind: str
    file: Path  # the file itself; `path` is for display (undecodable bytes escaped)

    def to_json(self) -> dict:
        fields = ("rank", "score", "path", "page", "document_id", "page_id")
        return {name: getattr(self, name) for name in fields}


@dataclass(frozen=True)
class IndexInfo:
    index: str
    model: str | None
    documents: int
    pages: int
    bytes_on_disk: int
    build: dict | None

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "model": self.model,
            "documents": self.documents,
            "pages": self.pages,
            "bytes_on_disk": self.bytes_on_disk,
        }


@dataclass(frozen=True)
class RemoveReport:
    index: str
    removed: list[str]
    not_found: list[str]

    def to_json(self) -> dict:
        return asdict(self)


class DocIndex:
    """One index folder: SQLite store, vector file, FAISS candidate index. Safe to read while
    another process writes; writing methods take the index's write lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = Store(path)
        self.store.migrate()
        self._retriever: Retriever | None = None
        self._vectors: VectorFile | None = None
        self._tokens: TokenIndex | None = None

    @classmethod
    def open(cls, name_or_path: str | os.PathLike[str] | None = None, *, create: bool = False) -> DocIndex:
        """Open `indexes/<name>` (or a path); create it only when `create` is true."""
        path = index_path(name_or_path)
        if not (path / DB_NAME).exists():
            if not create:
                raise IndexNotFoundError(
                    f"no index at {path}; create it with `docqa ingest PATH... --index {name_or_path or 'default'}`"
                )
            path.mkdir(parents=True, exist_ok=True)
        index = cls(path)
        index._recover_if_idle()
        return index

    # --- build stamp and model --------------------------------------------------------------
    @property
    def build(self) -> dict | None:
        return self.store.get_json(BUILD_KEY)

    @property
    def dim(self) -> int | None:
        """The vectors' dimension, fixed by the first ingest or add (None while the index is empty)."""
        build = self.build
        return None if build is None else int(build.get("dim") or build["encoder"]["dim"])

    def retriever(self, model: str | None = None, device: str | None = None,
                  image_edge: int | None = None) -> Retriever:
        """The index's retriever, loaded once; refuses a model other than the one it was built with."""
        build = self.build
        if build is not None:
            built = build["encoder"]
            if built is None:
                raise ModelRequiredError(
                    f"{self.path} holds embeddings given through add_embeddings, not made by a model, so it"
                    " cannot encode text or pages; search it with DocIndex.search_embeddings, or ingest"
                    " into another --index"
                )
            if model is not None and _same_model(model) != built["model"]:
                raise IndexMismatchError(
                    f"{self.path} was built with model {built['model']!r}; it cannot take {model!r}"
                    " (use another --index for another model)"
                )
            if image_edge is not None and image_edge != built["image_edge"]:
                raise IndexMismatchError(
                    f"{self.path} was built at image edge {built['image_edge']} px; it cannot take {image_edge}"
                )
            model, image_edge = built["model"], built["image_edge"]
        if self._retriever is None:
            device = device or default_device()
            retriever = Retriever.load(model or default_retriever(device), device=device, image_edge=image_edge)
            if build is not None and retriever.stamp.config_hash != build["encoder"]["config_hash"]:
                raise IndexMismatchError(
                    f"the checkpoint {model!r} differs from the one {self.path} was built with"
                    " (its config changed); re-ingest into a new index"
                )
            self._retriever = retriever
        return self._retriever

    def _write_build(self, stamp: EncoderStamp | None, dim: int) -> None:
        """Record what builds this index: the model's stamp, or None for given embeddings of `dim`."""
        build = {"encoder": None if stamp is None else asdict(stamp), "dim": dim,
                 "docqa_version": __version__, "created": time.time()}
        with self.store.transaction():
            self.store.set_meta(BUILD_KEY, json.dumps(build))

    # --- storage ----------------------------------------------------------------------------
    @property
    def vectors(self) -> VectorFile:
        """The vector file the latest commit refers to (compaction replaces it by a new one)."""
        return self._vector_file(self.store.vector_file())

    def _vector_file(self, name: str) -> VectorFile:
        if self._vectors is None or self._vectors.path.name != name:
            build = self.build
            if build is None:
                raise IndexNotFoundError(f"{self.path} has no documents yet")
            if self._vectors is not None:
                self._vectors.close()
            self._vectors = VectorFile(self.path, self.dim, name)
        return self._vectors

    def candidates(self, table: PageTable, epoch: int, vectors: VectorFile) -> TokenIndex:
        """The FAISS candidate index for a snapshot (`Store.snapshot`), holding every page of `table`.

        A copy made for another vector epoch numbers rows differently (rows were dropped or the
        file compacted since), so it is replaced: by the saved index when that one matches, else
        by one built from `vectors`. Rows owned by no page of `table` are ignored by search.
        """
        if self._tokens is None or self._tokens.epoch != epoch:
            saved = TokenIndex.load(self.path, vectors.dim)
            self._tokens = saved if saved is not None and saved.epoch == epoch else None
        if self._tokens is None or self._tokens.high_water > vectors.rows:
            self._tokens = TokenIndex.build(table, vectors, epoch)
        else:
            self._tokens.catch_up(table, vectors)
        return self._tokens

    def add_vectors(self, vectors: np.ndarray) -> int:
        """Append one page's vectors (not yet visible: commit_document does that); returns its offset."""
        stored = np.asarray(vectors, dtype=VECTOR_DTYPE)
        offset = self.vectors.append(stored)
        self._tokens.add(offset, stored.astype(np.float32))
        return offset

    def _recover(self) -> None:
        """Writer start-up: drop what a crashed writer left and make the candidate index current.

        Rows past the last commit and vector files no commit names were written by a process that
        died. Dropping rows changes what a row number may hold, so `vector_epoch` is bumped: readers
        holding an older candidate index then reload it.
        """
        current = self.vectors
        for stale in [*self.path.glob(".tokens-*.tmp"), *self.path.glob("vectors*.f16")]:
            if stale != current.path:
                stale.unlink(missing_ok=True)
        end = self.store.vector_end()
        epoch = self.store.vector_epoch()
        saved = TokenIndex.load(self.path, current.dim)
        if current.rows > end or saved is None or saved.epoch != epoch or saved.high_water > end:
            current.truncate(end)
            epoch = self._bump_epoch()
            saved = TokenIndex.build(self.store.page_table(), current, epoch)
            saved.save(self.path)
        self._tokens = saved
        self.compact_if_wasteful()  # a writer killed between an update and its compaction

    def _bump_epoch(self) -> int:
        """Start a new vector epoch; returns it."""
        epoch = self.store.vector_epoch() + 1
        with self.store.transaction():
            self.store.set_meta("vector_epoch", str(epoch))
        return epoch

    def compact(self) -> int:
        """Reclaim the vector rows of replaced, removed or failed documents; returns rows freed."""
        with self._writing():
            return self._compact() if self.build is not None else 0

    def _compact(self) -> int:
        """Copy every committed page's rows, in order, into a new vector file; then switch to it in
        one commit. A crash before the commit leaves the old file in charge (the new one is
        deleted on recovery); after it, the old file is the leftover."""
        old = self.vectors
        table = self.store.page_table()
        freed = old.rows - int(table.counts.sum())
        if freed <= 0:
            return 0
        epoch = self.store.vector_epoch() + 1
        new = VectorFile(self.path, old.dim, f"vectors.{epoch}.f16")
        new.path.unlink(missing_ok=True)
        moves = [(int(page_id), new.append(old.read_rows(int(o), int(o + c))))
                 for page_id, o, c in zip(table.page_ids, table.offsets, table.counts)]
        new.sync()
        new.close()
        with self.store.transaction():
            self.store.set_offsets(moves)
            self.store.set_meta("vector_epoch", str(epoch))
            self.store.set_meta("vector_file", new.path.name)
        self._tokens = TokenIndex.build(self.store.page_table(), self.vectors, epoch)
        self._tokens.save(self.path)
        old.close()
        old.path.unlink(missing_ok=True)
        return freed

    def compact_if_wasteful(self, ratio: float = 0.25) -> int:
        """Compact (inside a write) when more than `ratio` of the vector rows are garbage."""
        rows = self.vectors.rows
        live = self.store.vector_rows()
        return self._compact() if rows and (rows - live) > ratio * rows else 0

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the write lock; recover from any crash of an earlier writer first."""
        lock = WriteLock(self.path)
        try:
            if self.build is not None:
                self._recover()
            yield
        except (OSError, sqlite3.OperationalError) as error:
            if not _is_storage_full(error):
                raise
            raise StorageFullError(
                f"{self.path}: out of disk space, or a write failed ({error}); everything committed"
                " before this point is intact; free some space and run the command again"
            ) from error
        finally:
            if self._vectors is not None:
                self._vectors.close()
            lock.close()

    def _recover_if_idle(self) -> None:
        """On open: repair what a crashed writer left, unless a writer is running right now."""
        if self.build is None:
            return
        try:
            with self._writing():
                pass
        except (IndexLockedError, StorageFullError, OSError):
            pass  # a live writer, a read-only folder or a full disk: readers see committed pages anyway

    def save_candidates(self) -> None:
        if self._tokens is not None:
            self._tokens.save(self.path)

    def commit_document(self, path: Path, *, sha256: str, size: int, mtime: float, kind: str,
                        pages: list[NewPage], metadata: dict | None = None) -> int:
        """Make a document and its pages visible atomically (its vectors are already appended)."""
        self.vectors.sync()
        with self.store.transaction():
            document_id, replaced = self.store.put_document(
                path, sha256=sha256, size=size, mtime=mtime, kind=kind, pages=pages, metadata=metadata
            )
        self._forget_vectors(replaced)
        return document_id

    def delete_documents(self, document_ids: list[int]) -> int:
        with self.store.transaction():
            ranges = self.store.delete_documents(document_ids)
        self._forget_vectors(ranges)
        return len(document_ids)

    def _forget_vectors(self, ranges: list[tuple[int, int]]) -> None:
        """Drop deleted pages' rows from the candidate index (they stay as garbage in the vector file)."""
        self._tokens.remove(ranges)

    # --- the user-facing operations ---------------------------------------------------------
    def ingest(self, paths: Iterable[str | os.PathLike[str]], settings: IngestSettings | None = None,
               **overrides) -> IngestReport:
        """Index new and changed files under `paths`; see IngestSettings for the knobs."""
        settings = settings or IngestSettings(**overrides)
        given = [os.fspath(p) for p in paths]
        for key in settings.tags:
            check_metadata_key(key)
        with self._writing():
            if settings.ray is not None:  # render and encode on Ray; this process plans and commits
                from .cluster.ingest import RayPipeline

                pipeline = RayPipeline.start(settings, self.build)
                self._accept_stamp(pipeline.stamp)
                return run_ingest(self, given, settings, None, pipeline=pipeline)
            retriever = self.retriever(settings.model, settings.device, settings.image_edge)
            self._accept_stamp(retriever.stamp)
            return run_ingest(self, given, settings, retriever)

    def _accept_stamp(self, stamp: EncoderStamp) -> None:
        """Record the encoder of a first ingest; refuse one other than the index was built with."""
        build = self.build
        if build is None:
            self._write_build(stamp, stamp.dim)
            self._recover()  # sets up the empty vector file and candidate index
            return
        built = build["encoder"]
        if built is None:
            self.retriever()  # raises ModelRequiredError: given embeddings, no model to ingest with
        if (stamp.model, stamp.config_hash, stamp.image_edge) != (
                built["model"], built["config_hash"], built["image_edge"]):
            raise IndexMismatchError(
                f"{self.path} was built with model {built['model']!r} at image edge {built['image_edge']} px;"
                f" it cannot take {stamp.model!r} at {stamp.image_edge} px (use another --index)"
            )

    def add_embeddings(self, path: str, pages: list[np.ndarray], *, metadata: dict | None = None) -> int:
        """Add one document whose pages are the given (n_i, dim) multi-vectors; returns its id.

        `path` is the document's label (it need not exist on disk); a document already at `path` is
        replaced. The first add to a new index fixes `dim` and records that no model built the index.
        """
        arrays = [np.asarray(page) for page in pages]
        if not arrays or any(a.ndim != 2 or len(a) == 0 or a.shape[1] != arrays[0].shape[1] for a in arrays):
            raise ValueError("pages must be a non-empty list of (n_i, dim) arrays with n_i >= 1 and one dim")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("page vectors must be finite numbers")
        for key in metadata or {}:
            check_metadata_key(key)
        dim = arrays[0].shape[1]
        with self._writing():
            if self.build is None:
                self._write_build(None, dim)
                self._recover()
            elif dim != self.dim:
                raise IndexMismatchError(f"{self.path} holds {self.dim}-dimensional vectors; got {dim}")
            digest = hashlib.sha256()
            new_pages = []
            for number, vectors in enumerate(arrays, start=1):
                digest.update(np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE).tobytes())
                new_pages.append(NewPage(number, 0, 0, self.add_vectors(vectors), len(vectors)))
            document_id = self.commit_document(Path(path), sha256=digest.hexdigest(), size=0, mtime=time.time(),
                                               kind=EMBEDDINGS_KIND, pages=new_pages, metadata=metadata)
            if not self.compact_if_wasteful():
                self.save_candidates()
        return document_id

    def search(self, query: str, k: int = 5, *, device: str | None = None, exact: bool = False,
               where: dict | None = None, path: str | None = None) -> list[Hit]:
        """The k pages that best match `query` (MaxSim), best first; see `search_embeddings`."""
        if not query.strip():
            raise QueryError("the query is empty; give the words to search for")
        if self.build is None:
            return []
        query_vectors = self.retriever(device=device).encode_queries([query])[0]
        return self.search_embeddings(query_vectors, k, exact=exact, where=where, path=path)

    def search_embeddings(self, query: np.ndarray, k: int = 10, *, exact: bool = False,
                          where: dict | None = None, path: str | None = None) -> list[Hit]:
        """The k pages with the highest MaxSim for a (n_tokens, dim) query multi-vector, best first.

        `exact` scores every page (brute force). `where` keeps documents whose metadata has every
        given key=value; `path` keeps documents whose path matches the glob. A filtered search
        returns k pages whenever k pages match.
        """
        query = np.asarray(query, dtype=np.float32)
        if self.build is None:
            return []
        if query.ndim != 2 or query.shape[1] != self.dim or len(query) == 0:
            raise QueryError(f"the query must be a (n_tokens, {self.dim}) array, got shape {query.shape}")
        try:
            page_filter = PageFilter(dict(where or {}), path)
        except ValueError as error:
            raise QueryError(str(error)) from error
        for attempt in range(3):
            table, epoch, name, allowed = self.store.snapshot(page_filter)
            vectors = self._vector_file(name)
            try:
                if allowed is not None:
                    scored = brute_force_top_k(query, k, table.subset(np.isin(table.page_ids, allowed)), vectors)
                elif exact:
                    scored = brute_force_top_k(query, k, table, vectors)
                else:
                    scored = exact_top_k(query, k, table, self.candidates(table, epoch, vectors), vectors)
                break
            except FileNotFoundError:  # compacted into a new file since the snapshot: take a new one
                if attempt == 2:
                    raise
        return self._hits(scored)

    def _hits(self, scored: list[ScoredPage]) -> list[Hit]:
        """Ranked hits with their documents' fields, fetched in one query."""
        details = self.store.pages_with_documents([hit.page_id for hit in scored])
        hits: list[Hit] = []
        for hit in scored:
            row = details.get(hit.page_id)
            if row is not None:  # removed by a writer since the page table was read
                hits.append(Hit(rank=len(hits) + 1, score=hit.score, path=row["path"], page=row["page"],
                                document_id=row["document_id"], page_id=hit.page_id,
                                sha256=row["sha256"], kind=row["kind"],
                                file=Path(os.fsdecode(row["path_key"]))))
        return hits

    def remove(self, paths: Iterable[str | os.PathLike[str]]) -> RemoveReport:
        """Delete the documents at `paths` (a folder removes everything under it)."""
        matched: dict[int, str] = {}  # document id -> path, in the order found
        not_found: list[str] = []
        with self._writing():
            for given in paths:
                path = Path(os.path.abspath(os.path.expanduser(os.fspath(given))))
                matches = self.store.documents_under([path, path.resolve()])
                if not matches:
                    not_found.append(str(given))
                matched.update((record.id, record.path) for record in matches)
            if matched:
                self.delete_documents(list(matched))
                if not self.compact_if_wasteful():
                    self.save_candidates()
        return RemoveReport(index=str(self.path), removed=list(matched.values()), not_found=not_found)

    def info(self) -> IndexInfo:
        documents, pages = self.store.counts()
        build = self.build
        size = sum(entry.stat().st_size for entry in self.path.iterdir() if entry.is_file())
        return IndexInfo(index=str(self.path), model=(build["encoder"] or {}).get("model") if build else None,
                         documents=documents, pages=pages, bytes_on_disk=size, build=build)

    def close(self) -> None:
        if self._vectors is not None:
            self._vectors.close()
        self.store.close()


def _same_model(model: str) -> str:
    """How a model is recorded: local folders as absolute paths, hub ids as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def _is_storage_full(error: OSError | sqlite3.OperationalError) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        return "full" in str(error) or "disk I/O error" in str(error)
    return error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
