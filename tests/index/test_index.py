"""The storage engine: exact MaxSim against a straightforward reference, the candidate stage against
its definition, its files against torn writes, and the index against random add/remove/update/
compact sequences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docqa import DocIndex
from docqa.index import candidate_stage
from docqa.index import candidates as stage
from docqa.index import codes as codes_module
from docqa.index import search as scoring
from docqa.index.candidates import CELLS, LOG_NAME, CandidateIndex, Codebook
from docqa.index.search import brute_force_top_k, page_scores, two_stage_top_k
from docqa.index.store import PageTable
from docqa.index.vectors import VectorFile, as_float32


def _normalised(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _build(tmp_path, rng, pages: int, dim: int = 16):
    vectors = VectorFile(tmp_path, dim)
    offsets, counts = [], []
    for _ in range(pages):
        page = _normalised(rng, int(rng.integers(3, 40)), dim).astype(np.float16)
        offsets.append(vectors.append(vectors.encode(page)))
        counts.append(len(page))
    vectors.sync()
    return vectors, PageTable(np.arange(100, 100 + pages), np.array(offsets), np.array(counts))


def _reference_scores(query, vectors, table):
    return [float((query @ page.T).max(axis=1).sum()) for page in vectors.read(table.offsets, table.counts)]


def _reference_top(query, vectors, table, k):
    scores = _reference_scores(query, vectors, table)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], table.page_ids[i]))[:k]
    return [(int(table.page_ids[i]), scores[i]) for i in order]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 5, 30])
def test_brute_force_equals_reference(tmp_path, seed, k):
    rng = np.random.default_rng(seed)
    vectors, table = _build(tmp_path, rng, pages=int(rng.integers(1, 120)))
    query = _normalised(rng, int(rng.integers(1, 12)), 16)
    for chunk_rows in (7, 1 << 18):  # many chunks, one chunk
        got = [(hit.page_id, hit.score) for hit in brute_force_top_k(query, k, table, vectors, chunk_rows)]
        expected = _reference_top(query, vectors, table, k)
        assert [page for page, _ in got] == [page for page, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=0, atol=1e-4)
    reference = _reference_scores(query, vectors, table)
    np.testing.assert_allclose(page_scores(query, table, vectors), reference, atol=1e-4)
    # bfloat16 keeps 8 significant bits: each product is off by at most ~2 * 2^-8 of |q| |x| = 1 here
    bound = len(query) * 3 * 2.0**-8
    np.testing.assert_allclose(page_scores(query, table, vectors, bfloat16=True, chunk_rows=7), reference, atol=bound)


def test_float16_converts_exactly_at_every_bit_pattern():
    every = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    finite = np.isfinite(every)
    expected = every.astype(np.float32)
    got = as_float32(every[finite])  # every finite value, subnormals and both zeros included
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected[finite].view(np.uint32))
    specials = as_float32(every)  # with infinities and NaNs in it
    assert np.array_equal(specials, expected, equal_nan=True) and np.isinf(specials).sum() == 2
    assert as_float32(every[:, ::3]).shape == (256, 86)  # strided input


def test_codebook_assigns_each_half_to_its_nearest_centroid():
    rng = np.random.default_rng(1)
    vectors = _normalised(rng, 3000, 16)
    codebook = Codebook.train(vectors)
    decoded, cells = codebook.vector_cells([vector[None] for vector in vectors[:200]])
    assert np.array_equal(decoded, vectors[:200])
    for half in (0, 1):
        part = vectors[:200, half * 8 : (half + 1) * 8]
        distances = ((part[:, None, :] - codebook.centroids[half][None]) ** 2).sum(axis=2)
        got = cells // stage.HALF_CENTROIDS if half == 0 else cells % stage.HALF_CENTROIDS
        assert np.array_equal(got, distances.argmin(axis=1))
    halves = codebook.half_scores(vectors[:3])
    scores = codebook.scores(halves)
    centroids = np.concatenate(  # every cell's centroid, in cell order
        [
            np.repeat(codebook.centroids[0], stage.HALF_CENTROIDS, axis=0),
            np.tile(codebook.centroids[1], (stage.HALF_CENTROIDS, 1)),
        ],
        axis=1,
    )
    for count in (64, 300):  # fewer than a half's centroids: the nearest pair among each half's nearest
        for token, nearest in zip(vectors[:3], codebook.nearest_cells(halves, count)):
            distances = ((centroids - token) ** 2).sum(axis=1)
            np.testing.assert_allclose(distances[nearest], np.sort(distances)[:count], atol=1e-5)  # nearest first
    for count in (64, 2049):  # the walk's cells: the best centroid scores, best first
        for token_scores, best in zip(scores, codebook.best_cells(halves, count)):
            np.testing.assert_allclose(token_scores[best], -np.sort(-token_scores)[:count], atol=1e-5)
    half_count = stage.HALF_CENTROIDS
    centroid = np.concatenate(
        [codebook.centroids[0][cells[0] // half_count], codebook.centroids[1][cells[0] % half_count]]
    )
    assert scores.shape == (3, CELLS) and np.isclose(scores[0, cells[0]], vectors[0] @ centroid, atol=1e-5)


def _page_cells(codebook, pages: list[np.ndarray]) -> list[np.ndarray]:
    """Each page's sorted distinct cells."""
    _, cells = codebook.vector_cells(pages)
    bounds = np.cumsum([0, *(len(page) for page in pages)])
    return [np.unique(cells[low:high]) for low, high in zip(bounds[:-1], bounds[1:])]


