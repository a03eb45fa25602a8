"""kill -9 during ingest at 28 points across walking, hashing, rendering, encoding, storing,
checkpointing, and training, logging and saving the candidate stage. After each kill: the index
opens; every page has its vectors and every vector row belongs to a committed or a checkpointed
page; no partial document is visible; re-running the same ingest completes (resuming from the
checkpoints); and the result equals an uninterrupted run's."""

from __future__ import annotations

import json
import sqlite3
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers.crash_harness import KillPoint, in_child, single_threaded
from helpers.documents import make_image, make_pdf, make_tiff

# checkpoint_s=0: every unfinished document is checkpointed after every batch, so kills land between
# checkpoints, inside them and after them.
SETTINGS = {"batch_size": 2, "chunk_pages": 2, "image_edge": 512, "checkpoint_s": 0}

KILL_POINTS = [
    KillPoint("docqa.inputs.sources", "classify", 1, "before", "walk"),
    KillPoint("docqa.inputs.sources", "classify", 3, "after", "walk"),
    KillPoint("docqa.inputs.sources", "sha256_of", 1, "before", "hash"),
    KillPoint("docqa.inputs.sources", "sha256_of", 4, "after", "hash"),
    KillPoint("docqa.ingest.plan", "count_pages", 2, "before", "walk"),
    KillPoint("docqa.inputs.render", "convert_from_path", 1, "before", "render"),
    KillPoint("docqa.inputs.render", "convert_from_path", 3, "after", "render"),
    KillPoint("docqa.models.retriever", "Retriever.encode_batch", 1, "before", "encode"),
    KillPoint("docqa.models.retriever", "Retriever.encode_batch", 2, "after", "encode"),
    KillPoint("docqa.models.retriever", "Retriever.encode_batch", 4, "before", "encode"),
    KillPoint("docqa.index.vectors", "VectorFile.append", 1, "after", "store"),
    KillPoint("docqa.index.vectors", "VectorFile.append", 6, "before", "store"),
    KillPoint("docqa.index.vectors", "VectorFile.sync", 1, "after", "store"),
    KillPoint("docqa.index.vectors", "VectorFile.sync", 3, "before", "store"),
    KillPoint("docqa.index.store", "Store.put_document", 1, "after", "store"),  # inside the transaction
    KillPoint("docqa.index.store", "Store.put_checkpoint", 1, "before", "checkpoint"),  # vectors synced
    KillPoint("docqa.index.store", "Store.put_checkpoint", 2, "after", "checkpoint"),  # inside the transaction
    KillPoint("docqa.index.storage", "IndexStorage.checkpoint", 2, "after", "checkpoint"),  # all of a, b not yet
    KillPoint("docqa.index.storage", "IndexStorage.checkpoint", 4, "after", "checkpoint"),  # b's second
    KillPoint("docqa.index.store", "Store.put_document", 3, "before", "store"),
    KillPoint("docqa.index.candidate_stage", "CandidateStage.add_committed", 1, "before", "store"),  # just committed
    KillPoint("docqa.index.candidate_stage", "CandidateStage.add_committed", 4, "before", "store"),  # after training
    KillPoint("docqa.index.candidates", "Codebook.train", 1, "after", "train"),
    KillPoint("docqa.index.candidates", "CandidateIndex.log", 1, "after", "log"),
    KillPoint("docqa.index.candidates", "CandidateIndex.rebuild", 2, "after", "save"),
    KillPoint("docqa.index.candidates", "np.savez", 1, "after", "save"),  # temp file written, not renamed
    KillPoint("docqa.files", "os.replace", 1, "after", "save"),  # new empty log, old postings
    KillPoint("docqa.files", "os.replace", 4, "after", "save"),
]
# The tiny corpus has 11 pages: train the candidate stage from 4 pages, assign cells a page at a time
# and fold the tail after 2, so that training, logging and saving all happen (and get killed) during
# the runs below.
TINY_CANDIDATE_STAGE = {"TRAIN_MIN_PAGES": 4, "TAIL_MERGE_PAGES": 2}


