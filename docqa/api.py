"""The facade a user imports: open an index, ingest folders, search, remove, describe it.

from docqa import DocIndex
index = DocIndex.open("papers", create=True)
index.ingest(["~/papers"])
for hit in index.search("quarterly revenue by region", k=5):
    print(hit.path, hit.page, hit.score)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .build import BUILD_KEY, BuildStamp, EncoderStamp
from .config import IngestSettings, index_location_problem, index_not_found_message, index_path
from .errors import (
    IndexMismatchError,
    IndexNotFoundError,
    InputFileError,
    OptionsError,
    QueryError,
)
from .index import (
    DB_NAME,
    AliasRecord,
    DocumentRecord,
    IndexOptions,
    IndexStorage,
    PageFilter,
    PageRecord,
    ScoredPage,
    Store,
    VectorFile,
    as_float32,
    check_metadata_key,
)
from .ingest.local import run_ingest
from .ingest.report import IngestReport

if TYPE_CHECKING:  # the model stack is imported where a model is loaded: `info` and `remove` never need it
    from .models.retriever import Retriever

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
    also_at: tuple[str, ...]  # other paths with the same content (the document's aliases)

    @classmethod
    def from_row(cls, row: dict, *, rank: int, score: float, also_at: Iterable[AliasRecord] = ()) -> Hit:
        """A hit from a row of Store.pages_with_documents, and its document's aliases."""
        return cls(
            rank=rank,
            score=score,
            path=row["path"],
            page=row["page"],
            document_id=row["document_id"],
            page_id=row["page_id"],
            sha256=row["sha256"],
            kind=row["kind"],
            file=Path(os.fsdecode(row["path_key"])),
            also_at=tuple(alias.path for alias in also_at),
        )

    def to_json(self) -> dict:
        fields = ("rank", "score", "path", "page", "document_id", "page_id")
        return {**{name: getattr(self, name) for name in fields}, "also_at": list(self.also_at)}


@runtime_checkable
class Searchable(Protocol):
    """The search contract: what a question is answered from (docqa.answer.ask.Asker).

    DocIndex, the shard set (docqa.cluster.shards.ShardSet) and the server's read-only view
    implement it."""

    @property
    def path(self) -> Path:
        """What messages name (an index folder; the shards' parent folder)."""
        ...

    def search(self, query: str, k: int = 5, *, where: dict | None = None, path: str | None = None) -> Sequence[Hit]:
        """The k pages that best match `query`, best first; `where` (tags) and `path` (a glob) filter."""
        ...


def check_query(query: str) -> None:
    """Refuse an empty text query (one message for every Searchable)."""
    if not query.strip():
        raise QueryError("the query is empty; give the words to search for")


@runtime_checkable
class VectorSearchable(Searchable, Protocol):
    """A Searchable that also encodes queries with its own retriever and searches by query
    vectors (DocIndex and ShardSet: what the CLI's search takes)."""

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        device: str | None = None,
        exact: bool = False,
        rerank: int | None = None,
        where: dict | None = None,
        path: str | None = None,
        engine: str | None = None,
    ) -> Sequence[Hit]:
        """As Searchable.search; `device` and `engine` for the query encoder, `exact` and `rerank`
        as in DocIndex.search_embeddings."""
        ...

    def search_embeddings(
        self,
        query: np.ndarray,
        k: int = 10,
        *,
        exact: bool = False,
        rerank: int | None = None,
        where: dict | None = None,
        path: str | None = None,
    ) -> Sequence[Hit]: ...

    def retriever(self, *, device: str | None = None, engine: str | None = None) -> Retriever: ...


@dataclass(frozen=True)
class IndexInfo:
    index: str
    model: str | None
    documents: int
    pages: int
    bytes_on_disk: int
    build: BuildStamp | None
    search: dict  # IndexStorage.search_stats(): the candidate stage's own recall estimate, if any

    def to_json(self) -> dict:
        options = None
        if self.build is not None:
            options = self.build.options if self.build.options is not None else IndexOptions().to_json()
        return {
            "index": self.index,
            "model": self.model,
            "documents": self.documents,
            "pages": self.pages,
            "bytes_on_disk": self.bytes_on_disk,
            "options": options,
            "search": self.search,
        }


@dataclass(frozen=True)
class Moved:
    """A removed path whose document stays indexed at another path with its content (an alias)."""

    path: str
    to: str