def _approximate_by_definition(candidates: CandidateIndex, query: np.ndarray, pages: dict) -> dict:
    """Per query token: cells walked best first while the pages having them (postings entries)
    stay within the budget; a page scores the best walked cell it has, else the best cell not
    walked; then raised to the coded similarity (cell centroid plus decoded residual) of each of
    its vectors in the PROBED_CELLS cells nearest the token (these pages have fewer such vectors than
    PER_TOKEN_HITS, so every one counts); summed over tokens."""
    page_cells = {
        page_id: cells for page_id, cells in zip(pages, _page_cells(candidates.codebook, list(pages.values())))
    }
    vectors, cells = candidates.codebook.vector_cells(list(pages.values()))
    coded = candidates.codes.decode(candidates.codes.encode(vectors, cells))
    owners = np.repeat(list(pages), [len(page) for page in pages.values()])
    cell_pages = {}
    for cells_of_page in page_cells.values():
        for cell in cells_of_page:
            cell_pages[int(cell)] = cell_pages.get(int(cell), 0) + 1
    half_norms = (candidates.codebook.centroids**2).sum(axis=2)
    centroid_norms = (half_norms[0][:, None] + half_norms[1][None, :]).reshape(-1)
    totals = dict.fromkeys(pages, 0.0)
    for token, token_scores in zip(query, candidates.codebook.scores(candidates.codebook.half_scores(query))):
        ranked = np.argsort(-token_scores, kind="stable")
        walked, seen = [], 0
        for cell in ranked[: stage.MAX_WALKED_CELLS]:
            seen += cell_pages.get(int(cell), 0)
            if walked and seen > stage.WALK_BUDGET:
                break
            walked.append(int(cell))
        floor = token_scores[ranked[len(walked)]]
        distances = centroid_norms - 2 * token_scores  # to each cell's centroid, less ||token||^2
        probed = np.isin(cells, np.argsort(distances, kind="stable")[: codes_module.PROBED_CELLS])
        assert probed.sum() < codes_module.PER_TOKEN_HITS
        for page_id, cells_of_page in page_cells.items():
            raised = coded[probed & (owners == page_id)] @ token
            walk = max([floor, *(token_scores[c] for c in cells_of_page if int(c) in set(walked))])
            totals[page_id] += max([walk, *raised])
    return totals


