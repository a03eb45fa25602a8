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
have rare cells and walk many. Each token's score for a page is then raised by the second estimate,
the coded vectors of the token's best cells (codes.py), which finds pages whose own vectors are far
from every centroid. The pages with the best approximate scores are then reranked with exact
MaxSim by the caller.

Pages are keyed by their page id (stable across compaction, never reused). Pages added since the
postings were last rebuilt sit in a tail (walked through postings of its own, built when a search
first needs them, as are their codes' fast-scan index) and their codes are appended to a
log file, so a commit writes a few kilobytes per page, not the postings; the postings and codes are
rebuilt and saved when the tail passes a tenth of the pages. Deleted pages stay in both until then
and are masked out by the caller's list of live pages.
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
from . import codes as coding
from .codes import PROBED_CELLS, CodeSearch, VectorCodes

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
        self._half_norms = (self.centroids * self.centroids).sum(axis=2)  # (2, HALF_CENTROIDS) squared norms

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

    def vector_cells(
        self, pages: list[np.ndarray], decode_into: Callable[[np.ndarray, np.ndarray], None] = np.copyto
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every vector of `pages` as float32 (n, dim), and its cell, assigned in one pass.
        `decode_into(out, rows)` writes rows as float32 into `out` (for pages in the vector file's
        stored format, its `decode_into`; float arrays are copied)."""
        counts = [len(page) for page in pages]
        half = self.centroids.shape[2]
        halves = np.empty((2, sum(counts), half), dtype=np.float32)  # each half contiguous, as FAISS wants
        row = 0
        for page, count in zip(pages, counts):
            decode_into(halves[0, row : row + count], page[:, :half])
            decode_into(halves[1, row : row + count], page[:, half:])
            row += count
        if not row:
            return np.zeros((0, 2 * half), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return np.concatenate([halves[0], halves[1]], axis=1), self._assign_halves(halves[0], halves[1])

    def half_scores(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each query token's dot products with each half's centroids: (tokens, HALF_CENTROIDS)
        twice, what `scores`, `best_cells` and `nearest_cells` are computed from."""
        half = self.centroids.shape[2]
        return query[:, :half] @ self.centroids[0].T, query[:, half:] @ self.centroids[1].T

    def nearest_cells(self, halves: tuple[np.ndarray, np.ndarray], count: int) -> np.ndarray:
        """(query tokens, count): each token's `count` nearest cell centroids (Euclidean), nearest
        first (FAISS's multi-index search, exactly), from the tokens' `half_scores`."""
        (first, second), norms = halves, self._half_norms
        return _lowest_cells(norms[0] - 2 * first, norms[1] - 2 * second, count)  # distances less ||q||^2

    def best_cells(self, halves: tuple[np.ndarray, np.ndarray], count: int) -> np.ndarray:
        """(query tokens, count): each token's `count` cells with the best centroid scores
        (`scores`), best first, from the tokens' `half_scores`."""
        first, second = halves
        return _lowest_cells(-first, -second, count)

    def scores(self, halves: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """(query tokens, CELLS): each token's dot product with each cell's centroid, from the
        tokens' `half_scores`."""
        first, second = halves
        return (first[:, :, None] + second[:, None, :]).reshape(len(first), CELLS)


class CandidateIndex:
    """Postings from cells to page ids, plus a tail of recently added pages."""

    def __init__(self, codebook: Codebook, codes: VectorCodes, trained_pages: int) -> None:
        self.codebook = codebook
        self.codes = codes  # the residual quantizer of the second estimate (codes.py)
        self.base_codes = np.zeros((0, codes.code_size), dtype=np.uint8)  # the postings' pages' vectors, by cell
        self.base_code_pages = np.zeros(0, dtype=np.int32)  # the page id of each of base_codes
        self.tail_codes: dict[int, np.ndarray] = {}  # page id -> its vectors' codes, for the tail's pages
        self._base_search: CodeSearch | None = None  # base_codes' fast-scan index, built on use
        self._tail_search: CodeSearch | None = None  # tail_codes' fast-scan index, built on use
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
        """An empty index whose codebook and codes are trained on at most TRAIN_SAMPLE_VECTORS of
        `pages`' vectors."""
        rng = np.random.default_rng(seed)
        vectors = np.concatenate(pages).astype(np.float32)
        if len(vectors) > TRAIN_SAMPLE_VECTORS:
            vectors = vectors[rng.choice(len(vectors), TRAIN_SAMPLE_VECTORS, replace=False)]
        codebook = Codebook.train(vectors, seed)
        sample, cells = codebook.vector_cells([vectors])
        return cls(codebook, VectorCodes.train(codebook.centroids, sample, cells), len(pages))

    def encode(
        self, pages: list[np.ndarray], decode_into: Callable[[np.ndarray, np.ndarray], None] = np.copyto
    ) -> list[np.ndarray]:
        """Each page's vectors as standalone codes (their cells in them): what `put` takes. Reads
        only the trained codebook and codes, so it runs on any thread (assigning.py)."""
        vectors, cells = self.codebook.vector_cells(pages, decode_into)
        bounds = np.cumsum([0, *(len(page) for page in pages)])
        codes = self.codes.encode(vectors, cells)
        return [codes[low:high] for low, high in zip(bounds[:-1], bounds[1:])]

    def add(self, page_ids: list[int], pages: list[np.ndarray]) -> None:
        """Add committed pages with their vectors."""
        self.put(page_ids, self.encode(pages))

    def put(self, page_ids: list[int], codes: list[np.ndarray]) -> None:
        """Add committed pages by their vectors' standalone codes (`encode`)."""
        if not page_ids:
            return
        for page_id, page_codes in zip(page_ids, codes):
            self.tail[int(page_id)] = np.unique(coding.cells_of(page_codes)).astype(np.uint16)
            self.tail_codes[int(page_id)] = page_codes
        self.high_water = max(self.high_water, *(int(page_id) for page_id in page_ids))
        self._tail_postings = None
        self._tail_search = None

    def put_assigned(self, batches: list[tuple[list[int], list[np.ndarray]]]) -> None:
        """Add batches of committed pages by their codes: (page ids, each page's codes)."""
        for page_ids, codes in batches:
            self.put(page_ids, codes)

    def needs_rebuild(self) -> bool:
        return len(self.tail) > max(TAIL_MERGE_PAGES, self.base_pages // 10)

    def rebuild(self, live_ids: np.ndarray) -> None:
        """Fold the tail into the postings, dropping pages not in `live_ids` (vectorised: at 100k
        pages the postings hold ~30M entries)."""
        live = np.asarray(live_ids, dtype=np.int64)
        tail_ids = np.fromiter(self.tail, dtype=np.int64, count=len(self.tail))
        size = (
            int(
                max(
                    live.max(initial=0),
                    self.ids.max(initial=0),
                    tail_ids.max(initial=0),
                    self.base_code_pages.max(initial=0),
                )
            )
            + 1
        )
        keep = np.zeros(size, dtype=bool)
        keep[live] = True
        kept = keep[self.ids]
        self._rebuild_codes(keep)
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

    def _rebuild_codes(self, keep: np.ndarray) -> None:
        """Fold the tail's codes into the base codes, dropping pages whose `keep` is false (in the
        order of the fast-scan index's lists, so building it, and saving, finds them sorted)."""
        kept = keep[self.base_code_pages]
        tail = [(page_id, codes) for page_id, codes in self.tail_codes.items() if keep[page_id]]
        codes = np.concatenate([self.base_codes[kept], *(page_codes for _, page_codes in tail)])
        owners = np.concatenate(
            [
                self.base_code_pages[kept],
                *(np.full(len(page_codes), page_id, dtype=np.int32) for page_id, page_codes in tail),
            ]
        )
        order = np.argsort(coding.list_numbers(codes), kind="stable")
        self.base_codes, self.base_code_pages = codes[order], owners[order]
        self.tail_codes = {}
        self._base_search = self._tail_search = None

    # --- searching --------------------------------------------------------------------------
    def approximate_scores(self, query: np.ndarray, page_ids: np.ndarray) -> np.ndarray:
        """Approximate MaxSim of `query` for each of `page_ids` (live pages, in the caller's order)."""
        return self.token_scores(query, page_ids).sum(axis=0)

    def token_scores(self, query: np.ndarray, page_ids: np.ndarray) -> np.ndarray:
        """Each query token's approximate best similarity with each of `page_ids`: (tokens, pages),
        float32, the walk's score raised by the token's best coded vectors (codes.py). Its column
        sums are `approximate_scores`."""
        query = np.asarray(query, dtype=np.float32)
        halves = self.codebook.half_scores(query)  # the walk's, the probes' and the hits' centroid scores
        scores = self.codebook.scores(halves)
        page_ids = np.asarray(page_ids, dtype=np.int64)
        if self._tail_postings is None:
            tail_ids = np.fromiter(self.tail, dtype=np.int64, count=len(self.tail))
            self._tail_postings = _postings(tail_ids, list(self.tail.values()))
        postings = [(self.pointers, self.ids), self._tail_postings]  # a page is in one of them
        size = int(max(page_ids.max(initial=0), self.ids.max(initial=0), self.high_water)) + 1
        best = np.empty(size, dtype=np.float32)
        per_token = np.empty((len(scores), len(page_ids)), dtype=np.float32)
        for token, (token_scores, ranked) in enumerate(
            zip(scores, self.codebook.best_cells(halves, MAX_WALKED_CELLS + 1))
        ):
            lengths = sum(pointers[ranked[:-1] + 1] - pointers[ranked[:-1]] for pointers, _ in postings)
            walked = ranked[: max(1, int(np.searchsorted(np.cumsum(lengths), WALK_BUDGET, "right")))]
            best.fill(token_scores[ranked[len(walked)]])  # the best cell not walked
            for pointers, ids in postings:
                entries = _ranges(pointers[walked], pointers[walked + 1])
                np.maximum.at(
                    best, ids[entries], np.repeat(token_scores[walked], pointers[walked + 1] - pointers[walked])
                )
            per_token[token] = best[page_ids]
        position = np.full(size, -1, dtype=np.int64)  # page id -> its column (-1: not asked for, or removed)
        position[page_ids] = np.arange(len(page_ids))
        # Codes are looked up in the cells nearest the token, not those of the best centroid score: a
        # loose cell (a small centroid, vectors far from it) scores low but can hold the best vectors.
        probed = self.codebook.nearest_cells(halves, PROBED_CELLS)
        probed_scores = np.take_along_axis(scores, probed, axis=1)
        for search in self._code_searches():
            hit_pages, similarities = search.hits(query, probed, probed_scores)
            columns = np.where((hit_pages >= 0) & (hit_pages < size), position[np.clip(hit_pages, 0, size - 1)], -1)
            tokens = np.broadcast_to(np.arange(len(query))[:, None], columns.shape)
            found = columns >= 0
            np.maximum.at(per_token, (tokens[found], columns[found]), similarities[found])
        return per_token

    def _code_searches(self) -> list[CodeSearch]:
        """The fast-scan indexes of the base's codes and of the tail's, built when first needed."""
        if self._base_search is None:
            self._base_search = self.codes.searchable(self.base_codes, self.base_code_pages)
        if self._tail_search is None:
            page_ids = np.fromiter(self.tail_codes, dtype=np.int64, count=len(self.tail_codes))
            codes = list(self.tail_codes.values())
            self._tail_search = self.codes.searchable(
                np.concatenate([np.zeros((0, self.codes.code_size), np.uint8), *codes]),
                np.repeat(page_ids, [len(page_codes) for page_codes in codes]),
            )
        return [self._base_search, self._tail_search]

    # --- disk -------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the postings and codes atomically (docqa.files.atomic_file: temp file, fsync,
        os.replace), after starting an empty log for the pages committed after this (a crash in
        between leaves the old postings with a log that is not theirs: it is ignored, and the pages
        it would have held are recomputed from the vector file)."""
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
            "residual_centroids": self.codes.residual_centroids,
        }
        if self.recall_estimate is not None:  # its fields in order, as load() reads them back
            arrays["estimate"] = np.array(astuple(self.recall_estimate), dtype=np.float64)
        records = np.empty(len(self.base_codes), dtype=_code_records(self.codes.code_size))
        records["page"], records["code"] = self.base_code_pages, self.base_codes
        codes_path = directory / _codes_name(self.log_id)
        with atomic_file(codes_path) as temp:
            np.save(temp, records)
        with atomic_file(directory / FILE_NAME) as temp:
            np.savez(temp, **arrays)
            atomic_write(directory / LOG_NAME, _LOG_HEADER.pack(_LOG_MAGIC, self.log_id))
        for stale in directory.glob(_codes_name("*")):  # the codes of postings these replace
            if stale != codes_path:
                stale.unlink(missing_ok=True)
        self._map_codes(codes_path)

    def _map_codes(self, path: Path) -> None:
        """Take the base codes from their saved file, memory-mapped: read when the fast-scan index
        is built or the base rebuilt, they stay page cache, not process memory."""
        records = np.load(path, mmap_mode="r", allow_pickle=False)
        if records.dtype != _code_records(self.codes.code_size) or records.ndim != 1:
            raise ValueError(f"{path}: not this index's vector codes")
        self.base_codes, self.base_code_pages = records["code"], records["page"]

    def log(self, directory: Path, page_ids: list[int], codes: list[np.ndarray]) -> None:
        """Append committed pages' codes to the log (no fsync: a lost or torn record is recomputed
        from the vector file by whoever loads the index next)."""
        records = b"".join(
            _RECORD.pack(int(page_id), len(page_codes)) + np.ascontiguousarray(page_codes, dtype=np.uint8).tobytes()
            for page_id, page_codes in zip(page_ids, codes)
        )
        with open(directory / LOG_NAME, "ab") as log:
            log.write(records)

    @classmethod
    def load(cls, directory: Path, dim: int) -> CandidateIndex | None:
        """The saved postings and codes plus the logged tail, or None when there are none or they
        cannot be read, or were saved before the index kept codes (the caller rebuilds them from
        the vector file)."""
        for _ in range(2):  # a writer that saved in between removes the codes file the postings named
            index = cls._load(directory, dim)
            if index is not None:
                return index
        return None

    @classmethod
    def _load(cls, directory: Path, dim: int) -> CandidateIndex | None:
        try:
            with np.load(directory / FILE_NAME, allow_pickle=False) as saved:
                arrays = {name: saved[name] for name in saved.files}
            trained_pages, base_pages, high_water, log_id = (int(value) for value in arrays["header"])
            codebook = Codebook(arrays["centroids"])
            if codebook.dim != dim or len(arrays["pointers"]) != CELLS + 1:
                return None
            residual_centroids = arrays["residual_centroids"]
            subquantizers = coding.subquantizers(dim)
            if residual_centroids.shape != (subquantizers, 1 << coding.BITS, dim // subquantizers):
                return None
            codes = VectorCodes(arrays["centroids"], residual_centroids)
            index = cls(codebook, codes, trained_pages)
            index._map_codes(directory / _codes_name(log_id))
            index.pointers, index.ids = arrays["pointers"], arrays["ids"]
            index.base_pages, index.high_water, index.log_id = base_pages, high_water, log_id
            if "estimate" in arrays:  # saved before recall estimates existed: none (the default depth)
                rerank, recall, top1, queries, pages, sample = arrays["estimate"].tolist()
                index.recall_estimate = RecallEstimate(int(rerank), recall, top1, int(queries), int(pages), int(sample))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):  # FileNotFoundError: lost codes
            return None
        for page_id, page_codes in _read_log(directory / LOG_NAME, log_id, codes.code_size):
            index.put([page_id], [page_codes])
        return index


_LOG_MAGIC = b"DQCLOG02"
_LOG_HEADER = struct.Struct("<8sq")  # magic, the log id of the postings it extends
_RECORD = struct.Struct("<qI")  # page id, number of vectors; then that many standalone codes
_MAX_PAGE_VECTORS = 1 << 20  # a record claiming more is torn or not ours


def _codes_name(log_id: int | str) -> str:
    """The file of the base codes saved with the postings whose log id is `log_id`."""
    return f"candidates-codes-{log_id}.npy"


def _code_records(code_size: int) -> np.dtype:
    """A saved base code: its vector's page id, then its standalone code."""
    return np.dtype([("page", "<i4"), ("code", "u1", (code_size,))])


def _read_log(path: Path, log_id: int, code_size: int) -> Iterator[tuple[int, np.ndarray]]:
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
        end = position + _RECORD.size + code_size * count
        if end > len(data) or count > _MAX_PAGE_VECTORS:
            return
        codes = np.frombuffer(data, dtype=np.uint8, count=code_size * count, offset=position + _RECORD.size)
        yield page_id, codes.reshape(count, code_size)
        position = end


def _lowest_cells(first: np.ndarray, second: np.ndarray, count: int) -> np.ndarray:
    """Per row, the `count` cells with the lowest sum of their halves' values (`first` and `second`:
    rows x HALF_CENTROIDS each), lowest first. A cell whose halves rank i-th and
    j-th (from 1) in their half has at least i * j cells as low, so only pairs with i * j <= count
    are compared: about count * ln(HALF_CENTROIDS) of them instead of all CELLS."""
    count = min(count, CELLS)
    per_half = min(count, HALF_CENTROIDS)
    rows = np.arange(len(first))[:, None]
    halves = []
    for values in (first, second):
        order = np.argsort(values, axis=1, kind="stable")[:, :per_half]
        halves.append((order, np.take_along_axis(values, order, axis=1)))
    (first_order, first_values), (second_order, second_values) = halves
    ranks = np.arange(1, per_half + 1)
    i, j = np.nonzero(ranks[:, None] * ranks[None, :] <= count)  # the pairs that can be among them
    sums = first_values[:, i] + second_values[:, j]
    if count < sums.shape[1]:
        chosen = np.argpartition(sums, count - 1, axis=1)[:, :count]
        chosen = np.take_along_axis(chosen, np.argsort(np.take_along_axis(sums, chosen, axis=1), axis=1), axis=1)
    else:
        chosen = np.argsort(sums, axis=1, kind="stable")
    return first_order[rows, i[chosen]] * HALF_CENTROIDS + second_order[rows, j[chosen]]


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