def _child_setup() -> None:
    from docqa.index import candidate_stage, candidates

    single_threaded()
    for name, value in TINY_CANDIDATE_STAGE.items():
        setattr(candidates, name, value)
    candidate_stage.ASSIGN_BATCH_PAGES = 1


def _ingest(index_dir: Path, corpus: Path, model: str) -> dict:
    from docqa.api import DocIndex

    return DocIndex.open(index_dir, create=True).ingest([corpus], model=model, **SETTINGS).to_json()


def _raw_invariants(index_dir: Path) -> dict:
    """What a crashed writer left, read before anything repairs it."""
    # Raw SQLite on purpose: DocIndex.open would repair first, and the torn state is what is checked.
    db = sqlite3.connect(index_dir / "docqa.db")
    build = db.execute("SELECT value FROM meta WHERE key = 'build'").fetchone()
    dim = json.loads(build[0])["encoder"]["dim"] if build else 1
    vector_file = index_dir / "vectors.bf16"  # the default fast mode stores bfloat16
    rows = vector_file.stat().st_size // (2 * dim) if vector_file.exists() else 0
    pages = db.execute("SELECT document_id, number, vec_offset, vec_count FROM pages").fetchall()
    documents = db.execute("SELECT id, pages FROM documents").fetchall()
    saved = db.execute("SELECT path_key, number, vec_offset, vec_count FROM checkpoint_pages").fetchall()
    numbers: dict[int, list[int]] = {}
    for document_id, number, _, _ in pages:
        numbers.setdefault(document_id, []).append(number)
    saved_numbers: dict[bytes, list[int]] = {}
    for key, number, _, _ in saved:
        saved_numbers.setdefault(key, []).append(number)
    return {
        "pages_have_vectors": all(offset + count <= rows and count > 0 for _, _, offset, count in [*pages, *saved]),
        "whole_documents": all(sorted(numbers.get(doc, [])) == list(range(1, n + 1)) for doc, n in documents),
        "checkpoints_from_page_1": all(sorted(n) == list(range(1, len(n) + 1)) for n in saved_numbers.values()),
    }


def _state(index_dir: Path) -> dict:
    """Open the index as a reader would and describe it: coverage of vector rows, and the score of
    every page for fixed random queries through the candidate stage (reranking every page) and by
    brute force."""
    from docqa.api import DocIndex
    from docqa.index.search import brute_force_top_k, two_stage_top_k

    index = DocIndex.open(index_dir)
    documents = [(d.path, d.sha256, d.pages) for d in index.documents()]
    if index.build is None:
        return {"documents": documents, "covered": True, "scores": []}
    table, _, _, _ = index.store.snapshot()  # the page table readers search: what the candidate stage must hold
    vectors = index.vectors
    candidates = index.storage.candidate_stage.caught_up(table, vectors)
    saved = index.store.checkpoint_table()  # rows kept for a resume are owned too
    order = np.argsort(np.concatenate([table.offsets, saved.offsets]), kind="stable")
    offsets = np.concatenate([table.offsets, saved.offsets])[order]
    ends = offsets + np.concatenate([table.counts, saved.counts])[order]
    covered = bool(
        len(offsets) == 0 or (offsets[0] == 0 and np.all(offsets[1:] == ends[:-1]) and ends[-1] == vectors.rows)
    )
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(3):
        query = rng.standard_normal((6, vectors.dim)).astype(np.float32)
        exact = brute_force_top_k(query, len(table), table, vectors)
        if candidates is not None:
            staged = two_stage_top_k(query, len(table), table, candidates, vectors, rerank=len(table))
            assert [h.page_id for h in staged] == [h.page_id for h in exact]
            assert np.isfinite(candidates.approximate_scores(query, table.page_ids)).all()
        pages = {h.page_id: index.page(h.page_id) for h in exact}
        scores.append({(pages[h.page_id].path, pages[h.page_id].page): h.score for h in exact})
    return {
        "documents": documents,
        "covered": covered,
        "scores": scores,
        "trained": candidates is not None,
        "checkpointed": index.store.checkpoint_rows() > 0,
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash-corpus")
    make_pdf(root / "a.pdf", 3, title="alpha")
    make_pdf(root / "b.pdf", 5, title="beta")
    make_image(root / "c.png", text="gamma")
    make_tiff(root / "d.tiff", 2)
    return root


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory, retriever_checkpoints) -> dict:
    index_dir = tmp_path_factory.mktemp("reference") / "index"
    model = str(retriever_checkpoints["colmodernvbert"])
    run = in_child(partial(_ingest, index_dir, corpus, model), before=_child_setup)
    assert run.exit_code == 0 and run.value["documents"]["added"] == 4
    state = in_child(partial(_state, index_dir), before=_child_setup).value
    assert state["trained"]
    return state


