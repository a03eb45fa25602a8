"""Bring-your-own embeddings (add_embeddings / search_embeddings), exact mode and filters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.documents import make_image, make_pdf

from docqa import DocIndex
from docqa.errors import IndexMismatchError, ModelRequiredError, QueryError

DIM = 16


def _unit(rng: np.random.Generator, rows: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _reference(index: DocIndex, query: np.ndarray, k: int, keep=lambda path, metadata: True) -> list[tuple[str, int]]:
    """Brute-force MaxSim over every stored page, straight from the page records and the vector file."""
    paths = {document.id: document.path for document in index.documents()}
    tags = {listed["path"]: listed["tags"] for listed in index.list_documents()}
    scored = []
    for record in index.page_records():
        path = paths[record.document_id]
        if keep(path, tags[path]):
            page = index.vectors.read([record.vec_offset], [record.vec_count])[0]
            scored.append((-float((query @ page.T).max(axis=1).sum()), record.id, path, record.number))
    return [(path, number) for _, _, path, number in sorted(scored)[:k]]


@pytest.fixture()
def filled(tmp_path):
    rng = np.random.default_rng(3)
    index = DocIndex.open(tmp_path / "emb", create=True)
    for number in range(30):
        pages = [_unit(rng, int(rng.integers(2, 12))) for _ in range(int(rng.integers(1, 4)))]
        index.add_embeddings(
            f"/corpus/{'a' if number % 3 else 'b'}/doc{number}.pdf",
            pages,
            metadata={"year": str(2020 + number % 4), "team": "x" if number % 2 else "y"},
        )
    return index, rng


def test_first_add_fixes_dim_and_records_no_model(filled, tmp_path):
    index, rng = filled
    assert index.build.encoder is None and index.dim == DIM
    assert index.info().model is None
    with pytest.raises(IndexMismatchError):
        index.add_embeddings("/x.pdf", [_unit(rng, 3, DIM + 1)])
    with pytest.raises(ModelRequiredError, match="search_embeddings"):
        index.search("revenue")
    with pytest.raises(ModelRequiredError):
        index.ingest([tmp_path])  # a real folder: a missing path alone is refused before the model


@pytest.mark.parametrize("exact", [False, True])
def test_search_embeddings_equals_brute_force(filled, exact):
    index, rng = filled
    for _ in range(10):
        query = _unit(rng, int(rng.integers(1, 8)))
        hits = index.search_embeddings(query, k=7, exact=exact)
        assert [(hit.path, hit.page) for hit in hits] == _reference(index, query, 7)
        assert [hit.rank for hit in hits] == list(range(1, 8))
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_filters_return_only_matching_pages_and_k_of_them(filled):
    index, rng = filled
    query = _unit(rng, 5)
    cases = [
        ({"year": "2021"}, None, lambda p, m: m["year"] == "2021"),
        ({"year": "2021", "team": "x"}, None, lambda p, m: m["year"] == "2021" and m["team"] == "x"),
        ({}, "/corpus/b/*", lambda p, m: p.startswith("/corpus/b/")),
        ({"team": "y"}, "*/a/*", lambda p, m: m["team"] == "y" and "/a/" in p),
        ({"year": "1999"}, None, lambda p, m: False),
    ]
    for where, glob, keep in cases:
        expected = _reference(index, query, 1000, keep)
        for k in (1, 4, 100):
            hits = index.search_embeddings(query, k=k, where=where, path=glob)
            assert [(hit.path, hit.page) for hit in hits] == expected[:k]


def test_replacing_and_removing_documents(filled):
    index, rng = filled
    target = _unit(rng, 4)
    index.add_embeddings("/corpus/a/doc1.pdf", [target, _unit(rng, 3)], metadata={"year": "1999"})
    hits = index.search_embeddings(target, k=1)
    assert (hits[0].path, hits[0].page) == ("/corpus/a/doc1.pdf", 1)
    assert [h.path for h in index.search_embeddings(target, k=50, where={"year": "1999"})] == ["/corpus/a/doc1.pdf"] * 2
    index.remove(["/corpus/a/doc1.pdf"])
    assert all(hit.path != "/corpus/a/doc1.pdf" for hit in index.search_embeddings(target, k=100))


def test_bad_queries_and_inputs_are_refused(filled):
    index, rng = filled
    with pytest.raises(QueryError):
        index.search_embeddings(np.zeros((0, DIM)))
    with pytest.raises(QueryError):
        index.search_embeddings(_unit(rng, 2, DIM + 2))
    with pytest.raises(QueryError):
        index.search_embeddings(_unit(rng, 2), where={'bad"key': "1"})
    with pytest.raises(ValueError):
        index.add_embeddings("/y.pdf", [])
    with pytest.raises(ValueError):
        index.add_embeddings("/y.pdf", [np.full((2, DIM), np.nan)])


def test_ingest_tags_filter_search_and_survive_updates(tmp_path, retriever_checkpoint):
    docs = tmp_path / "docs"
    make_pdf(docs / "2023" / "report.pdf", 2, title="report")
    make_image(docs / "2024" / "scan.png", text="scan")
    index = DocIndex.open("tagged", create=True)
    index.ingest([docs / "2023"], model=str(retriever_checkpoint), tags={"year": "2023", "kind": "report"})
    index.ingest([docs / "2024"], tags={"year": "2024"})
    only_2023 = index.search("report", k=10, where={"year": "2023"})
    assert {hit.path for hit in only_2023} == {str(docs / "2023" / "report.pdf")} and len(only_2023) == 2
    assert [hit.path for hit in index.search("report", k=10, path="*/2024/*")] == [str(docs / "2024" / "scan.png")]
    assert index.search("report", k=10, where={"year": "2023", "kind": "scan"}) == []
    # an unchanged file takes new tags without re-encoding; a changed one keeps its old tags
    index.ingest([docs / "2024"], tags={"team": "ops"})
    assert len(index.search("scan", k=10, where={"year": "2024", "team": "ops"})) == 1
    make_pdf(docs / "2023" / "report.pdf", 3, title="revised")
    index.ingest([docs / "2023"])
    assert len(index.search("report", k=10, where={"kind": "report"})) == 3
    exact = index.search("report", k=3, exact=True)
    assert [(h.page_id, round(h.score, 4)) for h in exact] == [
        (h.page_id, round(h.score, 4)) for h in index.search("report", k=3)
    ]


def test_index_options_are_fixed_at_creation_and_pooling_shrinks_pages(tmp_path):
    from docqa.errors import OptionsError

    rng = np.random.default_rng(5)
    pooled = DocIndex.open(tmp_path / "pooled", create=True, options={"pool_factor": 3})
    pages = [_unit(rng, 30), _unit(rng, 7)]
    pooled.add_embeddings("/a.pdf", pages)
    counts = [page.vec_count for page in pooled.page_records()]  # one document's pages, in order
    assert counts == [10, 2]  # about 1/3 as many vectors
    assert pooled.info().to_json()["options"] == {"mode": "fast", "pool_factor": 3, "vector_type": "bfloat16"}
    hits = pooled.search_embeddings(pages[0][:4], k=2, exact=True)
    assert (hits[0].path, hits[0].page) == ("/a.pdf", 1)
    with pytest.raises(IndexMismatchError, match="pool_factor"):
        DocIndex.open(tmp_path / "pooled", options={"pool_factor": 2})
    assert DocIndex.open(tmp_path / "pooled", options={"pool_factor": 3}).options.pool_factor == 3
    with pytest.raises(OptionsError):
        DocIndex.open(tmp_path / "other", create=True, options={"mode": "approximate"})

    exact_mode = DocIndex.open(tmp_path / "exact", create=True, options={"mode": "exact"})
    exact_mode.add_embeddings("/b.pdf", pages)
    assert exact_mode.search_embeddings(pages[1], k=1)[0].page == 2
    assert not (tmp_path / "exact" / "candidates.npz").exists()
    assert exact_mode.options.vector_type == "float16" and (tmp_path / "exact" / "vectors.f16").exists()


def test_vector_types_store_what_they_say(tmp_path):
    """float16 and bfloat16 indexes hold their values rounded to that type (exact search scores
    them so); an index built before vector types existed opens as the float16 it holds."""
    rng = np.random.default_rng(8)
    pages = [_unit(rng, 12) for _ in range(3)]
    query = _unit(rng, 4)
    best = {}
    for vector_type, dtype_bits in (("float16", 11), ("bfloat16", 8)):
        index = DocIndex.open(tmp_path / vector_type, create=True, options={"vector_type": vector_type})
        index.add_embeddings("/a.pdf", pages)
        stored = index.vectors.read([0], [36])[0]
        error = np.abs(stored - np.concatenate(pages)).max()
        assert 0 < error <= 2.0**-dtype_bits  # rounded to nearest: half a unit in the last place of values < 1
        best[vector_type] = index.search_embeddings(query, k=1, exact=True)[0]
        expected = max(float((query @ stored[n * 12 : (n + 1) * 12].T).max(axis=1).sum()) for n in range(3))
        assert abs(best[vector_type].score - expected) < 1e-5

    legacy = tmp_path / "float16"  # made to look like an index from before vector types
    store = DocIndex.open(legacy).store  # writing the stamp such an index stored, raw, is the point
    build = json.loads(store.get_meta("build"))
    del build["options"]["vector_type"]
    with store.transaction():
        store.set_meta("build", json.dumps(build))
    index = DocIndex.open(legacy)
    assert index.options.vector_type == "float16"
    assert index.search_embeddings(query, k=1, exact=True)[0] == best["float16"]
    with pytest.raises(IndexMismatchError, match="vector_type"):
        DocIndex.open(legacy, options={"vector_type": "bfloat16"})


def test_cli_refuses_other_index_options(tmp_path, retriever_checkpoint, capsys):
    from docqa.cli.main import main

    make_image(tmp_path / "docs" / "a.png", text="a")
    model = str(retriever_checkpoint)
    assert main(["ingest", str(tmp_path / "docs"), "--model", model, "--pool-factor", "2", "--json"]) == 0
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "docs"), "--index-mode", "exact"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index options" in err
    assert main(["ingest", str(tmp_path / "docs"), "--pool-factor", "2"]) == 0
    assert main(["info", "--json"]) == 0
    assert '"pool_factor": 2' in capsys.readouterr().out


def test_replacing_documents_compacts_within_one_bulk_session(tmp_path):
    """The garbage count is kept in memory during a write session (a SUM over every page per add
    was the slowest query at 100k pages): replacing most documents still compacts the vector file."""
    rng = np.random.default_rng(9)
    index = DocIndex.open(tmp_path / "bulk", create=True)
    with index.bulk():
        for n in range(8):
            index.add_embeddings(f"/{n}.pdf", [_unit(rng, 10)])
        assert index.vectors.path.name == "vectors.bf16"
        for n in range(3):  # 30 of 80 rows become garbage: over a quarter
            index.add_embeddings(f"/{n}.pdf", [_unit(rng, 10)])
        assert index.vectors.path.name == "vectors.1.bf16" and index.vectors.rows == 80
    assert len(index.search_embeddings(_unit(rng, 3), k=20, exact=True)) == 8
