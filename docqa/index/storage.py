"""The storage engine of one index folder, behind one small contract:

- writing (inside `writing()`, which holds the write lock and first repairs what a crashed writer
  left): `append_page` then `commit_document` (one SQLite transaction per document), `delete`,
  `compact`;
- reading (any process, any time, also during a write): `search`.

The SQLite transaction is the one commit point. Vectors are appended to the vector file and fsynced
before the commit that points at them; rows past the last commit are dropped on recovery. The
candidate index (candidates.py) is derived data: saved now and then, caught up from the vector file
for pages committed after its save, rebuilt from the vector file if it is lost.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexLockedError, IndexMismatchError, StorageFullError
from . import candidates as stage
from . import search as scoring
from . import self_check
from .assigning import Assigned, BackgroundAssigner
from .candidates import CandidateIndex
from .locking import WriteLock
from .pooling import pool_tokens
from .search import ScoredPage, brute_force_top_k
from .store import NewPage, PageFilter, PageTable, Store, path_key
from .threads import one_thread
from .vectors import VECTOR_TYPES, VectorFile, file_name

MODES = ("fast", "exact")
_ASSIGN_PAGES = 64  # committed pages handed to the cell-assigning thread at once
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
        self._vectors: VectorFile | None = None
        self._candidates: CandidateIndex | None = None
        self._pages = 0  # committed pages, as of this writer's last look
        self._unsaved = False  # the candidate index in memory holds more than the one on disk
        self._depth = 0  # writing() is re-entrant: only the outermost call locks and recovers
        self._durable = True  # every commit survives power loss (see bulk())
        self._live_rows: int | None = None  # vector rows committed pages use, kept during a write session
        self._writing_file: str | None = None  # the vector file's name during a write session
        self._assigner = BackgroundAssigner()  # cells of committed pages, computed beside the writer
        self._unassigned: list[tuple[int, int, int]] = []  # committed (page id, offset, count) not yet handed over

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
        name = name or file_name(self.options.vector_type)
        if self._vectors is None or self._vectors.path.name != name:
            if self._vectors is not None:
                self._vectors.close()
            self._vectors = VectorFile(self.path, self.dim, name, self.options.vector_type)
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
                self._settle_assignments()
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
            self._drop_assignments()  # after a failure: recomputed from the vector file when next needed
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
            *self.path.glob(".candidates-*.tmp"),
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
        self._current_candidates(table, current)
        if self._unsaved:
            self._save_candidates()
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
            fingerprint.update(stored)
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
    ) -> int:
        """Make a document and its pages visible atomically (their vectors are already appended);
        a document already at `path` is replaced in the same transaction."""
        self.vectors.sync(durable=self._durable)
        with self.store.transaction():
            document_id, replaced = self.store.put_document(
                path, sha256=sha256, size=size, mtime=mtime, kind=kind, pages=pages, metadata=metadata
            )
            self.store.delete_checkpoints([path_key(path)])  # its pages are committed now
            added = self.store.pages_of(document_id)
        self._pages += len(added) - len(replaced)
        if self._live_rows is not None:
            self._live_rows += sum(count for _, _, count in added) - sum(count for _, count in replaced)
        self._index_committed(added)
        return document_id

    def delete(self, document_ids: list[int]) -> int:
        """Delete documents and their pages in one transaction (their vector rows become garbage,
        reclaimed by compaction; the candidate index masks them until its next rebuild)."""
        with self.store.transaction():
            self.store.delete_checkpoints(self.store.path_keys_of(document_ids))
            ranges = self.store.delete_documents(document_ids)
        self._pages -= len(ranges)
        if self._live_rows is not None:
            self._live_rows -= sum(count for _, count in ranges)
        return len(document_ids)

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
            committed = self.store.document(path)
            if not path.exists() or (committed is not None and committed.sha256 == sha256):
                stale.append(key)
        if not stale:
            return 0
        with self.store.transaction():
            return self.store.delete_checkpoints(stale)

    def _index_committed(self, added: list[tuple[int, int, int]]) -> None:
        """Give the candidate index the committed pages (page id, offset, count): their cells are
        computed on the assigning thread a batch at a time and logged in the index's tail when they
        come back; the index is trained once big enough and retrained when it has grown many times
        since."""
        if self.options.mode != "fast":
            return
        candidates = self._candidates
        if candidates is None or self._pages >= stage.RETRAIN_GROWTH * candidates.trained_pages:
            if self._pages >= stage.TRAIN_MIN_PAGES:
                self._drop_assignments()  # the new codebook assigns every page anew
                self._candidates = self._trained(self.store.page_table(), self.vectors)
                self._save_candidates()
            return
        self._unassigned += added
        if len(self._unassigned) >= _ASSIGN_PAGES:
            self._apply(self._submit_unassigned())

    def _submit_unassigned(self) -> list[Assigned]:
        """Hand the buffered committed pages to the assigning thread (their cells come from the
        stored values, what search sees); returns the batches ready to apply."""
        page_ids, offsets, counts = zip(*self._unassigned)
        self._unassigned = []
        stored = self.vectors.stored_rows(offsets, counts)
        return self._assigner.submit(self._candidates.codebook, list(page_ids), stored, self.vectors.decode_into)

    def _apply(self, batches: list[Assigned]) -> None:
        """Put assigned pages into the candidate index's tail and log them (or fold and save)."""
        for page_ids, cells in batches:
            self._candidates.put_assigned([(page_ids, cells)])
            if self._candidates.needs_rebuild():
                self._save_candidates()
            else:
                self._candidates.log(self.path, page_ids, cells)

    def _settle_assignments(self) -> None:
        """Wait for every committed page's cells and apply them."""
        if self._unassigned:
            self._apply(self._submit_unassigned())
        self._apply(self._assigner.finish())

    def _drop_assignments(self) -> None:
        self._unassigned = []
        self._assigner.close()

    def _current_candidates(self, table: PageTable, vectors: VectorFile) -> CandidateIndex | None:
        """The candidate index holding every page of `table` (None in exact mode or while the index
        is too small to need one): loaded once, then caught up with pages committed since."""
        if self.options.mode != "fast":
            return None
        if self._candidates is None:
            self._candidates = CandidateIndex.load(self.path, self.dim)
        if self._candidates is None:
            if len(table) < stage.TRAIN_MIN_PAGES:
                return None
            self._candidates = self._trained(table, vectors)  # lost or never saved: rebuild from vectors
            self._unsaved = True  # a writer saves it on its next recovery
            return self._candidates
        newer = table.page_ids > self._candidates.high_water
        if newer.any():  # committed by a writer that died before logging them, or by one still running
            self._candidates.add(
                table.page_ids[newer].tolist(), vectors.read(table.offsets[newer], table.counts[newer])
            )
            self._unsaved = True
        return self._candidates

    def _trained(self, table: PageTable, vectors: VectorFile, chunk_pages: int = 512) -> CandidateIndex:
        """A candidate index trained on a sample of `table`'s pages, holding all of them (their cells
        assigned a chunk at a time, every other chunk on a helper thread)."""
        rng = np.random.default_rng(len(table))
        share = min(1.0, 4 * stage.TRAIN_SAMPLE_VECTORS / max(int(table.counts.sum()), 1))
        sample = table.subset(rng.random(len(table)) < share) if share < 1 else table
        candidates = CandidateIndex.train(vectors.read(sample.offsets, sample.counts))
        candidates.trained_pages = len(table)
        helper = BackgroundAssigner()
        try:
            for start in range(0, len(table), chunk_pages):
                part = slice(start, start + chunk_pages)
                page_ids = table.page_ids[part].tolist()
                stored = vectors.stored_rows(table.offsets[part], table.counts[part])
                if start // chunk_pages % 2:
                    candidates.put_assigned(helper.submit(candidates.codebook, page_ids, stored, vectors.decode_into))
                else:
                    candidates.put_assigned([(page_ids, candidates.codebook.page_cells(stored, vectors.decode_into))])
            candidates.put_assigned(helper.finish())
        finally:
            helper.close()
        candidates.rebuild(table.page_ids)  # the estimate searches postings, not a tail
        candidates.recall_estimate = self_check.estimate(table, candidates, vectors, seed=len(table))
        return candidates

    def _save_candidates(self) -> None:
        """Fold the tail into the postings and save them (inside a write); pages still being
        assigned are logged after the save."""
        table = self.store.page_table()
        self._candidates.rebuild(table.page_ids)
        estimate = self._candidates.recall_estimate
        if estimate is None or len(table) >= self_check.REESTIMATE_GROWTH * estimate.pages:
            # measured on a smaller index: its depth may no longer reach the target; measure again
            self._candidates.recall_estimate = self_check.estimate(
                table, self._candidates, self.vectors, seed=len(table)
            )
        self._candidates.save(self.path)
        self._unsaved = False

    # --- compaction -------------------------------------------------------------------------
    def compact(self) -> int:
        """Copy every committed page's rows, in order, then every checkpointed page's (`checkpoint`),
        into a new vector file; then switch to it in one commit; returns the rows freed. A crash
        before the commit leaves the old file in charge (the new one is deleted on recovery); after
        it, the old file is the leftover."""
        self._settle_assignments()  # pages waiting for cells are named by offsets in the old file
        old = self.vectors
        table = self.store.page_table()
        saved = self.store.checkpoint_table()  # checkpointed pages move along, after the committed ones
        freed = old.rows - int(table.counts.sum()) - int(saved.counts.sum())
        if freed <= 0:
            return 0
        epoch = self.store.vector_epoch() + 1
        new = VectorFile(self.path, old.dim, file_name(self.options.vector_type, epoch), self.options.vector_type)
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
        if self._candidates is not None:  # drop removed pages from the postings while we are at it
            self._save_candidates()
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
        candidates = self._current_candidates(table, self._vector_file(name))
        if candidates is None:
            return {"candidate_stage": False}
        estimate = candidates.recall_estimate
        stats = {"candidate_stage": True, "rerank": scoring.RERANK_PAGES}
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
                candidates = None if exact else self._current_candidates(table, vectors)
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


def _is_storage_full(error: OSError | sqlite3.OperationalError) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        return "full" in str(error) or "disk I/O error" in str(error)
    return error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