@pytest.mark.parametrize("budget, max_cells", [(stage.WALK_BUDGET, stage.MAX_WALKED_CELLS), (2, 4096), (10**9, 16)])
def test_candidate_scores_follow_their_definition_in_postings_and_tail(tmp_path, monkeypatch, budget, max_cells):
    """With the default limits, with a postings budget that stops the walk after a few cells, and
    with a cap on the cells walked."""
    monkeypatch.setattr(stage, "WALK_BUDGET", budget)
    monkeypatch.setattr(stage, "MAX_WALKED_CELLS", max_cells)
    rng = np.random.default_rng(2)
    pages = [_normalised(rng, int(rng.integers(5, 60)), 16) for _ in range(80)]
    candidates = CandidateIndex.train(pages)
    candidates.add(list(range(1, 51)), pages[:50])
    candidates.rebuild(np.arange(1, 51))  # pages 1-50 in the postings
    candidates.add(list(range(51, 81)), pages[50:])  # pages 51-80 in the tail
    by_id = dict(zip(range(1, 81), pages))
    cells = dict(zip(range(1, 81), _page_cells(candidates.codebook, pages)))
    for _ in range(5):
        query = _normalised(rng, 6, 16)
        live = np.arange(1, 81)
        expected = _approximate_by_definition(candidates, query, by_id)
        # fast-scan sums 8-bit look-up tables: coded similarities within ~1e-2 of the float ones
        np.testing.assert_allclose(candidates.approximate_scores(query, live), [expected[i] for i in live], atol=0.05)
        per_token = candidates.token_scores(query, live)  # each row: that token alone, by the definition
        for row, token in zip(per_token, query):
            alone = _approximate_by_definition(candidates, token[None], by_id)
            np.testing.assert_allclose(row, [alone[i] for i in live], atol=0.02)

    candidates.rebuild(np.arange(1, 81))
    candidates.save(tmp_path)
    candidates.add([81], [pages[0]])
    candidates.log(tmp_path, [81], candidates.encode([pages[0]]))
    loaded = CandidateIndex.load(tmp_path, 16)
    assert loaded.high_water == 81 and np.array_equal(loaded.tail[81], cells[1])
    query = _normalised(rng, 4, 16)
    np.testing.assert_allclose(
        loaded.approximate_scores(query, np.arange(1, 82)),
        candidates.approximate_scores(query, np.arange(1, 82)),
        atol=1e-6,
    )


@pytest.mark.parametrize("dim, vectors", [(16, 4000), (128, 30000), (40, 3000)])
def test_codes_are_packed_as_faiss_packs_its_own(dim, vectors):
    """The fast-scan index built from standalone codes (packed by codes.py) answers exactly as one
    FAISS filled itself from the float vectors (its own encoding and block packing)."""
    import faiss

    rng = np.random.default_rng(dim)
    x = _normalised(rng, vectors, dim)
    codebook = Codebook.train(x)
    decoded, cells = codebook.vector_cells([x])
    codes = codes_module.VectorCodes.train(codebook.centroids, decoded, cells)
    page_ids = rng.integers(0, 500, len(x))
    ours = codes.searchable(codes.encode(decoded, cells), page_ids)
    theirs = codes.searchable(np.zeros((0, codes.code_size), np.uint8), [])
    theirs.index.add_with_ids(x, page_ids.astype(np.int64))  # FAISS assigns cells with the same centroids
    query = x[:6] + 0.1 * _normalised(rng, 6, dim)
    scores = codebook.scores(codebook.half_scores(query))
    probed = np.argsort(-scores, axis=1)[:, : codes_module.PROBED_CELLS]
    probed_scores = np.take_along_axis(scores, probed, axis=1)
    found, similarities = ours.hits(query, probed, probed_scores)
    expected, expected_similarities = theirs.hits(query, probed, probed_scores)
    assert (found >= 0).any() and faiss.downcast_index(theirs.index).ntotal == len(x)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-6)
    assert np.array_equal(codes_module.cells_of(codes.encode(decoded, cells)), cells)


def test_a_rebuild_drops_the_codes_of_removed_pages_and_hits_skip_them(tmp_path):
    """Removed pages' coded vectors go at the next rebuild, and until then no hit raises a page the
    caller did not ask for (its column is absent, the other columns are as before)."""
    rng = np.random.default_rng(8)
    pages = [_normalised(rng, int(rng.integers(5, 30)), 16) for _ in range(60)]
    candidates = CandidateIndex.train(pages)
    candidates.add(list(range(1, 41)), pages[:40])
    candidates.rebuild(np.arange(1, 41))
    candidates.add(list(range(41, 61)), pages[40:])  # in the tail
    removed = [3, 17, 45, 58]
    live = np.array([page for page in range(1, 61) if page not in removed])
    query = np.concatenate([pages[2][:4], pages[44][:4]])  # tokens of removed pages: their best hits are those
    before = candidates.token_scores(query, live)
    candidates.rebuild(live)
    assert set(candidates.base_code_pages.tolist()) == set(live.tolist()) and candidates.tail_codes == {}
    assert len(candidates.base_codes) == sum(len(pages[page - 1]) for page in live)
    np.testing.assert_allclose(candidates.token_scores(query, live), before, atol=1e-6)
    candidates.save(tmp_path)
    loaded = CandidateIndex.load(tmp_path, 16)
    np.testing.assert_array_equal(loaded.base_codes, candidates.base_codes)
    np.testing.assert_allclose(loaded.token_scores(query, live), before, atol=1e-6)


