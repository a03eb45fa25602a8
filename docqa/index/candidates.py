"""The first stage of search: which pages are worth scoring exactly.

Every page vector is quantised to one cell of an inverted multi-index (Babenko & Lempitsky): its
first and second halves each go to the nearest of 256 k-means centroids (FAISS k-means, trained on a
sample of the index's own vectors), giving 65,536 cells assigned with two small matrix products
(fine cells find more of the exact top 10: benchmarks/RESULTS.md, "Cell count"). A page is
represented by the set of cells its vectors fall in; a cell's postings list the pages that
have it.

A query token's score for a cell is its dot product with the cell's centroid (the sum of the two
half scores). Per query token, cells are walked best first through their postings until the pages
seen pass a budget (WALK_BUDGET postings entries, at most MAX_WALKED_CELLS cells); a page's score
for the token is the best walked cell it has, or, when it has none, the score of the best cell not
walked (its best cell can be no better). A page's approximate score is that summed over the query
tokens: PLAID's centroid interaction, computed by walking postings. The budget keeps generic query
tokens cheap: their best cells are the background that most pages share, so the budget is spent
after a few cells and the rest of the pages get a floor as high as the cells left; content tokens
have rare cells and walk many. The pages with the best approximate scores are then reranked with
exact MaxSim by the caller.

Pages are keyed by their page id (stable across compaction, never reused). Pages added since the
postings were last rebuilt sit in a tail (walked through postings of its own, built when a search
first needs them) and are appended to a log file, so a commit writes a few hundred bytes, not the
postings; the postings are rebuilt and saved when the tail passes a tenth of the pages. Deleted pages stay in the postings until then and are masked out by the
caller's list of live pages.
"""

from __future__ import annotations

import secrets
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..files import atomic_file, atomic_write

FILE_NAME = "candidates.npz"
LOG_NAME = "candidates.log"
HALF_CENTROIDS = 256  # per half: 256 x 256 = 65,536 cells (page cells are stored as uint16)
CELLS = HALF_CENTROIDS * HALF_CENTROIDS
TRAIN_MIN_PAGES = 1024  # below this, search scores every page (fast enough, and exact)
TRAIN_SAMPLE_VECTORS = 200_000
RETRAIN_GROWTH = 16  # retrain the centroids when the index has grown this many times since training
WALK_BUDGET = 30_000  # postings entries walked per query token (bounds search time at any index size)
MAX_WALKED_CELLS = 2048  # cells walked per query token at most
TAIL_MERGE_PAGES = 2048  # rebuild the postings when the tail grows past this (or a tenth of the pages)


@dataclass(frozen=True)
class RecallEstimate:
    """The recall a candidate index measured of its own settings when trained (self_check.py)."""

    rerank: int  # the rerank depth chosen (pages at full index size)
    recall_at_10: float  # estimated recall@10 against exact MaxSim at that depth
    top1: float  # share of pseudo-queries whose exact top page came first
    queries: int
    pages: int  # pages in the index when estimated
    sample_pages: int

    def to_json(self) -> dict:
        return asdict(self)


