"""The candidate index over an index folder's lifetime, for its writer and its readers.

A reader loads the saved candidate index once and catches it up with pages committed since its
save (or rebuilds it from the vector file when it is lost). A writer hands committed pages to it
(their vectors coded beside the writer, assigning.py, and logged), trains it once the index is big
enough and retrains it when the index has grown many times since, folds its tail and saves it, and
has its recall measured (self_check.py). The candidate index itself (candidates.py) is derived
data: nothing here is a commit point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import candidates as stage
from . import self_check
from .assigning import Assigned, BackgroundAssigner
from .candidates import CandidateIndex
from .store import PageTable, Store
from .vectors import VectorFile

ASSIGN_BATCH_PAGES = 64  # committed pages handed to the coding thread at once


class CandidateStage:
    """The candidate index of one index folder (none in the exact mode): see the module docstring."""

    def __init__(self, path: Path, store: Store, fast: bool) -> None:
        self.path = path
        self.store = store
        self.fast = fast
        self._index: CandidateIndex | None = None
        self._unsaved = False  # the candidate index in memory holds more than the one on disk
        self._assigner = BackgroundAssigner()  # codes of committed pages, computed beside the writer
        self._unassigned: list[tuple[int, int, int]] = []  # committed (page id, offset, count) not yet handed over

    @property
    def in_memory(self) -> CandidateIndex | None:
        """The candidate index as this process holds it now (None before it is loaded or trained)."""
        return self._index

    def _existing(self) -> CandidateIndex:
        """The candidate index, for the steps that only run once there is one (pages are handed to
        the assigning thread, and saved, only after it is trained or loaded)."""
        if self._index is None:
            raise RuntimeError(f"{self.path}: the candidate stage was asked to assign or save before it had an index")
        return self._index

    def _searches_candidates(self, vectors: VectorFile) -> bool:
        """Whether this index has a candidate stage: fast mode, and vectors that split into the
        codebook's two halves (an odd dimension is searched exactly)."""
        return self.fast and vectors.dim % 2 == 0

    def recover(self, table: PageTable, vectors: VectorFile) -> None:
        """A writer's recovery: catch up with every page of `table` and save, when that changed
        what is on disk (pages a dead writer did not log, or a lost candidate index rebuilt)."""
        self.caught_up(table, vectors)
        if self._unsaved:
            self.save(vectors)

    def add_committed(self, added: list[tuple[int, int, int]], pages: int, vectors: VectorFile) -> None:
        """Give the candidate index the pages just committed (page id, offset, count), `pages` being
        how many the index holds now: their codes are computed on the coding thread a batch at a
        time and logged in the index's tail when they come back; the index is trained once big
        enough and retrained when it has grown many times since."""
        if not self._searches_candidates(vectors):
            return
        candidates = self._index
        if candidates is None or pages >= stage.RETRAIN_GROWTH * candidates.trained_pages:
            if pages >= stage.TRAIN_MIN_PAGES:
                self.drop_unassigned()  # the new codebook assigns every page anew
                self._index = self._train_and_assign(self.store.page_table(), vectors)
                self.save(vectors)
            return
        self._unassigned += added
        if len(self._unassigned) >= ASSIGN_BATCH_PAGES:
            self._add_assigned(self._submit_unassigned(vectors), vectors)

    def _submit_unassigned(self, vectors: VectorFile) -> list[Assigned]:
        """Hand the buffered committed pages to the assigning thread (their codes come from the
        stored values, what search sees); returns the batches ready to add."""
        page_ids, offsets, counts = zip(*self._unassigned)
        self._unassigned = []
        stored = vectors.stored_rows(offsets, counts)
        return self._assigner.submit(self._existing(), list(page_ids), stored, vectors.decode_into)

    def _add_assigned(self, batches: list[Assigned], vectors: VectorFile) -> None:
        """Put assigned pages into the candidate index's tail and log them (or fold and save)."""
        for page_ids, codes in batches:
            candidates = self._existing()
            candidates.put(page_ids, codes)
            if candidates.needs_rebuild():
                self.save(vectors)
            else:
                candidates.log(self.path, page_ids, codes)

    def finish_assigning(self, vectors: VectorFile) -> None:
        """Wait for every committed page's codes and add them (the end of a write session)."""
        if self._unassigned:
            self._add_assigned(self._submit_unassigned(vectors), vectors)
        self._add_assigned(self._assigner.finish(), vectors)

    def drop_unassigned(self) -> None:
        """Forget pages waiting for their codes (after a failure, or before retraining): whoever
        needs them next recomputes them from the vector file."""
        self._unassigned = []
        self._assigner.close()

    def caught_up(self, table: PageTable, vectors: VectorFile) -> CandidateIndex | None:
        """The candidate index holding every page of `table` (None in exact mode or while the index
        is too small to need one): loaded once, then caught up with pages committed since."""
        if not self._searches_candidates(vectors):
            return None
        if self._index is None:
            self._index = CandidateIndex.load(self.path, vectors.dim)
        if self._index is None:
            if len(table) < stage.TRAIN_MIN_PAGES:
                return None
            self._index = self._train_and_assign(table, vectors)  # lost or never saved: rebuild from vectors
            self._unsaved = True  # a writer saves it on its next recovery
            return self._index
        newer = table.page_ids > self._index.high_water
        if newer.any():  # committed by a writer that died before logging them, or by one still running
            self._index.add(table.page_ids[newer].tolist(), vectors.read(table.offsets[newer], table.counts[newer]))
            self._unsaved = True
        return self._index

    def _train_and_assign(self, table: PageTable, vectors: VectorFile, chunk_pages: int = 512) -> CandidateIndex:
        """A candidate index trained on a sample of `table`'s pages, holding all of them (their codes
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
                    candidates.put_assigned(helper.submit(candidates, page_ids, stored, vectors.decode_into))
                else:
                    candidates.put(page_ids, candidates.encode(stored, vectors.decode_into))
            candidates.put_assigned(helper.finish())
        finally:
            helper.close()
        candidates.rebuild(table.page_ids)  # the estimate searches postings, not a tail
        candidates.recall_estimate = self_check.estimate(table, candidates, vectors, seed=len(table))
        return candidates

    def save(self, vectors: VectorFile) -> None:
        """Fold the tail into the postings and save them (inside a write); pages still being
        assigned are logged after the save."""
        candidates = self._existing()
        table = self.store.page_table()
        candidates.rebuild(table.page_ids)
        estimate = candidates.recall_estimate
        if estimate is None or len(table) >= self_check.REESTIMATE_GROWTH * estimate.pages:
            # measured on a smaller index: its depth may no longer reach the target; measure again
            candidates.recall_estimate = self_check.estimate(table, candidates, vectors, seed=len(table))
        candidates.save(self.path)
        self._unsaved = False