def _saved_candidates(folder, rng) -> tuple[CandidateIndex, list[np.ndarray]]:
    """A candidate index of 10 random pages of 20 vectors, saved in `folder`; and the pages."""
    pages = [_normalised(rng, 20, 16) for _ in range(10)]
    candidates = CandidateIndex.train(pages)
    candidates.add(list(range(1, 11)), pages)
    candidates.rebuild(np.arange(1, 11))
    candidates.save(folder)
    return candidates, pages


def test_a_candidate_index_saved_before_codes_or_damaged_is_rebuilt(tmp_path):
    """A candidates.npz without codes (saved by an older docqa), or with codes that do not fit,
    loads as lost: None, so the caller rebuilds it from the vector file."""
    _saved_candidates(tmp_path, np.random.default_rng(9))
    with np.load(tmp_path / stage.FILE_NAME) as saved:
        arrays = {name: saved[name] for name in saved.files}
    old = {name: arrays[name] for name in ("centroids", "pointers", "ids", "header")}
    np.savez(tmp_path / stage.FILE_NAME, **old)
    assert CandidateIndex.load(tmp_path, 16) is None
    # damaged: a quantizer that does not fit the vectors; codes of another size; no codes file
    np.savez(tmp_path / stage.FILE_NAME, **{**arrays, "residual_centroids": np.zeros((3, 16, 5), np.float32)})
    assert CandidateIndex.load(tmp_path, 16) is None
    np.savez(tmp_path / stage.FILE_NAME, **arrays)
    (codes_file,) = tmp_path.glob("candidates-codes-*.npy")
    saved_codes = codes_file.read_bytes()
    np.save(codes_file, np.zeros(3, dtype=[("page", "<i4"), ("code", "u1", (5,))]))
    assert CandidateIndex.load(tmp_path, 16) is None
    codes_file.unlink()
    assert CandidateIndex.load(tmp_path, 16) is None
    codes_file.write_bytes(saved_codes)
    assert CandidateIndex.load(tmp_path, 16) is not None


def test_pages_removed_from_the_tail_are_left_out():
    """The newest page, still in the tail, removed: the live pages are scored, it is not."""
    rng = np.random.default_rng(6)
    pages = [_normalised(rng, 12, 16) for _ in range(6)]
    candidates = CandidateIndex.train(pages)
    candidates.add([1, 2, 3], pages[:3])
    candidates.rebuild(np.array([1, 2, 3]))
    candidates.add([4, 5, 6], pages[3:])
    scores = candidates.approximate_scores(_normalised(rng, 3, 16), np.array([1, 2, 4]))
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_torn_or_foreign_logs_are_ignored(tmp_path):
    candidates, pages = _saved_candidates(tmp_path, np.random.default_rng(3))
    candidates.log(tmp_path, [11, 12], candidates.encode(pages[:2]))
    log = tmp_path / LOG_NAME
    log.write_bytes(log.read_bytes()[:-3])  # the second record torn by a crash
    assert list(CandidateIndex.load(tmp_path, 16).tail) == [11]
    (tmp_path / "other").mkdir()
    other = CandidateIndex.train(pages)
    other.save(tmp_path / "other")
    log.write_bytes((tmp_path / "other" / LOG_NAME).read_bytes())  # a log of other postings
    assert CandidateIndex.load(tmp_path, 16).tail == {}
    (tmp_path / stage.FILE_NAME).write_bytes(b"garbage")
    assert CandidateIndex.load(tmp_path, 16) is None


def test_temp_files_of_a_crashed_save_are_removed_on_recovery(tmp_path):
    """atomic_file's temporaries (".candidates.npz.*.tmp", ".candidates.log.*.tmp") and those of
    older versions (".candidates-*.tmp") go when a writer next recovers (here: on open)."""
    index = DocIndex.open(tmp_path, create=True)
    index.add_embeddings("/a.pdf", [_normalised(np.random.default_rng(1), 4, 8)])
    index.close()
    left = [tmp_path / name for name in (".candidates.npz.a1.tmp", ".candidates.log.b2.tmp", ".candidates-c3.tmp")]
    for path in left:
        path.write_bytes(b"partial")
    DocIndex.open(tmp_path).close()
    assert [path.name for path in left if path.exists()] == []