class Codebook:
    """Two half-space k-means codebooks: vector -> cell id in [0, CELLS)."""

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)  # (2, HALF_CENTROIDS, dim / 2)
        self._halves = []  # FAISS flat indexes of each half's centroids: assignment 3x faster than numpy
        for half in self.centroids:
            index = faiss.IndexFlatL2(half.shape[1])
            index.add(half)
            self._halves.append(index)

    @property
    def dim(self) -> int:
        return 2 * self.centroids.shape[2]

    @classmethod
    def train(cls, sample: np.ndarray, seed: int = 1234) -> Codebook:
        """k-means on each half of `sample` (n, dim); deterministic for a given sample and seed."""
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if len(sample) < HALF_CENTROIDS:  # k-means needs a point per centroid: repeat a tiny sample
            sample = np.resize(sample, (HALF_CENTROIDS, sample.shape[1]))
        half = sample.shape[1] // 2
        centroids = []
        for part in (sample[:, :half], sample[:, half:]):
            kmeans = faiss.Kmeans(half, HALF_CENTROIDS, niter=20, seed=seed, verbose=False)
            kmeans.train(np.ascontiguousarray(part))
            if kmeans.centroids is None:
                raise RuntimeError(f"FAISS k-means on a ({len(part)}, {half}) sample returned no centroids")
            centroids.append(kmeans.centroids)
        return cls(np.stack(centroids))

    def _assign_halves(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """The cell of each vector, given its two halves: nearest centroid per half (Euclidean)."""
        _, nearest_first = self._halves[0].search(first, 1)
        _, nearest_second = self._halves[1].search(second, 1)
        return (nearest_first[:, 0] * HALF_CENTROIDS + nearest_second[:, 0]).astype(np.int64)

    def page_cells(
        self, pages: list[np.ndarray], decode_into: Callable[[np.ndarray, np.ndarray], None] = np.copyto
    ) -> list[np.ndarray]:
        """The sorted distinct cells of each page, assigned in one pass over all their vectors.
        `decode_into(out, rows)` writes rows as float32 into `out` (for pages in the vector file's
        stored format, its `decode_into`; float arrays are copied)."""
        if not pages:
            return []
        counts = [len(page) for page in pages]
        half = self.centroids.shape[2]
        halves = np.empty((2, sum(counts), half), dtype=np.float32)  # each half contiguous, as FAISS wants
        row = 0
        for page, count in zip(pages, counts):
            decode_into(halves[0, row : row + count], page[:, :half])
            decode_into(halves[1, row : row + count], page[:, half:])
            row += count
        cells = self._assign_halves(halves[0], halves[1])
        bounds = np.cumsum([0, *counts])
        return [np.unique(cells[low:high]).astype(np.uint16) for low, high in zip(bounds[:-1], bounds[1:])]

    def scores(self, query: np.ndarray) -> np.ndarray:
        """(query tokens, CELLS): each token's dot product with each cell's centroid."""
        half = self.centroids.shape[2]
        first = query[:, :half] @ self.centroids[0].T
        second = query[:, half:] @ self.centroids[1].T
        return (first[:, :, None] + second[:, None, :]).reshape(len(query), CELLS)


class CandidateIndex:
    """Postings from cells to page ids, plus a tail of recently added pages."""

    def __init__(self, codebook: Codebook, trained_pages: int) -> None:
        self.codebook = codebook
        self.trained_pages = trained_pages  # pages in the index when the codebook was trained
        self.pointers = np.zeros(CELLS + 1, dtype=np.int64)  # postings of cell c: ids[pointers[c]:pointers[c+1]]
        self.ids = np.zeros(0, dtype=np.int32)
        self.base_pages = 0
        self.tail: dict[int, np.ndarray] = {}  # page id -> cells, for pages added since the last rebuild
        self.high_water = 0  # every committed page with an id <= this was added
        self.log_id = 0  # pairs the saved postings with the log of pages added after them
        self._tail_postings: tuple[np.ndarray, np.ndarray] | None = None  # the tail as postings, built on use
        self.recall_estimate: RecallEstimate | None = None  # its own recall, measured when trained (self_check.py)

    # --- building ---------------------------------------------------------------------------
    @classmethod
    def train(cls, pages: list[np.ndarray], seed: int = 1234) -> CandidateIndex:
        """An empty index whose codebook is trained on at most TRAIN_SAMPLE_VECTORS of `pages`' vectors."""
        rng = np.random.default_rng(seed)
        vectors = np.concatenate(pages)
        if len(vectors) > TRAIN_SAMPLE_VECTORS:
            vectors = vectors[rng.choice(len(vectors), TRAIN_SAMPLE_VECTORS, replace=False)]
        return cls(Codebook.train(vectors, seed), len(pages))

    def add(self, page_ids: list[int], pages: list[np.ndarray]) -> None:
        """Add committed pages with their vectors."""
        for page_id, cells in zip(page_ids, self.codebook.page_cells(pages)):
            self.put(page_id, cells)

    def put(self, page_id: int, cells: np.ndarray) -> None:
        """Add one committed page by its cells (`Codebook.page_cells`)."""
        self.tail[int(page_id)] = cells
        self.high_water = max(self.high_water, int(page_id))
        self._tail_postings = None

    def put_assigned(self, batches: list[tuple[list[int], list[np.ndarray]]]) -> None:
        """Add batches of committed pages by their cells: (page ids, each page's cells)."""
        for page_ids, cells in batches:
            for page_id, one in zip(page_ids, cells):
                self.put(page_id, one)

    def needs_rebuild(self) -> bool:
        return len(self.tail) > max(TAIL_MERGE_PAGES, self.base_pages // 10)

    def rebuild(self, live_ids: np.ndarray) -> None:
        """Fold the tail into the postings, dropping pages not in `live_ids` (vectorised: at 100k
        pages the postings hold ~30M entries)."""
        live = np.asarray(live_ids, dtype=np.int64)
        tail_ids = np.fromiter(self.tail, dtype=np.int64, count=len(self.tail))
        size = int(max(live.max(initial=0), self.ids.max(initial=0), tail_ids.max(initial=0))) + 1
        keep = np.zeros(size, dtype=bool)
        keep[live] = True
        kept = keep[self.ids]
        base_cells = np.repeat(np.arange(CELLS, dtype=np.uint16), np.diff(self.pointers))[kept]
        tail_lists = [cells for page_id, cells in self.tail.items() if keep[page_id]]
        tail_owners = tail_ids[keep[tail_ids]]
        cells = np.concatenate([base_cells, *tail_lists]) if tail_lists else base_cells
        owners = np.concatenate([self.ids[kept], np.repeat(tail_owners, [len(c) for c in tail_lists])])
        order = np.argsort(cells, kind="stable")  # uint16: a radix sort
        self.pointers = np.concatenate([[0], np.cumsum(np.bincount(cells, minlength=CELLS))]).astype(np.int64)
        self.ids = owners[order].astype(np.int32)
        self.base_pages = len(live)
        self.tail = {}
        self._tail_postings = None

    # --- searching --------------------------------------------------------------------------
    def approximate_scores(self, query: np.ndarray, page_ids: np.ndarray) -> np.ndarray:
        """Approximate MaxSim of `query` for each of `page_ids` (live pages, in the caller's order)."""
        return self.token_scores(query, page_ids).sum(axis=0)

    def token_scores(self, query: np.ndarray, page_ids: np.ndarray) -> np.ndarray:
        """Each query token's approximate best similarity with each of `page_ids`: (tokens, pages),
        float32. Its column sums are `approximate_scores`."""
        scores = self.codebook.scores(np.asarray(query, dtype=np.float32))
        page_ids = np.asarray(page_ids, dtype=np.int64)
        if self._tail_postings is None:
            tail_ids = np.fromiter(self.tail, dtype=np.int64, count=len(self.tail))
            self._tail_postings = _postings(tail_ids, list(self.tail.values()))
        postings = [(self.pointers, self.ids), self._tail_postings]  # a page is in one of them
        size = int(max(page_ids.max(initial=0), self.ids.max(initial=0), self.high_water)) + 1
        best = np.empty(size, dtype=np.float32)
        per_token = np.empty((len(scores), len(page_ids)), dtype=np.float32)
        for token, token_scores in enumerate(scores):
            ranked = np.argpartition(-token_scores, MAX_WALKED_CELLS)[: MAX_WALKED_CELLS + 1]
            ranked = ranked[np.argsort(-token_scores[ranked], kind="stable")]
            lengths = sum(pointers[ranked[:-1] + 1] - pointers[ranked[:-1]] for pointers, _ in postings)
            walked = ranked[: max(1, int(np.searchsorted(np.cumsum(lengths), WALK_BUDGET, "right")))]
            best.fill(token_scores[ranked[len(walked)]])  # the best cell not walked
            for pointers, ids in postings:
                entries = _ranges(pointers[walked], pointers[walked + 1])
                np.maximum.at(
                    best, ids[entries], np.repeat(token_scores[walked], pointers[walked + 1] - pointers[walked])
                )
            per_token[token] = best[page_ids]
        return per_token

    # --- disk -------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the postings atomically (docqa.files.atomic_file: temp file, fsync, os.replace),
        after starting an empty log for the pages committed after this (a crash in between leaves
        the old postings with a log that is not theirs: it is ignored, and the pages it would have
        held are recomputed from the vector file)."""
        if self.tail:
            raise ValueError("rebuild() before save(): the saved postings hold every page")
        self.log_id = secrets.randbits(62)
        header = [self.trained_pages, self.base_pages, self.high_water, self.log_id]
        # Any: numpy's stub checks **arrays against savez's own allow_pickle flag
        arrays: dict[str, Any] = {
            "centroids": self.codebook.centroids,
            "pointers": self.pointers,
            "ids": self.ids,
            "header": np.array(header, dtype=np.int64),
        }
        if self.recall_estimate is not None:  # its fields in order, as load() reads them back
            arrays["estimate"] = np.array(astuple(self.recall_estimate), dtype=np.float64)
        with atomic_file(directory / FILE_NAME) as temp:
            np.savez(temp, **arrays)
            atomic_write(directory / LOG_NAME, _LOG_HEADER.pack(_LOG_MAGIC, self.log_id))

    def log(self, directory: Path, page_ids: list[int], cells: list[np.ndarray]) -> None:
        """Append committed pages' cells to the log (no fsync: a lost or torn record is recomputed
        from the vector file by whoever loads the index next)."""
        records = b"".join(
            _RECORD.pack(int(page_id), len(page_cells)) + page_cells.astype("<u2").tobytes()
            for page_id, page_cells in zip(page_ids, cells)
        )
        with open(directory / LOG_NAME, "ab") as log:
            log.write(records)

    @classmethod
    def load(cls, directory: Path, dim: int) -> CandidateIndex | None:
        """The saved postings plus the logged tail, or None when there are none or they cannot be
        read (the caller rebuilds them from the vector file)."""
        try:
            with np.load(directory / FILE_NAME, allow_pickle=False) as saved:
                arrays = {name: saved[name] for name in saved.files}
            trained_pages, base_pages, high_water, log_id = (int(value) for value in arrays["header"])
            index = cls(Codebook(arrays["centroids"]), trained_pages)
            if index.codebook.dim != dim or len(arrays["pointers"]) != CELLS + 1:
                return None
            index.pointers, index.ids = arrays["pointers"], arrays["ids"]
            index.base_pages, index.high_water, index.log_id = base_pages, high_water, log_id
            if "estimate" in arrays:  # saved before recall estimates existed: none (the default depth)
                rerank, recall, top1, queries, pages, sample = arrays["estimate"].tolist()
                index.recall_estimate = RecallEstimate(int(rerank), recall, top1, int(queries), int(pages), int(sample))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
            return None
        for page_id, cells in _read_log(directory / LOG_NAME, log_id):
            index.put(page_id, cells)
        return index


_LOG_MAGIC = b"DQCLOG01"
_LOG_HEADER = struct.Struct("<8sq")  # magic, the log id of the postings it extends
_RECORD = struct.Struct("<qI")  # page id, number of cells; then that many uint16 cells


def _read_log(path: Path, log_id: int) -> Iterator[tuple[int, np.ndarray]]:
    """The whole records of a log that belongs to the postings with `log_id` (a torn end is ignored)."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    if len(data) < _LOG_HEADER.size or _LOG_HEADER.unpack_from(data) != (_LOG_MAGIC, log_id):
        return
    position = _LOG_HEADER.size
    while position + _RECORD.size <= len(data):
        page_id, count = _RECORD.unpack_from(data, position)
        end = position + _RECORD.size + 2 * count
        if end > len(data) or count > CELLS:
            return
        yield page_id, np.frombuffer(data, dtype="<u2", count=count, offset=position + _RECORD.size).astype(np.uint16)
        position = end


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The concatenation of arange(start, stop) for each pair, without a Python loop."""
    lengths = stops - starts
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)


def _postings(page_ids: np.ndarray, cell_lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pointers, ids): the pages having cell c are ids[pointers[c]:pointers[c + 1]]."""
    counts = np.array([len(cells) for cells in cell_lists], dtype=np.int64)
    cells = np.concatenate(cell_lists).astype(np.int64) if cell_lists else np.zeros(0, np.int64)
    owners = np.repeat(np.asarray(page_ids, dtype=np.int64), counts)
    order = np.argsort(cells, kind="stable")
    pointers = np.concatenate([[0], np.cumsum(np.bincount(cells, minlength=CELLS))]).astype(np.int64)
    return pointers, owners[order].astype(np.int32)
