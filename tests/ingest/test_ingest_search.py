"""Ingest folders and search them through the library API, with a tiny real retriever."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.documents import make_image, make_mixed_folder, make_pdf
from helpers.stored import stored_pages

import docqa.ingest.local
from docqa import DocIndex
from docqa.errors import IndexMismatchError, IndexNotFoundError, ModelLoadError
from docqa.models.retriever import Retriever


@pytest.fixture()
def corpus(tmp_path):
    root = make_mixed_folder(tmp_path / "docs")
    return root


def _spy_encodes(index: DocIndex):
    """Count pages the retriever encodes (wraps the real method)."""
    retriever = index.retriever()
    real = retriever.encode_batch
    calls: list[int] = []

    def recording(batch):
        calls.append(len(batch["input_ids"]))
        return real(batch)

    retriever.encode_batch = recording
    return calls


def _counts(index: DocIndex) -> tuple[int, int]:
    info = index.info()
    return info.documents, info.pages


def _live_rows(index: DocIndex) -> int:
    """Vector rows that committed pages use."""
    return sum(page.vec_count for page in index.page_records())


def test_ingest_counts_pages_and_skips_unchanged(corpus, retriever_checkpoint):
    index = DocIndex.open("main", create=True)
    report = index.ingest([corpus], model=str(retriever_checkpoint), batch_size=3)
    assert (report.added, report.skipped, report.failed) == (4, 1, 0)
    assert report.pages_added == 3 + 2 + 1 + 2
    assert _counts(index) == (4, 8)
    per_doc = {r.path.split("/")[-1]: r.pages for r in index.documents()}
    assert per_doc == {"q1.pdf": 3, "q2.pdf": 2, "receipt.png": 1, "fax.tiff": 2}

    calls = _spy_encodes(index)
    again = index.ingest([corpus])
    assert (again.unchanged, again.added, again.pages_added) == (4, 0, 0)
    assert calls == []


def test_modified_file_is_reencoded_and_old_pages_are_gone(corpus, retriever_checkpoint):
    index = DocIndex.open("main", create=True)
    index.ingest([corpus], model=str(retriever_checkpoint))
    target = corpus / "reports" / "q1.pdf"
    old_pages = {page.id for page in index.page_records(index.document(target).id)}
    make_pdf(target, 5, title="q1 revised")
    calls = _spy_encodes(index)
    report = index.ingest([corpus])
    assert (report.updated, report.unchanged, report.pages_added) == (1, 3, 5)
    assert sum(calls) == 5
    remaining = {page.id for page in index.page_records()}
    assert not old_pages & remaining
    assert index.document(target).pages == 5
    hits = index.search("q1 revised page 4", k=20)
    assert {(h.path, h.page) for h in hits if h.path == str(target)} == {(str(target), n) for n in range(1, 6)}


def test_search_is_exact_maxsim_and_matches_processor_scores(corpus, retriever_checkpoint):
    index = DocIndex.open("main", create=True)
    index.ingest([corpus], model=str(retriever_checkpoint))
    query = "revenue by region"
    hits = index.search(query, k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]

    stored = stored_pages(index)
    retriever = index.retriever()
    query_vectors = retriever.encode_queries([query])[0]
    keys = list(stored)
    brute = np.array([(query_vectors @ stored[key].T).max(axis=1).sum() for key in keys])
    order = np.argsort(-brute, kind="stable")[:5]
    assert [(h.path, h.page) for h in hits] == [keys[i] for i in order]
    np.testing.assert_allclose([h.score for h in hits], brute[order], atol=1e-4)

    # Retriever.score is the processor's own score_retrieval, one page at a time.
    reference = retriever.score(query_vectors, [stored[(h.path, h.page)] for h in hits])
    np.testing.assert_allclose([h.score for h in hits], reference, atol=1e-4)


def test_remove_and_sync(corpus, retriever_checkpoint):
    index = DocIndex.open("main", create=True)
    index.ingest([corpus], model=str(retriever_checkpoint))
    removed = index.remove([corpus / "reports" / "q2.pdf", corpus / "nothing.pdf"])
    assert removed.removed == [str(corpus / "reports" / "q2.pdf")]
    assert removed.not_found == [str(corpus / "nothing.pdf")]
    assert _counts(index) == (3, 6)
    assert all("q2.pdf" not in h.path for h in index.search("q2", k=10))

    (corpus / "scans" / "receipt.png").unlink()
    report = index.ingest([corpus], sync=True)
    assert report.removed == 1 and report.added == 1  # q2.pdf comes back, receipt is gone
    assert {r.path.split("/")[-1] for r in index.documents()} == {"q1.pdf", "q2.pdf", "fax.tiff"}

    folder = index.remove([corpus / "reports"])
    assert len(folder.removed) == 2 and _counts(index) == (1, 2)


def test_bad_files_are_reported_and_good_ones_indexed(corpus, retriever_checkpoint):
    good = make_pdf(corpus / "good.pdf", 2).read_bytes()
    (corpus / "truncated.pdf").write_bytes(good[: len(good) // 3])
    (corpus / "page.pdf").write_text("<html><body>not a pdf</body></html>")
    (corpus / "empty.png").write_bytes(b"")
    (corpus / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    index = DocIndex.open("main", create=True)
    report = index.ingest([corpus], model=str(retriever_checkpoint))
    failed = {f.path.split("/")[-1]: f.error for f in report.failures}
    assert set(failed) == {"truncated.pdf", "page.pdf", "empty.png", "garbage.jpg"}
    assert "HTML" in failed["page.pdf"] and "empty" in failed["empty.png"]
    assert report.added == 5 and report.failed == 4
    assert index.info().pages == 3 + 2 + 1 + 2 + 2


def test_model_is_fixed_at_first_ingest(corpus, retriever_checkpoints):
    index = DocIndex.open("main", create=True)
    index.ingest([corpus / "scans"], model=str(retriever_checkpoints["colmodernvbert"]))
    other = DocIndex.open("main")
    with pytest.raises(IndexMismatchError, match="colmodernvbert"):
        other.ingest([corpus], model=str(retriever_checkpoints["colqwen2"]))
    assert _counts(other) == (2, 3)


def test_copied_checkpoint_with_same_config_at_a_new_path_is_refused(corpus, retriever_checkpoint, tmp_path):
    index = DocIndex.open("main", create=True)
    index.ingest([corpus / "scans"], model=str(retriever_checkpoint))
    copy = shutil.copytree(retriever_checkpoint, tmp_path / "copy")
    with pytest.raises(IndexMismatchError):
        DocIndex.open("main").ingest([corpus], model=str(copy))


def test_unloadable_model_fails_before_any_work(corpus, tmp_path):
    index = DocIndex.open("main", create=True)
    with pytest.raises(ModelLoadError, match="no-such-model"):
        index.ingest([corpus], model=str(tmp_path / "no-such-model"))
    assert not index.path.exists()  # the new, still empty index is removed again
    with pytest.raises(IndexNotFoundError):
        DocIndex.open("main")


@pytest.mark.parametrize("family", ["colqwen2", "colpali"])
def test_other_retriever_families_ingest_and_search(corpus, retriever_checkpoints, family):
    index = DocIndex.open(family, create=True)
    report = index.ingest([corpus / "scans"], model=str(retriever_checkpoints[family]))
    assert report.added == 2 and report.pages_added == 3
    hits = index.search("receipt", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[-1].score
    assert index.info().model == str(retriever_checkpoints[family])


def test_sync_keeps_files_with_undecodable_names(tmp_path, retriever_checkpoint):
    import os

    folder = tmp_path / "docs"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    make_image(tmp_path / "plain.png").rename(os.fsdecode(raw))
    index = DocIndex.open("main", create=True)
    assert index.ingest([folder], model=str(retriever_checkpoint)).added == 1
    again = index.ingest([folder], sync=True)
    assert (again.removed, again.unchanged) == (0, 1)
    (hit,) = index.search("cafe", k=1)
    assert hit.file == Path(os.fsdecode(raw)) and "\\xe9" in hit.path


def test_updates_are_compacted_and_open_readers_keep_working(corpus, retriever_checkpoint, tmp_path):
    writer = DocIndex.open("main", create=True)
    writer.ingest([corpus], model=str(retriever_checkpoint))
    reader = DocIndex.open("main")
    before = {(h.path, h.page): h.score for h in reader.search("revenue", k=8)}
    first_file = writer.vectors.path.name

    make_pdf(corpus / "reports" / "q1.pdf", 2, title="q1 shorter")  # 3 of 8 pages' rows become garbage
    writer.ingest([corpus])
    rows = sorted((page.vec_offset, page.vec_offset + page.vec_count) for page in writer.page_records())
    assert writer.vectors.path.name != first_file and not (writer.path / first_file).exists()
    assert rows[0][0] == 0 and all(start == end for (_, end), (start, _) in zip(rows, rows[1:]))
    assert rows[-1][1] == writer.vectors.rows  # every vector row belongs to a committed page

    after = {(h.path, h.page): h.score for h in reader.search("revenue", k=7)}  # reader opened before
    fresh = {(h.path, h.page): h.score for h in DocIndex.open("main").search("revenue", k=7)}
    assert after.keys() == fresh.keys() and all(abs(after[key] - fresh[key]) < 1e-4 for key in fresh)
    unchanged = [key for key in before if "q1.pdf" not in key[0]]
    assert all(abs(fresh[key] - before[key]) < 1e-4 for key in unchanged)


def test_compact_reclaims_rows_of_removed_documents(corpus, retriever_checkpoint):
    index = DocIndex.open("main", create=True)
    index.ingest([corpus], model=str(retriever_checkpoint))
    index.remove([corpus / "reports" / "q2.pdf"])  # 2 of 8 pages, mid-file: not over the 25% threshold
    garbage = index.vectors.rows - _live_rows(index)
    assert garbage > 0
    assert index.compact() == garbage and index.vectors.rows == _live_rows(index)
    assert index.compact() == 0
    assert len(index.search("q2", k=10)) == 6


def test_rendering_stays_a_bounded_number_of_pages_ahead_of_encoding(tmp_path, retriever_checkpoint, monkeypatch):
    """A long PDF is never rendered (or preprocessed) whole ahead of a slow model: the pages in flight
    between poppler and the store are bounded by the queues, whatever the document's length."""
    rendered = [0]
    real_render = docqa.ingest.local.render_pages

    def counting(*args, **kwargs):
        for page in real_render(*args, **kwargs):
            rendered[0] += 1
            yield page

    monkeypatch.setattr(docqa.ingest.local, "render_pages", counting)
    index = DocIndex.open("long", create=True)
    pdf = make_pdf(tmp_path / "long.pdf", 60)
    ahead: list[int] = []
    encoded = [0]
    real_encode = Retriever.encode_batch

    def slow_encode(self, batch):
        time.sleep(0.1)  # a model slower than poppler, as every real one is on a CPU
        ahead.append(rendered[0] - encoded[0])
        encoded[0] += len(batch["input_ids"])
        return real_encode(self, batch)

    monkeypatch.setattr(Retriever, "encode_batch", slow_encode)
    report = index.ingest([pdf], model=str(retriever_checkpoint), image_edge=128, batch_size=2, chunk_pages=2)
    assert report.pages_added == 60
    # render queue (2 x batch) + a chunk + a batch being built + one queued + one blocked + one encoding
    assert max(ahead) <= 2 * 2 + 2 + 2 + 2 + 2 + 2 + 1, ahead