def _with_candidates(tmp_path, rng, pages: int):
    """A vector file of `pages` random pages with a candidate index holding all of them."""
    vectors, table = _build(tmp_path, rng, pages=pages)
    stored = vectors.read(table.offsets, table.counts)
    candidates = CandidateIndex.train(stored)
    candidates.add(table.page_ids.tolist(), stored)
    candidates.rebuild(table.page_ids)
    return vectors, table, candidates


def test_two_stage_reranks_exactly_and_covers_everything_when_asked(tmp_path):
    vectors, table, candidates = _with_candidates(tmp_path, np.random.default_rng(4), pages=90)
    rng = np.random.default_rng(40)
    query = _normalised(rng, 5, 16)
    everything = two_stage_top_k(query, 10, table, candidates, vectors, rerank=len(table))
    assert [(h.page_id, round(h.score, 4)) for h in everything] == [
        (p, round(s, 4)) for p, s in _reference_top(query, vectors, table, 10)
    ]
    exact = dict(zip(table.page_ids.tolist(), _reference_scores(query, vectors, table)))
    few = two_stage_top_k(query, 3, table, candidates, vectors, rerank=12)
    assert len(few) == 3 and all(abs(h.score - exact[h.page_id]) < 1e-4 for h in few)


def test_two_stage_rescores_its_best_bfloat16_pages_exactly(tmp_path, monkeypatch):
    """Every page reranked in bfloat16, the best 12 of them rescored in float32: the exact top 10."""
    monkeypatch.setattr(scoring, "RESCORE_PAGES", 12)
    vectors, table, candidates = _with_candidates(tmp_path, np.random.default_rng(5), pages=90)
    rng = np.random.default_rng(50)
    for _ in range(5):
        query = _normalised(rng, 5, 16)
        got = two_stage_top_k(query, 10, table, candidates, vectors, rerank=len(table))
        expected = _reference_top(query, vectors, table, 10)
        assert [h.page_id for h in got] == [page for page, _ in expected]
        np.testing.assert_allclose([h.score for h in got], [score for _, score in expected], atol=1e-5)


@pytest.fixture()
def small_training(monkeypatch):
    """Train the candidate stage on tiny indexes, fold its tail often, rerank few pages."""
    monkeypatch.setattr(stage, "TRAIN_MIN_PAGES", 12)
    monkeypatch.setattr(stage, "TAIL_MERGE_PAGES", 5)
    monkeypatch.setattr(stage, "RETRAIN_GROWTH", 4)
    monkeypatch.setattr(scoring, "RERANK_PAGES", 4)


def test_vectors_of_odd_dimension_are_searched_exactly(tmp_path, small_training):
    """The codebook splits vectors into two halves: an odd dimension gets no candidate stage, and
    every search scores every page."""
    rng = np.random.default_rng(11)
    index = DocIndex.open(tmp_path / "index", create=True)
    pages = [_normalised(rng, 6, 7) for _ in range(30)]
    for number, page in enumerate(pages):
        index.add_embeddings(f"/docs/{number}.pdf", [page])
    query = _normalised(rng, 3, 7)
    assert index.storage.candidate_stage.caught_up(index.store.page_table(), index.vectors) is None
    fast = [(hit.path, round(hit.score, 4)) for hit in index.search_embeddings(query, k=5)]
    assert fast == [(hit.path, round(hit.score, 4)) for hit in index.search_embeddings(query, k=5, exact=True)]
    index.close()


def _cells_by_page(candidates: CandidateIndex) -> dict[int, set[int]]:
    """Each page's cells as the candidate index holds them (postings and tail)."""
    cells: dict[int, set[int]] = {}
    for cell in np.flatnonzero(np.diff(candidates.pointers)):
        for page_id in candidates.ids[candidates.pointers[cell] : candidates.pointers[cell + 1]].tolist():
            cells.setdefault(page_id, set()).add(int(cell))
    for page_id, page_cells in candidates.tail.items():
        cells.setdefault(page_id, set()).update(page_cells.tolist())
    return cells


