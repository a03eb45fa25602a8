"""The storage engine of one index folder, behind one small contract:

- writing (inside `writing()`, which holds the write lock and first repairs what a crashed writer
  left): `append_page` then `commit_document` (one SQLite transaction per document), `delete`,
  `compact`;
- reading (any process, any time, also during a write): `search`.

The SQLite transaction is the one commit point. Vectors are appended to the vector file and fsynced
before the commit that points at them; rows past the last commit are dropped on recovery. The
candidate index is derived data, kept by the candidate stage (candidate_stage.py): saved now and
then, caught up from the vector file for pages committed after its save, rebuilt from the vector
file if it is lost.

Aliases (`add_alias`, `commit_document(aliases=...)`, `remove_paths`) are other paths of a document,
files with its content: each change to them commits in the same transaction as the document
changes it implies. A document whose own path goes (removed, vanished, or now other content) moves
to one of its aliases, pages and vectors kept, or is deleted when none is left.

Checkpoints (`checkpoint`, `checkpointed`) keep the encoded pages of a document not yet committed,
so that an ingest that stopped mid-document resumes from them: their vectors are synced before the
transaction that records them, recovery keeps their rows, compaction moves them, and they are never
searched; `commit_document` drops the document's checkpoint in its own transaction.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import IndexLockedError, IndexMismatchError, IndexNotFoundError, StorageFullError
from ..inputs.sources import sha256_of
from . import search as scoring
from .candidate_stage import CandidateStage
from .locking import WriteLock
from .pooling import pool_tokens
from .search import ScoredPage, brute_force_top_k
from .store import AliasRecord, DocumentRecord, NewAlias, NewPage, PageFilter, Store, path_key
from .threads import one_thread
from .vectors import VECTOR_TYPES, VectorFile, file_name

MODES = ("fast", "exact")
DEFAULT_VECTOR_TYPE = {"fast": "bfloat16", "exact": "float16"}


@dataclass(frozen=True)
class IndexOptions:
    """Chosen when an index is created and recorded in its build stamp; an index never mixes them.

    mode: "fast" (default) reranks the candidate stage's best pages with exact MaxSim; "exact"
    scores every page on every search (no candidate index).
    pool_factor: 1 keeps every vector; 2 or 3 merge similar vectors of a page (hierarchical token
    pooling) into about 1/factor as many, shrinking disk and search time.
    vector_type: how vectors are stored, "float16" (full precision) or "bfloat16" (8 significant
    bits, multiplied without conversion: the fast mode's rerank takes half the time); by default
    bfloat16 in the fast mode and float16 in the exact mode.
    """

    mode: str = "fast"
    pool_factor: int = 1
    vector_type: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"index mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.vector_type is None:
            object.__setattr__(self, "vector_type", DEFAULT_VECTOR_TYPE[self.mode])
        if self.vector_type not in VECTOR_TYPES:
            raise ValueError(f"vector type must be one of {', '.join(VECTOR_TYPES)}, got {self.vector_type!r}")
        if not isinstance(self.pool_factor, int) or not 1 <= self.pool_factor <= 8:
            raise ValueError(f"pool factor must be a whole number from 1 to 8, got {self.pool_factor!r}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_build(cls, build: dict | None) -> IndexOptions:
        """The options an index was built with (indexes from before options existed: the defaults;
        from before vector types: float16, all they stored)."""
        return cls(**{"vector_type": "float16", **(build or {}).get("options", {})})

    def check_same(self, built: IndexOptions, where: Path) -> None:
        if self != built:
            raise IndexMismatchError(
                f"{where} was created with index options {built.to_json()}; it cannot take {self.to_json()}"
                " (use another --index for other options)"
            )


class IndexStorage:
    """Documents, pages and their vectors in one folder; see the module docstring for the contract."""

    def __init__(self, path: Path, store: Store, dim: int | None, options: IndexOptions) -> None:
        self.path = path
        self.store = store
        self.dim = dim
        self.options = options
        if options.vector_type is None:  # IndexOptions.__post_init__ always chooses one
            raise ValueError(f"index options without a vector type: {options}")
        self.vector_type: str = options.vector_type
        self._vectors: VectorFile | None = None
        self.candidate_stage = CandidateStage(path, store, fast=options.mode == "fast")
        self._pages = 0  # committed pages, as of this writer's last look
        self._depth = 0  # writing() is re-entrant: only the outermost call locks and recovers
        self._durable = True  # every commit survives power loss (see bulk())
        self._live_rows: int | None = None  # vector rows committed pages use, kept during a write session
        self._writing_file: str | None = None  # the vector file's name during a write session

    # --- vectors ----------------------------------------------------------------------------
    @property
    def vectors(self) -> VectorFile:
        """The vector file the latest commit refers to (compaction replaces it by a new one; inside a
        write session only this writer can, so the name is looked up once per session)."""
        if self._writing_file is None:
            return self._vector_file(self.store.vector_file())
        return self._vector_file(self._writing_file)

    def _vector_file(self, name: str) -> VectorFile:
        """The vector file called `name` ("": the index's first file), opened once."""
        if self.dim is None:
            raise IndexNotFoundError(f"{self.path} has no vectors yet: nothing was added to it")
        name = name or file_name(self.vector_type)
        if self._vectors is None or self._vectors.path.name != name:
            if self._vectors is not None:
                self._vectors.close()
            self._vectors = VectorFile(self.path, self.dim, name, self.vector_type)
        return self._vectors

    # --- writing ----------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the write lock; repair what a crashed writer left first. A full disk becomes a
        StorageFullError; everything committed stays intact."""
        if self._depth:
            yield
            return
        lock = WriteLock(self.path)
        self._depth += 1
        try:
            with one_thread():
                self._writing_file = self.store.vector_file()
                self._recover()
                yield
                if self.dim is not None:  # else nothing was committed: no cells to wait for
                    self.candidate_stage.finish_assigning(self.vectors)
        except (OSError, sqlite3.OperationalError) as error:
            if not _is_storage_full(error):
                raise
            raise StorageFullError(
                f"{self.path}: out of disk space, or a write failed ({error}); everything committed"
                " before this point is intact; free some space and run the command again"
            ) from error
        finally:
            self._depth -= 1
            self._live_rows = None
            self._writing_file = None
            self.candidate_stage.drop_unassigned()  # after a failure: recomputed from the vector file when next needed
            if self._vectors is not None:
                self._vectors.close()
            lock.close()

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """A write session for many small documents: the lock is held throughout, and commits are
        group-synced to disk at the end instead of one by one. Each document still commits
        atomically, and a killed process loses nothing committed; a power loss may lose the last
        commits of the session (never the index: recovery drops commits whose vectors did not reach
        the disk)."""
        with self.writing():
            self._durable = False
            self.store.set_synchronous(durable=False)
            try:
                yield
            finally:
                self._durable = True
                if self.dim is not None:
                    self.vectors.sync()
                self.store.set_synchronous(durable=True)

    def recover_if_idle(self) -> None:
        """On open: repair what a crashed writer left, unless a writer is running right now."""
        try:
            with self.writing():
                pass
        except (IndexLockedError, StorageFullError, OSError):
            pass  # a live writer, a read-only folder or a full disk: readers see committed pages anyway

    def _recover(self) -> None:
        """Drop vector rows past the last commit and files no commit names, then bring the
        candidate index up to the committed pages (and compact if garbage has piled up)."""
        if self.dim is None:  # nothing was ever added
            self._live_rows = 0
            return
        current = self.vectors
        for stale in [
            *self.path.glob(".candidates*.tmp"),  # atomic_file's ".candidates.npz.*.tmp" (and older "-*.tmp")
            *self.path.glob("vectors*f16"),
            *self.path.glob(".tokens-*.tmp"),
            self.path / "tokens.faiss",
        ]:
            if stale != current.path:
                stale.unlink(missing_ok=True)
        end = max(self.store.vector_end(), self.store.checkpoint_end())  # checkpointed rows are kept
        if current.rows > end:
            current.truncate(end)
        elif current.rows < end:  # a power loss kept commits of a bulk session but not all their vectors
            with self.store.transaction():
                self.store.delete_documents(self.store.documents_past_row(current.rows))
                self.store.delete_checkpoints_past_row(current.rows)
        table = self.store.page_table()
        self._pages = len(table)
        self._live_rows = int(table.counts.sum())
        self.candidate_stage.recover(table, current)
        self.compact_if_wasteful()  # a writer killed between an update and its compaction

    def append_page(
        self, number: int, width: int, height: int, vectors: np.ndarray, fingerprint: hashlib._Hash | None = None
    ) -> NewPage:
        """Append one page's vectors (not yet visible: commit_document does that); returns the page
        to commit. With a pool factor, similar vectors are merged first (so fewer are stored).
        `fingerprint`, a hash, is updated with the rows as stored."""
        if self.options.pool_factor > 1:
            vectors = pool_tokens(vectors, self.options.pool_factor)
        stored = self.vectors.encode(vectors)
        if fingerprint is not None:
            fingerprint.update(stored.data)
        offset = self.vectors.append(stored)
        return NewPage(number, width, height, offset, len(vectors))

    def commit_document(
        self,
        path: Path,
        *,
        sha256: str,
        size: int,
        mtime: float,
        kind: str,
        pages: list[NewPage],
        metadata: dict | None = None,
        aliases: Iterable[NewAlias] = (),
    ) -> int:
        """Make a document, its pages and its `aliases` (other files with its content) visible
        atomically (their vectors are already appended). A document already at `path` or at an
        alias's path moves to one of its own aliases that still holds its content, or is deleted,
        in the same transaction."""
        aliases = list(aliases)
        keys = [path_key(path), *(path_key(alias.path) for alias in aliases)]
        handover = self._successors(self._documents_at(keys), set(keys), fallback=False)
        self.vectors.sync(durable=self._durable)
        with self.store.transaction():
            replaced = self._hand_over(handover)
            document_id, _ = self.store.put_document(
                path, sha256=sha256, size=size, mtime=mtime, kind=kind, pages=pages, metadata=metadata
            )
            for alias in aliases:
                self.store.put_alias(alias.path, document_id, size=alias.size, mtime=alias.mtime)
            self.store.delete_checkpoints(keys)  # its pages are committed now; its aliases need none
            added = self.store.pages_of(document_id)
        self._pages += len(added)
        if self._live_rows is not None:
            self._live_rows += sum(count for _, _, count in added)
        self._dropped(replaced)
        self.candidate_stage.add_committed(added, self._pages, self.vectors)
        return document_id

    def delete(self, document_ids: list[int]) -> int:
        """Delete documents with their pages and aliases in one transaction (their vector rows become
        garbage, reclaimed by compaction; the candidate index masks them until its next rebuild)."""
        with self.store.transaction():
            self.store.delete_checkpoints(self.store.path_keys_of(document_ids))
            ranges = self.store.delete_documents(document_ids)
        self._dropped(ranges)
        return len(document_ids)

    def _dropped(self, ranges: list[tuple[int, int]]) -> None:
        """Count out the committed pages (their vector ranges) a transaction deleted."""
        self._pages -= len(ranges)
        if self._live_rows is not None:
            self._live_rows -= sum(count for _, count in ranges)

    # --- aliases: other paths of a document ---------------------------------------------------
    def alias(self, path: Path) -> AliasRecord | None:
        """The alias at exactly `path`, or None."""
        return self.store.alias(path)

    def document_with_content(self, sha256: str) -> DocumentRecord | None:
        """A committed document whose content is `sha256`, or None."""
        return self.store.document_with_content(sha256)

    def add_alias(self, path: Path, document_id: int, *, size: int, mtime: float) -> None:
        """Record the file at `path` (of `size` and `mtime`) as another path of document
        `document_id`, in one transaction. A document that was at `path` (other content) moves to one
        of its aliases that still holds that content, or is deleted; the path's checkpoint goes."""
        key = path_key(path)
        handover = self._successors(
            [d for d in self._documents_at([key]) if d.id != document_id], {key}, fallback=False
        )
        with self.store.transaction():
            replaced = self._hand_over(handover)
            self.store.put_alias(path, document_id, size=size, mtime=mtime)
            self.store.delete_checkpoints([key])
        self._dropped(replaced)

    def remove_paths(
        self, documents: list[DocumentRecord], aliases: list[AliasRecord], *, fallback: bool
    ) -> list[tuple[DocumentRecord, AliasRecord]]:
        """Take these documents' own paths and these aliases out of the index, in one transaction. A
        document keeps its pages when one of its other aliases still holds its content (the file has
        the size and mtime it had when found, or hashes to the content): it moves there; with
        `fallback`, to its first other alias even when none can be checked. The others are deleted,
        with their checkpoints. Returns (document, the alias it moved to) for those that moved."""
        leaving = {document.key for document in documents} | {alias.key for alias in aliases}
        handover = self._successors(documents, leaving, fallback=fallback)
        with self.store.transaction():
            self.store.delete_aliases(alias.key for alias in aliases)
            self.store.delete_checkpoints(document.key for document, successor in handover if successor is None)
            replaced = self._hand_over(handover)
        self._dropped(replaced)
        return [(document, successor) for document, successor in handover if successor is not None]

    def _documents_at(self, keys: Iterable[bytes]) -> list[DocumentRecord]:
        return [record for key in keys if (record := self.store.document(Path(os.fsdecode(key)))) is not None]

    def _successors(
        self, documents: list[DocumentRecord], leaving: set[bytes], *, fallback: bool
    ) -> list[tuple[DocumentRecord, AliasRecord | None]]:
        """For documents whose own path goes: the alias (not one of `leaving`) each moves to, the first
        whose file still holds its content, or (with `fallback`) the first; None: it is deleted.
        Checked before the transaction that applies it (a hash may be read)."""
        aliases = self.store.aliases_of(document.id for document in documents)
        plan: list[tuple[DocumentRecord, AliasRecord | None]] = []
        for document in documents:
            staying = [alias for alias in aliases.get(document.id, []) if alias.key not in leaving]
            holding = next((found for alias in staying if (found := _still_holding(alias)) is not None), None)
            plan.append((document, holding or (staying[0] if fallback and staying else None)))
        return plan

    def _hand_over(self, plan: list[tuple[DocumentRecord, AliasRecord | None]]) -> list[tuple[int, int]]:
        """Apply a `_successors` plan (inside a transaction); returns the vector ranges deleted."""
        for _, successor in plan:
            if successor is not None:
                self.store.promote(successor)
        return self.store.delete_documents([document.id for document, successor in plan if successor is None])

    # --- the catalogue: what ingest plans from ------------------------------------------------
    def document(self, path: Path) -> DocumentRecord | None:
        """The document indexed at exactly `path`, or None."""
        return self.store.document(path)

    # --- checkpoints: encoded pages of a document not yet committed ---------------------------
    def checkpoint(self, path: Path, sha256: str, pages: list[NewPage]) -> None:
        """Keep encoded pages (already appended) of the unfinished document at `path` whose content
        is `sha256`: their vectors are synced first, then recorded in one transaction. They stay
        invisible to search and page counts until commit_document takes them with the rest."""
        if not pages:
            return
        self.vectors.sync(durable=self._durable)
        with self.store.transaction():
            self.store.put_checkpoint(path, sha256, pages)

    def checkpointed(self, path: Path, sha256: str) -> list[NewPage]:
        """The pages 1..k of `path` checkpointed for content `sha256`, to resume from. The checkpoint
        of other content (the file changed), and pages past a gap or outside the vector file, are
        dropped: their rows become garbage for compaction."""
        saved = self.store.checkpoint_of(path)
        if not saved:
            return []
        rows = self.vectors.rows if self.dim is not None else 0
        prefix: list[NewPage] = []
        for sha, page in saved:
            if sha != sha256 or page.number != len(prefix) + 1 or page.vec_count < 1:
                break
            if page.vec_offset < 0 or page.vec_offset + page.vec_count > rows:
                break
            prefix.append(page)
        if len(prefix) < len(saved):
            with self.store.transaction():
                self.store.delete_checkpoints([path_key(path)], numbers_over=len(prefix))
        return prefix

    def forget_checkpoints(self, paths: Iterable[Path], *, under: bool = False) -> int:
        """Drop the checkpoints of `paths` (with `under`, also of files below them); returns the pages
        dropped (their rows become garbage for compaction)."""
        keys = [path_key(path) for path in paths]
        if under:
            prefixes = tuple(key.rstrip(b"/") + b"/" for key in keys)
            keys += [key for key, _ in self.store.checkpoint_files() if key.startswith(prefixes)]
        with self.store.transaction():
            return self.store.delete_checkpoints(dict.fromkeys(keys))

    def sweep_checkpoints(self) -> int:
        """Drop checkpoints whose file is gone or whose content is committed already (a writer stopped
        between the two); returns the pages dropped."""
        stale = []
        for key, sha256 in self.store.checkpoint_files():
            path = Path(os.fsdecode(key))
            committed = self.store.document(path) or self.store.alias(path)
            if not path.exists() or (committed is not None and committed.sha256 == sha256):
                stale.append(key)
        if not stale:
            return 0
        with self.store.transaction():
            return self.store.delete_checkpoints(stale)

    def documents_under(self, paths: Iterable[Path]) -> list[DocumentRecord]:
        """Documents whose file is one of `paths` or lies below one of them, in path order."""
        return self.store.documents_under(paths)

    def aliases_under(self, paths: Iterable[Path]) -> list[AliasRecord]:
        """Aliases whose file is one of `paths` or lies below one of them, in path order."""
        return self.store.aliases_under(paths)

    def metadata(self, document_id: int) -> dict:
        """A document's tags ({} for a document that is not there)."""
        return self.store.metadata(document_id)

    def add_tags(self, document_id: int, tags: dict[str, object]) -> bool:
        """Add `tags` to a document's metadata in one transaction; False when nothing changed."""
        with self.store.transaction():
            return self.store.merge_metadata(document_id, tags)

    # --- compaction -------------------------------------------------------------------------
    def compact(self) -> int:
        """Copy every committed page's rows, in order, then every checkpointed page's (`checkpoint`),
        into a new vector file; then switch to it in one commit; returns the rows freed. A crash
        before the commit leaves the old file in charge (the new one is deleted on recovery); after
        it, the old file is the leftover."""
        # pages waiting for cells are named by offsets in the old file
        self.candidate_stage.finish_assigning(self.vectors)
        old = self.vectors
        table = self.store.page_table()
        saved = self.store.checkpoint_table()  # checkpointed pages move along, after the committed ones
        freed = old.rows - int(table.counts.sum()) - int(saved.counts.sum())
        if freed <= 0:
            return 0
        epoch = self.store.vector_epoch() + 1
        new = VectorFile(self.path, old.dim, file_name(self.vector_type, epoch), self.vector_type)
        new.path.unlink(missing_ok=True)
        stored = old.stored_rows(table.offsets, table.counts)
        moves = [(page_id, new.append(rows)) for page_id, rows in zip(table.page_ids.tolist(), stored)]
        kept = old.stored_rows(saved.offsets, saved.counts)
        saved_moves = [(row_id, new.append(rows)) for row_id, rows in zip(saved.page_ids.tolist(), kept)]
        new.sync()
        new.close()
        with self.store.transaction():
            self.store.set_offsets(moves)
            self.store.set_checkpoint_offsets(saved_moves)
            self.store.set_meta("vector_epoch", str(epoch))
            self.store.set_meta("vector_file", new.path.name)
        self._writing_file = new.path.name
        old.close()
        old.path.unlink(missing_ok=True)
        if self.candidate_stage.in_memory is not None:  # drop removed pages from the postings meanwhile
            self.candidate_stage.save(self.vectors)
        return freed

    def compact_if_wasteful(self, ratio: float = 0.25) -> int:
        """Compact (inside a write) when more than `ratio` of the vector rows are garbage."""
        rows = self.vectors.rows
        live = self.store.vector_rows() if self._live_rows is None else self._live_rows  # a SUM over every page
        live += self.store.checkpoint_rows()  # kept for a resume: not garbage
        return self.compact() if rows and (rows - live) > ratio * rows else 0

    # --- reading ----------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        exact: bool = False,
        rerank: int | None = None,
        page_filter: PageFilter | None = None,
    ) -> list[ScoredPage]:
        """The k best pages for a (n_tokens, dim) query: exact MaxSim over every page (`exact`, exact
        mode, small or selectively filtered sets), else over the candidate stage's best pages."""
        with one_thread(with_torch=True):
            return self._search(query, k, exact, rerank, page_filter)

    def search_stats(self) -> dict:
        """What the candidate stage knows of itself: its own recall estimate (self_check.py) and the
        rerank depth it chose from it; empty in exact mode or before the index has a candidate stage."""
        if self.options.mode != "fast" or self.dim is None:
            return {}
        table, _, name, _ = self.store.snapshot()
        candidates = self.candidate_stage.caught_up(table, self._vector_file(name))
        if candidates is None:
            return {"candidate_stage": False}
        estimate = candidates.recall_estimate
        stats: dict[str, object] = {"candidate_stage": True, "rerank": scoring.RERANK_PAGES}
        if estimate is not None:
            stats.update(
                rerank=estimate.rerank,
                recall_estimate=estimate.recall_at_10,
                top1_estimate=estimate.top1,
                estimate_queries=estimate.queries,
                estimated_at_pages=estimate.pages,
                estimate_sample_pages=estimate.sample_pages,
            )
        return stats

    def _search(
        self, query: np.ndarray, k: int, exact: bool, rerank: int | None, page_filter: PageFilter | None
    ) -> list[ScoredPage]:
        for attempt in range(3):
            table, _, name, allowed = self.store.snapshot(page_filter)
            vectors = self._vector_file(name)
            try:
                candidates = None if exact else self.candidate_stage.caught_up(table, vectors)
                if allowed is not None:
                    table = table.subset(np.isin(table.page_ids, allowed))
                if rerank is None:  # the depth the index chose from its own recall estimate
                    estimate = candidates.recall_estimate if candidates is not None else None
                    rerank = estimate.rerank if estimate is not None else scoring.RERANK_PAGES
                if candidates is None or len(table) <= max(rerank, 4 * k):
                    return brute_force_top_k(query, k, table, vectors)
                return scoring.two_stage_top_k(query, k, table, candidates, vectors, rerank)
            except FileNotFoundError:  # compacted into a new file since the snapshot: take a new one
                if attempt == 2:
                    raise
        return []

    def close(self) -> None:
        if self._vectors is not None:
            self._vectors.close()


def _still_holding(alias: AliasRecord) -> AliasRecord | None:
    """The alias with its file's size and mtime now, when the file still has its document's content
    (same size, and the same mtime or the same sha256); else None."""
    try:
        now = alias.file.stat()
        if now.st_size != alias.size:
            return None
        if now.st_mtime != alias.mtime and sha256_of(alias.file) != alias.sha256:
            return None
    except OSError:
        return None
    return replace(alias, size=now.st_size, mtime=now.st_mtime)


def _is_storage_full(error: OSError | sqlite3.OperationalError) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        return "full" in str(error) or "disk I/O error" in str(error)
    return error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