@pytest.mark.parametrize("point", KILL_POINTS, ids=str)
def test_kill_9_never_corrupts_the_index(point, corpus, reference, tmp_path, retriever_checkpoints):
    index_dir = tmp_path / "index"
    model = str(retriever_checkpoints["colmodernvbert"])

    crashed = in_child(partial(_ingest, index_dir, corpus, model), kill=point, before=_child_setup)
    assert crashed.killed, f"{point} was never reached"

    raw = in_child(partial(_raw_invariants, index_dir)).value
    assert raw == {"pages_have_vectors": True, "whole_documents": True, "checkpoints_from_page_1": True}
    after_crash = in_child(partial(_state, index_dir), before=_child_setup).value
    assert after_crash["covered"], "vector rows that no committed page owns survived reopening"
    committed = {path for path, _, _ in after_crash["documents"]}
    for scores in after_crash["scores"]:
        assert {path for path, _ in scores} == committed  # search sees exactly the committed documents

    rerun = in_child(partial(_ingest, index_dir, corpus, model), before=_child_setup)
    assert rerun.exit_code == 0 and rerun.value["documents"]["failed"] == 0
    final = in_child(partial(_state, index_dir), before=_child_setup).value
    assert final["documents"] == reference["documents"]
    assert final["covered"] and not final["checkpointed"]  # every checkpoint was taken up by its document
    for got, expected in zip(final["scores"], reference["scores"]):
        assert got.keys() == expected.keys()
        np.testing.assert_allclose([got[key] for key in expected], list(expected.values()), atol=1e-3)


def _ingest_counting(index_dir: Path, corpus: Path, model: str) -> dict:
    """_ingest, also counting the pages the retriever encodes."""
    from docqa.models.retriever import Retriever

    encoded = [0]
    real = Retriever.encode_batch

    def counting(self, batch):
        encoded[0] += len(batch["input_ids"])
        return real(self, batch)

    Retriever.encode_batch = counting  # in the child only
    return {**_ingest(index_dir, corpus, model), "encoded": encoded[0]}


def test_kill_9_mid_document_then_a_rerun_resumes_from_the_checkpoints(
    corpus, reference, tmp_path, retriever_checkpoints
):
    """Killed right after b.pdf's first page was checkpointed, with all of a.pdf checkpointed but not
    yet committed: search sees none of their pages, and the re-run encodes only the pages no
    checkpoint kept (a.pdf: none), with the same result as an uninterrupted run."""
    index_dir = tmp_path / "index"
    model = str(retriever_checkpoints["colmodernvbert"])
    point = KillPoint("docqa.index.storage", "IndexStorage.checkpoint", 3, "after", "checkpoint")
    assert in_child(partial(_ingest, index_dir, corpus, model), kill=point, before=_child_setup).killed

    after_crash = in_child(partial(_state, index_dir), before=_child_setup).value
    assert after_crash["documents"] == [] and after_crash["scores"] == [{}, {}, {}]
    assert after_crash["checkpointed"] and after_crash["covered"]

    rerun = in_child(partial(_ingest_counting, index_dir, corpus, model), before=_child_setup).value
    assert rerun["resumed"] == [
        {"path": str(corpus / "a.pdf"), "pages": 3},
        {"path": str(corpus / "b.pdf"), "pages": 1},
    ]
    assert rerun["pages_resumed"] == 4 and rerun["pages_added"] == 11 and rerun["encoded"] == 11 - 4
    final = in_child(partial(_state, index_dir), before=_child_setup).value
    assert final["documents"] == reference["documents"] and final["covered"] and not final["checkpointed"]
    for got, expected in zip(final["scores"], reference["scores"]):
        assert got.keys() == expected.keys()
        np.testing.assert_allclose([got[key] for key in expected], list(expected.values()), atol=1e-3)