def test_cells_assigned_beside_the_writer_are_those_of_the_stored_values(tmp_path, small_training, monkeypatch):
    """In a bulk session, committed pages get their cells on a worker thread a few pages at a time
    (through training, retraining and folds): a reader in between sees every committed page, and
    afterwards the candidate index holds each live page with the cells of its stored values, also
    after a session that failed with pages still waiting, once reopened."""
    monkeypatch.setattr(candidate_stage, "ASSIGN_BATCH_PAGES", 3)
    rng = np.random.default_rng(7)
    folder = tmp_path / "index"
    index = DocIndex.open(folder, create=True)

    def holds_every_page_with_its_cells(index: DocIndex, settled: bool = False) -> None:
        table = index.store.page_table()  # the storage engine's own view: what the candidate stage must hold
        if settled:  # nothing left for a reader to catch up
            assert index.storage.candidate_stage.in_memory.high_water == table.page_ids.max()
        candidates = index.storage.candidate_stage.caught_up(table, index.vectors)
        stored = index.vectors.read(table.offsets, table.counts)
        expected = dict(zip(table.page_ids.tolist(), _page_cells(candidates.codebook, stored)))
        held = _cells_by_page(candidates)
        assert {page: held.get(page) for page in expected} == {page: set(c.tolist()) for page, c in expected.items()}

    with index.bulk():
        for number in range(40):  # 24 paths: some adds replace a document
            pages = [_normalised(rng, int(rng.integers(2, 9)), 8) for _ in range(int(rng.integers(1, 4)))]
            index.add_embeddings(f"/docs/{number % 24}.pdf", pages)
            if number in (9, 25):
                holds_every_page_with_its_cells(index)
    holds_every_page_with_its_cells(index, settled=True)
    with pytest.raises(RuntimeError), index.bulk():
        for number in range(7):
            index.add_embeddings(f"/late/{number}.pdf", [_normalised(rng, 4, 8)])
        raise RuntimeError("the caller failed while pages waited for their cells")
    index.close()
    holds_every_page_with_its_cells(DocIndex.open(folder))


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "update", "remove", "compact", "reopen"]), st.integers(0, 11), st.integers(1, 4)
    ),
    min_size=4,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=operations, seed=st.integers(0, 2**16))
def test_random_histories_keep_search_right(tmp_path_factory, small_training, operations, seed):
    """After any history: exact search equals brute force over the live pages; default search returns
    k pages (or all), each with its exact score, never a removed one; and equals exact search
    whenever it reranks every page."""
    rng = np.random.default_rng(seed)
    folder = tmp_path_factory.mktemp("history")
    index = DocIndex.open(folder, create=True)
    live: dict[str, list[np.ndarray]] = {}
    for name, number, page_count in operations:
        path = f"/docs/{number}.pdf"
        if name in ("add", "update"):
            live[path] = [_normalised(rng, int(rng.integers(2, 9)), 8) for _ in range(page_count)]
            index.add_embeddings(path, live[path])
        elif name == "remove" and index.build is not None:
            index.remove([path])
            live.pop(path, None)
        elif name == "compact":
            index.compact()
        elif name == "reopen":
            index.close()
            index = DocIndex.open(folder)
    if not live:
        return
    query = _normalised(rng, 3, 8)
    vectors = index.vectors  # the fast mode stores bfloat16: compare with the values it holds
    assert vectors.vector_type == "bfloat16"
    stored = {
        (path, n + 1): vectors.decode(vectors.encode(page))
        for path, pages in live.items()
        for n, page in enumerate(pages)
    }
    expected = {key: float((query @ page.T).max(axis=1).sum()) for key, page in stored.items()}
    ranked = sorted(expected.items(), key=lambda item: -item[1])
    exact = index.search_embeddings(query, k=5, exact=True)
    np.testing.assert_allclose([h.score for h in exact], [score for _, score in ranked[:5]], atol=1e-4)
    assert all(abs(expected[(h.path, h.page)] - h.score) < 1e-4 for h in exact)
    fast = index.search_embeddings(query, k=5)
    assert len(fast) == min(5, len(expected))
    assert all((h.path, h.page) in expected and abs(h.score - expected[(h.path, h.page)]) < 1e-3 for h in fast)
    everything = index.search_embeddings(query, k=5, rerank=len(expected))
    assert [(h.path, h.page) for h in everything] == [(h.path, h.page) for h in exact]