def _stall_from_page(monkeypatch, first_stalled: int) -> list[bool]:
    """Make poppler time out on every chunk from page `first_stalled` on, while the returned flag is
    set (clear it to let the file render again)."""
    from pdf2image.exceptions import PDFPopplerTimeoutError

    from docqa.inputs import render

    stalling = [True]
    real = render.convert_from_path

    def stalls(pdf_path, **kwargs):
        if stalling[0] and kwargs["first_page"] >= first_stalled:
            raise PDFPopplerTimeoutError("stalled")
        return real(pdf_path, **kwargs)

    monkeypatch.setattr(render, "convert_from_path", stalls)
    return stalling


def test_a_long_pdf_that_fails_partway_resumes_from_its_checkpoint(tmp_path, retriever_checkpoint, monkeypatch):
    """A render timeout at page 7 of 12 keeps pages 1-6, unsearchable, as a checkpoint (moved along
    by a compaction); the re-run encodes only pages 7-12, and the index equals a fresh ingest's."""
    docs = tmp_path / "docs"
    pdf = make_pdf(docs / "long.pdf", 12, title="long")
    short = make_image(docs / "a-short.png", text="short")  # first: its rows come before the checkpoint's
    settings = {"batch_size": 2, "chunk_pages": 2}
    stalling = _stall_from_page(monkeypatch, 7)
    index = DocIndex.open("main", create=True)
    report = index.ingest([docs], model=str(retriever_checkpoint), **settings)
    ((failure),) = report.failures
    assert "took longer than" in failure.error and "6 encoded pages are kept" in failure.error
    assert index.checkpointed_pages(pdf) == 6 and index.store.counts() == (1, 1)
    assert {hit.path for hit in index.search("long", k=20)} == {str(short)}

    index.remove([short])
    index.compact()
    assert index.store.vector_epoch() == 1  # compacted: a-short.png's rows went, the checkpoint's moved
    stalling[0] = False
    calls = _spy_encodes(index)
    again = index.ingest([docs], **settings)
    assert again.resumed == [(str(pdf), 6)] and (again.pages_resumed, again.pages_added) == (6, 13)
    assert sum(calls) == 6 + 1 and again.failed == 0
    assert index.checkpointed_pages(pdf) == 0 and index.store.checkpoint_rows() == 0

    fresh = DocIndex.open("fresh", create=True)
    fresh.ingest([docs], model=str(retriever_checkpoint), **settings)
    resumed, expected = stored_pages(index), stored_pages(fresh)
    assert resumed.keys() == expected.keys() and len(resumed) == 13
    for key, vectors in expected.items():
        np.testing.assert_allclose(resumed[key], vectors, atol=1e-4)
    assert index.vectors.rows == index.store.vector_rows()  # nothing left over