COMPACTION_KILL_POINTS = [
    KillPoint("docqa.index.storage", "IndexStorage.compact", 1, "before", "compact"),
    KillPoint("docqa.index.store", "Store.set_offsets", 1, "before", "compact"),  # new file written
    KillPoint("docqa.index.store", "Store.set_offsets", 1, "after", "compact"),  # inside the transaction
    KillPoint("docqa.index.candidate_stage", "CandidateStage.save", 1, "before", "compact"),  # switched
]


def _rewrite_b(corpus: Path) -> None:
    make_pdf(corpus / "b.pdf", 4, title="beta revised")


@pytest.fixture(scope="module")
def revised_reference(tmp_path_factory, retriever_checkpoints) -> tuple[Path, dict]:
    """An uninterrupted run over the corpus, then over it with b.pdf rewritten (which compacts)."""
    root = tmp_path_factory.mktemp("revised")
    corpus = root / "corpus"
    make_pdf(corpus / "a.pdf", 3, title="alpha")
    make_pdf(corpus / "b.pdf", 5, title="beta")
    make_image(corpus / "c.png", text="gamma")
    model = str(retriever_checkpoints["colmodernvbert"])
    index_dir = root / "index"
    assert in_child(partial(_ingest, index_dir, corpus, model), before=_child_setup).exit_code == 0
    _rewrite_b(corpus)
    assert in_child(partial(_ingest, index_dir, corpus, model), before=_child_setup).exit_code == 0
    return corpus, in_child(partial(_state, index_dir), before=_child_setup).value


@pytest.mark.parametrize("point", COMPACTION_KILL_POINTS, ids=str)
def test_kill_9_during_compaction(point, revised_reference, tmp_path, retriever_checkpoints):
    """An update that frees over a quarter of the vector rows compacts the vector file into a new
    one; a kill anywhere in that leaves either the old file or the new one in charge, whole."""
    revised_corpus, reference = revised_reference
    corpus = tmp_path / "corpus"
    make_pdf(corpus / "a.pdf", 3, title="alpha")
    make_pdf(corpus / "b.pdf", 5, title="beta")
    make_image(corpus / "c.png", text="gamma")
    index_dir = tmp_path / "index"
    model = str(retriever_checkpoints["colmodernvbert"])
    assert in_child(partial(_ingest, index_dir, corpus, model), before=_child_setup).exit_code == 0
    _rewrite_b(corpus)

    crashed = in_child(partial(_ingest, index_dir, corpus, model), kill=point, before=_child_setup)
    assert crashed.killed, f"{point} was never reached"
    assert in_child(partial(_raw_invariants, index_dir)).value == {
        "pages_have_vectors": True,
        "whole_documents": True,
        "checkpoints_from_page_1": True,
    }
    after_crash = in_child(partial(_state, index_dir), before=_child_setup).value
    assert {Path(path).name for path, _, _ in after_crash["documents"]} == {"a.pdf", "b.pdf", "c.png"}
    assert after_crash["covered"]

    rerun = in_child(partial(_ingest, index_dir, corpus, model), before=_child_setup)
    assert rerun.exit_code == 0
    final = in_child(partial(_state, index_dir), before=_child_setup).value
    assert len(list(index_dir.glob("vectors*f16"))) == 1
    relocate = {str(revised_corpus / name): str(corpus / name) for name in ("a.pdf", "b.pdf", "c.png")}
    # The files are regenerated here (reportlab stamps each PDF with its own date and id), so
    # compare names and page counts, and the scores of every page, not the content hashes.
    assert [(p, n) for p, _, n in final["documents"]] == [(relocate[p], n) for p, _, n in reference["documents"]]
    for got, expected in zip(final["scores"], reference["scores"]):
        assert {(relocate[p], n) for p, n in expected} == got.keys()
        np.testing.assert_allclose([got[(relocate[p], n)] for p, n in expected], list(expected.values()), atol=1e-3)