@dataclass(frozen=True)
class RemoveReport:
    index: str
    removed: list[str]  # the paths taken out of the index
    not_found: list[str]
    moved: list[Moved] = field(default_factory=list)  # of `removed`, documents kept at another path

    def to_json(self) -> dict:
        return asdict(self)


class DocIndex:
    """One index folder (the facade over `docqa.index.storage.IndexStorage`). Safe to read while
    another process writes; writing methods take the index's write lock."""

    def __init__(self, path: Path, options: IndexOptions | dict | None = None) -> None:
        self.path = path
        self.store = Store(path)
        self.store.migrate()
        self._retriever: Retriever | None = None
        self._storage: IndexStorage | None = None
        self._build: BuildStamp | None = None
        self._created: Path | None = None  # the folder open(create=True) made, until a document lands
        build = self.build
        built = IndexOptions.from_build(build.to_json()) if build is not None else None
        if isinstance(options, dict):  # only the options named: the rest as the index has them
            try:
                options = IndexOptions(**{**built.to_json(), **options}) if built else IndexOptions(**options)
            except (TypeError, ValueError) as error:
                raise OptionsError(f"bad index options: {error}") from error
        if options is not None and built is not None:
            options.check_same(built, path)
        self.options = built or options or IndexOptions()

    @classmethod
    def open(
        cls,
        name_or_path: str | os.PathLike[str] | None = None,
        *,
        create: bool = False,
        options: IndexOptions | dict | None = None,
    ) -> DocIndex:
        """Open `indexes/<name>` (or a path); create it only when `create` is true. `options` are
        fixed when the index is created; opening an index made with other options is refused (a
        dict names only some options). A folder created here is removed again if the first ingest
        fails before committing a document."""
        path = index_path(name_or_path)
        created = None
        if (problem := index_location_problem(name_or_path, path)) is not None:
            raise IndexNotFoundError(problem)
        if not (path / DB_NAME).exists():
            if not create:
                raise IndexNotFoundError(index_not_found_message(name_or_path, path))
            created = next((folder for folder in reversed([path, *path.parents]) if not folder.exists()), None)
            path.mkdir(parents=True, exist_ok=True)
        index = cls(path, options)
        index._created = created
        if index.build is not None:
            index.storage.recover_if_idle()
        return index

    # --- build stamp and model --------------------------------------------------------------
    @property
    def build(self) -> BuildStamp | None:
        """The build stamp (read once it exists: it never changes after the first ingest or add)."""
        if self._build is None:
            self._build = self._stored_build()
        return self._build

    def _stored_build(self) -> BuildStamp | None:
        recorded = self.store.get_json(BUILD_KEY)
        return None if recorded is None else BuildStamp.from_json(recorded)

    def identity(self) -> tuple[int | None, float | None, str | None, str | None]:
        """What names this index and its encoder now, read afresh from disk (`build` is read once):
        the catalogue's inode (an index deleted and made again is another index, whatever its stamp
        says), and the build's creation time, encoder model and config hash (None before any)."""
        try:
            inode: int | None = (self.path / DB_NAME).stat().st_ino
        except OSError:
            inode = None
        build = self._stored_build()
        encoder = None if build is None else build.encoder
        return (
            inode,
            None if build is None else build.created,
            None if encoder is None else encoder.model,
            None if encoder is None else encoder.config_hash,
        )

    @property
    def dim(self) -> int | None:
        """The vectors' dimension, fixed by the first ingest or add (None while the index is empty)."""
        build = self.build
        return None if build is None else build.dim

    def retriever(
        self,
        model: str | None = None,
        device: str | None = None,
        image_edge: int | None = None,
        engine: str | None = None,
        loader: str | None = None,
        trust_remote_code: bool = False,
    ) -> Retriever:
        """The index's retriever, loaded once; refuses a model, image edge, engine or loader other
        than the ones it was built with (an index is never mixed). Without ``engine`` or ``loader`` it
        uses the index's. ``trust_remote_code`` is never taken from the index: a checkpoint with code
        of its own needs it on every load."""
        build = self.build
        if build is not None:
            built = build.check_load_request(self.path, model, image_edge, engine, loader)
            model, image_edge, engine, loader = built.model, built.image_edge, built.engine, built.loader
        if self._retriever is None:
            from .models.checkpoints import check_device
            from .models.retriever import Retriever, default_retriever

            device = check_device(device)
            retriever = Retriever.load(
                model or default_retriever(device),
                device=device,
                image_edge=image_edge,
                engine=engine,
                loader=loader,
                trust_remote_code=trust_remote_code,
            )
            if build is not None:
                build.check_loaded(self.path, retriever.stamp)
            self._retriever = retriever
        return self._retriever

    def adopt_retriever(self, retriever: Retriever) -> None:
        """Use an already loaded retriever (several handles on one index sharing one model, as the
        server does); refused when it is not the model the index was built with."""
        if self.build is not None:
            self.build.check_adopted(self.path, retriever.stamp)
        self._retriever = retriever

    def _write_build(self, stamp: EncoderStamp | None, dim: int) -> None:
        """Record what builds this index: the model's stamp (None for given embeddings of `dim`)
        and the index options."""
        build = BuildStamp.new(stamp, dim, self.options.to_json())
        with self.store.transaction():
            self.store.set_meta(BUILD_KEY, json.dumps(build.to_json()))
        self._build = build

    # --- storage: what the ingest pipelines write to ------------------------------------------
    @property
    def storage(self) -> IndexStorage:
        """The storage engine (the index must have its dimension: after the first ingest or add)."""
        if self.dim is None:
            raise IndexNotFoundError(f"{self.path} has no documents yet")
        return self._storage_for(self.dim)

    def _storage_for(self, dim: int | None) -> IndexStorage:
        """The storage engine; `dim` is None only for an index nothing was added to yet."""
        if self._storage is None:
            self._storage = IndexStorage(self.path, self.store, dim, self.options)
        elif self._storage.dim is None:
            self._storage.dim = dim
        return self._storage

    @property
    def vectors(self) -> VectorFile:
        """The vector file the latest commit refers to."""
        return self.storage.vectors

    @contextmanager
    def bulk(self) -> Iterator[DocIndex]:
        """Hold the write lock across many `add_embeddings` calls and sync them to disk together at
        the end (each document still commits atomically; see IndexStorage.bulk)."""
        with self._storage_for(self.dim).bulk():
            yield self

    def compact(self) -> int:
        """Reclaim the vector rows of replaced, removed or failed documents; returns rows freed."""
        if self.build is None:
            return 0
        with self.storage.writing():
            return self.storage.compact()

    # --- the user-facing operations ---------------------------------------------------------
    def ingest(
        self, paths: Iterable[str | os.PathLike[str]], settings: IngestSettings | None = None, **overrides
    ) -> IngestReport:
        """Index new and changed files under `paths`; see IngestSettings for the knobs."""
        settings = settings or IngestSettings(**overrides)
        given = [os.fspath(p) for p in paths]
        with self._storage_for(self.dim).writing():
            try:
                missing = [p for p in given if not os.path.lexists(os.path.expanduser(p))]
                if missing and len(missing) == len(given):
                    raise InputFileError(", ".join(missing), "no such file or folder; nothing to ingest")
                for key in settings.tags:
                    check_metadata_key(key)
                if settings.ray is not None:  # render and encode on Ray; this process plans and commits
                    from .ingest.ray import RayPipeline

                    pipeline = RayPipeline.start(settings, self.build)
                    self._accept_stamp(pipeline.stamp)
                    report = run_ingest(self.storage, given, settings, None, pipeline=pipeline)
                else:
                    retriever = self.retriever(
                        settings.model,
                        settings.device,
                        settings.image_edge,
                        settings.engine,
                        trust_remote_code=getattr(settings, "trust_remote_code", False),
                    )
                    self._accept_stamp(retriever.stamp)
                    report = run_ingest(self.storage, given, settings, retriever)
            except BaseException:  # a bad model, device, path or tag, or Ctrl-C: leave no empty index behind
                self._discard_if_new_and_empty()
                raise
        self._created = None
        return report

    def _discard_if_new_and_empty(self) -> None:
        """Remove the folder open(create=True) made when no document was committed to it."""
        if self._created is not None and self.store.counts()[0] == 0 and not self.store.checkpoint_rows():
            self.close()
            shutil.rmtree(self._created, ignore_errors=True)
            self._created = None

    def _accept_stamp(self, stamp: EncoderStamp) -> None:
        """Record the encoder of a first ingest; refuse one other than the index was built with."""
        build = self.build
        if build is None:
            self._write_build(stamp, stamp.dim)
            self._storage_for(stamp.dim)
            return
        build.check_ingest(self.path, stamp)

    def add_embeddings(self, path: str, pages: list[np.ndarray], *, metadata: dict | None = None) -> int:
        """Add one document whose pages are the given (n_i, dim) multi-vectors; returns its id.

        `path` is the document's label (it need not exist on disk); a document already at `path` is
        replaced. The first add to a new index fixes `dim` and records that no model built the index.
        """
        arrays = [as_float32(page) for page in pages]  # float16 input: converted once
        if not arrays or any(a.ndim != 2 or len(a) == 0 or a.shape[1] != arrays[0].shape[1] for a in arrays):
            raise ValueError("pages must be a non-empty list of (n_i, dim) arrays with n_i >= 1 and one dim")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("page vectors must be finite numbers")
        for key in metadata or {}:
            check_metadata_key(key)
        dim = arrays[0].shape[1]
        if self.dim is not None and dim != self.dim:
            raise IndexMismatchError(f"{self.path} holds {self.dim}-dimensional vectors; got {dim}")
        with self._storage_for(dim).writing():
            if self.build is None:
                self._write_build(None, dim)
            elif dim != self.dim:
                raise IndexMismatchError(f"{self.path} holds {self.dim}-dimensional vectors; got {dim}")
            digest = hashlib.sha256()  # a fingerprint of the rows as stored
            new_pages = [
                self.storage.append_page(number, 0, 0, vectors, fingerprint=digest)
                for number, vectors in enumerate(arrays, start=1)
            ]
            document_id = self.storage.commit_document(
                Path(path),
                sha256=digest.hexdigest(),
                size=0,
                mtime=time.time(),
                kind=EMBEDDINGS_KIND,
                pages=new_pages,
                metadata=metadata,
            )
            self.storage.compact_if_wasteful()
        return document_id

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        device: str | None = None,
        exact: bool = False,
        rerank: int | None = None,
        where: dict | None = None,
        path: str | None = None,
        engine: str | None = None,
    ) -> list[Hit]:
        """The k pages that best match `query` (MaxSim), best first; see `search_embeddings`."""
        check_query(query)
        if self.build is None:
            return []
        query_vectors = self.retriever(device=device, engine=engine).encode_queries([query])[0]
        return self.search_embeddings(query_vectors, k, exact=exact, rerank=rerank, where=where, path=path)

    def search_embeddings(
        self,
        query: np.ndarray,
        k: int = 10,
        *,
        exact: bool = False,
        rerank: int | None = None,
        where: dict | None = None,
        path: str | None = None,
    ) -> list[Hit]:
        """The k pages with the highest MaxSim for a (n_tokens, dim) query multi-vector, best first.

        Scores are exact MaxSim of the stored vectors. In the default "fast" mode an index of more
        than a thousand pages reranks the candidate stage's best `rerank` pages (default
        RERANK_PAGES; more costs time and finds more of the exact top k); `exact` scores every page
        by brute force. `where` keeps documents whose metadata
        has every given key=value; `path` keeps documents whose path matches the glob. A filtered
        search returns k pages whenever k pages match.
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
        if rerank is not None and rerank < 1:
            raise QueryError(f"rerank must be at least 1, got {rerank}")
        return self._hits(self.storage.search(query, k, exact=exact, rerank=rerank, page_filter=page_filter or None))

    def _hits(self, scored: list[ScoredPage]) -> list[Hit]:
        """Ranked hits with their documents' fields and aliases, fetched in two queries."""
        details = self.store.pages_with_documents([hit.page_id for hit in scored])
        aliases = self.store.aliases_of(row["document_id"] for row in details.values())
        hits: list[Hit] = []
        for hit in scored:
            row = details.get(hit.page_id)
            if row is not None:  # removed by a writer since the page table was read
                also_at = aliases.get(row["document_id"], [])
                hits.append(Hit.from_row(row, rank=len(hits) + 1, score=hit.score, also_at=also_at))
        return hits

    def remove(self, paths: Iterable[str | os.PathLike[str]]) -> RemoveReport:
        """Take `paths` out of the index (a folder takes everything under it). An alias's path goes
        alone; a document's own path goes with its pages, unless the document has an alias left:
        then it moves there (the first alias whose file still has its content, else the first one),
        nothing encoded again."""
        documents: dict[bytes, DocumentRecord] = {}  # in the order found
        aliases: dict[bytes, AliasRecord] = {}
        not_found: list[str] = []
        if self.build is None:
            return RemoveReport(index=str(self.path), removed=[], not_found=[str(given) for given in paths])
        with self.storage.writing():
            searched: list[Path] = []
            for given in paths:
                path = Path(os.path.abspath(os.path.expanduser(os.fspath(given))))
                searched += [path, path.resolve()]
                found = self.store.documents_under([path, path.resolve()])
                found_aliases = self.store.aliases_under([path, path.resolve()])
                if not found and not found_aliases:
                    not_found.append(str(given))
                documents.update((record.key, record) for record in found)
                aliases.update((record.key, record) for record in found_aliases)
            moved = self.storage.remove_paths(list(documents.values()), list(aliases.values()), fallback=True)
            # and the pages an unfinished ingest kept of files there
            if self.storage.forget_checkpoints(searched, under=True) or documents:
                self.storage.compact_if_wasteful()
        return RemoveReport(
            index=str(self.path),
            removed=[*(record.path for record in documents.values()), *(record.path for record in aliases.values())],
            not_found=not_found,
            moved=[Moved(document.path, alias.path) for document, alias in moved],
        )

    def checkpointed_pages(self, path: str | os.PathLike[str]) -> int:
        """How many encoded pages of the file at `path` an unfinished ingest left for the next one to
        resume from (0 when none; they are not searchable until the document is complete)."""
        return len(self.store.checkpoint_of(Path(path)))

    def page(self, page_id: int) -> Hit | None:
        """One indexed page by its id (a Hit with rank 0 and score 0), or None when there is none."""
        row = self.store.pages_with_documents([page_id]).get(page_id)
        if row is None:
            return None
        also_at = self.store.aliases_of([row["document_id"]]).get(row["document_id"], [])
        return Hit.from_row(row, rank=0, score=0.0, also_at=also_at)

    def documents(self) -> list[DocumentRecord]:
        """Every indexed document, in path order."""
        return self.store.all_documents()

    def document(self, path: str | os.PathLike[str]) -> DocumentRecord | None:
        """The document indexed at exactly `path` (as ingest recorded it), or None."""
        return self.store.document(Path(path))

    def aliases(self, document_id: int | None = None) -> list[AliasRecord]:
        """The other paths of one document (or of every document), files found with its content, in
        path order (an alias shares its document's pages and tags)."""
        found = self.store.aliases_of(None if document_id is None else [document_id])
        return sorted((alias for listed in found.values() for alias in listed), key=lambda alias: alias.key)

    def aliases_by_document(self) -> dict[int, list[AliasRecord]]:
        """Every document's aliases, in path order, by document id (documents without any left out)."""
        return self.store.aliases_of()

    def page_records(self, document_id: int | None = None) -> list[PageRecord]:
        """The committed pages of one document (or of every one), by document id and page number:
        page ids, sizes as rendered and where their vectors are in the vector file."""
        return self.store.page_records(document_id)

    def list_documents(self, *, where: dict[str, object] | None = None, path: str | None = None) -> list[dict]:
        """Every document matching `where` tags and the `path` glob (its own path or an alias's), ordered
        by path, as JSON objects (path, pages, size, kind, sha256, tags, added, also_at: its aliases)."""
        return [listed.to_json() for listed in self.store.listed_documents(PageFilter(where=where or {}, path=path))]

    def remove_documents(self, document_ids: Iterable[int]) -> RemoveReport:
        """Delete documents by id, with their aliases (ids not in the index are reported as not found)."""
        wanted = list(dict.fromkeys(int(i) for i in document_ids))
        if self.build is None:
            return RemoveReport(index=str(self.path), removed=[], not_found=[str(i) for i in wanted])
        with self.storage.writing():
            known = {record.id: record.path for record in self.store.all_documents()}
            found = [i for i in wanted if i in known]
            if found:
                self.storage.delete(found)
                self.storage.compact_if_wasteful()
        return RemoveReport(
            index=str(self.path),
            removed=[known[i] for i in found],
            not_found=[str(i) for i in wanted if i not in known],
        )

    def counts(self) -> tuple[int, int]:
        """(documents, pages) committed: cheap, unlike `info`, which also sizes the folder and reads
        the candidate stage's recall estimate."""
        return self.store.counts()

    def info(self) -> IndexInfo:
        documents, pages = self.counts()
        build = self.build
        size = sum(entry.stat().st_size for entry in self.path.iterdir() if entry.is_file())
        return IndexInfo(
            index=str(self.path),
            model=build.model if build else None,
            documents=documents,
            pages=pages,
            bytes_on_disk=size,
            build=build,
            search=self.storage.search_stats() if self.dim is not None else {},
        )

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()
        self.store.close()
