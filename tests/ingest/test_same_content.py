"""The same content under several paths: a file identical (sha256) to an indexed one is encoded once
and kept as another path (an alias) of its document, through ingest, search, list, remove, --sync,
the CLI, the server and an index made before aliases existed; with a tiny real retriever."""

from __future__ import annotations

import json
import shutil
import sqlite3
from functools import partial
from pathlib import Path

import pytest
from helpers.crash_harness import KillPoint, in_child, single_threaded
from helpers.documents import make_pdf

from docqa import DocIndex
from docqa.cli.main import main
from docqa.models.retriever import Retriever


@pytest.fixture()
def docs(tmp_path) -> Path:
    """a.pdf (3 pages), b.pdf (2 pages) and uploads/a copy.pdf, byte for byte a.pdf."""
    root = tmp_path / "docs"
    make_pdf(root / "a.pdf", 3, title="alpha")
    make_pdf(root / "b.pdf", 2, title="beta")
    (root / "uploads").mkdir()
    shutil.copy(root / "a.pdf", root / "uploads" / "a copy.pdf")
    return root


@pytest.fixture()
def encoded(monkeypatch) -> list[int]:
    """The pages the retriever encodes, batch by batch (wraps the real method)."""
    calls: list[int] = []
    real = Retriever.encode_batch

    def counting(self, batch):
        calls.append(len(batch["input_ids"]))
        return real(self, batch)

    monkeypatch.setattr(Retriever, "encode_batch", counting)
    return calls


def _ingest(docs: Path, model: Path, **settings) -> tuple[DocIndex, dict]:
    index = DocIndex.open("main", create=True)
    return index, index.ingest([docs], model=str(model), **settings).to_json()


def _also_at(index: DocIndex) -> dict[str, list[str]]:
    return {Path(d["path"]).name: [Path(p).name for p in d["also_at"]] for d in index.list_documents()}


def test_two_paths_with_one_content_are_one_document_encoded_once(docs, retriever_checkpoint, encoded):
    index, report = _ingest(docs, retriever_checkpoint)
    assert report["documents"]["added"] == 2 and report["documents"]["duplicates"] == 1
    assert report["duplicates"] == [{"path": str(docs / "uploads" / "a copy.pdf"), "same_as": str(docs / "a.pdf")}]
    assert sum(encoded) == report["pages_added"] == 3 + 2  # the copy's 3 pages are not encoded again
    assert index.counts() == (2, 5)
    assert _also_at(index) == {"a.pdf": ["a copy.pdf"], "b.pdf": []}
    assert [alias.path for alias in index.aliases()] == [str(docs / "uploads" / "a copy.pdf")]

    hits = index.search("alpha", k=5)
    assert {hit.path: hit.also_at for hit in hits} == {
        str(docs / "a.pdf"): (str(docs / "uploads" / "a copy.pdf"),),
        str(docs / "b.pdf"): (),
    }
    assert all(hit.to_json()["also_at"] == list(hit.also_at) for hit in hits)
    # a path filter matches a document through its alias's path too
    assert {hit.path for hit in index.search("alpha", k=5, path="*/uploads/*")} == {str(docs / "a.pdf")}
    assert [d["path"] for d in index.list_documents(path="*/uploads/*")] == [str(docs / "a.pdf")]

    encoded.clear()
    again = index.ingest([docs]).to_json()
    assert again["documents"]["unchanged"] == 3 and again["documents"]["duplicates"] == 0 and encoded == []


def test_a_copy_made_after_indexing_is_kept_without_encoding_and_shares_the_tags(
    tmp_path, retriever_checkpoint, encoded
):
    root = tmp_path / "docs"
    make_pdf(root / "a.pdf", 3, title="alpha")
    index, _ = _ingest(root, retriever_checkpoint, tags={"team": "x"})
    pages = [page.id for page in index.page_records()]
    shutil.copy(root / "a.pdf", root / "a2.pdf")
    encoded.clear()
    report = index.ingest([root / "a2.pdf"], tags={"year": "2026"}).to_json()
    assert encoded == [] and report["pages_added"] == 0 and report["documents"]["duplicates"] == 1
    assert [page.id for page in index.page_records()] == pages
    (listed,) = index.list_documents()
    assert listed["also_at"] == [str(root / "a2.pdf")]
    assert listed["tags"] == {"team": "x", "year": "2026"}  # an alias's tags are its document's
    assert index.list_documents(where={"year": "2026"}) == [listed]


def test_remove_one_path_keeps_the_other_searchable(docs, retriever_checkpoint, encoded):
    index, _ = _ingest(docs, retriever_checkpoint)
    copy, original = docs / "uploads" / "a copy.pdf", docs / "a.pdf"
    pages = [page.id for page in index.page_records(index.document(original).id)]

    alias_removed = index.remove([copy]).to_json()
    assert alias_removed["removed"] == [str(copy)] and alias_removed["moved"] == []
    assert _also_at(index) == {"a.pdf": [], "b.pdf": []}
    assert index.counts() == (2, 5)

    index.ingest([docs])  # the copy comes back as an alias
    encoded.clear()
    primary_removed = index.remove([original]).to_json()
    assert primary_removed["removed"] == [str(original)]
    assert primary_removed["moved"] == [{"path": str(original), "to": str(copy)}]
    moved = index.document(copy)
    assert moved is not None and index.document(original) is None
    assert [page.id for page in index.page_records(moved.id)] == pages  # pages and vectors kept
    assert index.counts() == (2, 5) and encoded == []
    hits = index.search("alpha", k=5)
    assert {hit.path for hit in hits} == {str(copy), str(docs / "b.pdf")}
    assert all(hit.also_at == () for hit in hits)

    folder = index.remove([docs / "uploads"]).to_json()  # the last path of the content: the document goes
    assert folder["removed"] == [str(copy)] and folder["moved"] == []
    assert index.counts() == (1, 2)


def test_sync_after_an_alias_or_its_document_vanishes(docs, retriever_checkpoint, encoded):
    index, _ = _ingest(docs, retriever_checkpoint)
    copy, original = docs / "uploads" / "a copy.pdf", docs / "a.pdf"
    pages = [page.id for page in index.page_records(index.document(original).id)]

    copy.unlink()
    report = index.ingest([docs], sync=True).to_json()
    assert report["documents"]["removed"] == 0 and _also_at(index) == {"a.pdf": [], "b.pdf": []}

    shutil.copy(original, copy)
    index.ingest([docs])
    original.unlink()  # the document's own file goes; its copy still holds the content
    encoded.clear()
    report = index.ingest([docs], sync=True).to_json()
    assert report["documents"]["removed"] == 0 and encoded == []
    assert [page.id for page in index.page_records(index.document(copy).id)] == pages
    assert _also_at(index) == {"a copy.pdf": [], "b.pdf": []}

    copy.unlink()
    report = index.ingest([docs], sync=True).to_json()
    assert report["documents"]["removed"] == 1 and index.counts() == (1, 2)


def test_sync_after_an_alias_or_its_document_changes(docs, retriever_checkpoint, encoded):
    index, _ = _ingest(docs, retriever_checkpoint)
    copy, original = docs / "uploads" / "a copy.pdf", docs / "a.pdf"
    pages = [page.id for page in index.page_records(index.document(original).id)]

    make_pdf(copy, 4, title="alpha edited")  # the alias changes: it becomes a document of its own
    encoded.clear()
    report = index.ingest([docs], sync=True).to_json()
    assert sum(encoded) == report["pages_added"] == 4 and report["documents"]["updated"] == 1
    assert _also_at(index) == {"a copy.pdf": [], "a.pdf": [], "b.pdf": []}
    assert index.document(copy).pages == 4
    assert [page.id for page in index.page_records(index.document(original).id)] == pages

    shutil.copy(original, copy)  # the same content again: the copy's own document gives way to the alias
    encoded.clear()
    report = index.ingest([docs], sync=True).to_json()
    assert encoded == [] and report["documents"]["duplicates"] == 1
    assert _also_at(index) == {"a.pdf": ["a copy.pdf"], "b.pdf": []} and index.counts() == (2, 5)

    make_pdf(original, 2, title="alpha v2")  # the document's file changes; the alias keeps the old content
    encoded.clear()
    report = index.ingest([docs], sync=True).to_json()
    assert sum(encoded) == report["pages_added"] == 2 and report["documents"]["updated"] == 1
    assert [page.id for page in index.page_records(index.document(copy).id)] == pages  # kept, not re-encoded
    assert index.document(original).pages == 2
    assert _also_at(index) == {"a copy.pdf": [], "a.pdf": [], "b.pdf": []}
    assert index.counts() == (3, 3 + 2 + 2)


def test_one_content_three_times_in_one_run_and_a_touched_copy(tmp_path, retriever_checkpoint, encoded):
    root = tmp_path / "docs"
    make_pdf(root / "one.pdf", 2, title="same")
    for name in ("two.pdf", "three.pdf"):
        shutil.copy(root / "one.pdf", root / name)
    index, report = _ingest(root, retriever_checkpoint)
    assert report["documents"]["added"] == 1 and report["documents"]["duplicates"] == 2
    assert sum(encoded) == 2 and index.counts() == (1, 2)
    assert _also_at(index) == {"one.pdf": ["three.pdf", "two.pdf"]}
    # an alias whose file was touched (same bytes, new mtime) still holds the content: it takes over
    (root / "three.pdf").touch()
    (root / "two.pdf").unlink()
    (root / "one.pdf").unlink()
    encoded.clear()
    report = index.ingest([root], sync=True).to_json()
    assert encoded == [] and report["documents"]["removed"] == 0
    assert _also_at(index) == {"three.pdf": []}


def test_cli_search_and_list_show_the_other_paths(docs, retriever_checkpoint, capsys):
    index = "main"
    assert main(["ingest", str(docs), "--index", index, "--model", str(retriever_checkpoint), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"]["duplicates"] == 1
    copy = str(docs / "uploads" / "a copy.pdf")

    assert main(["search", "alpha", "--index", index, "-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first_a = next(number for number, line in enumerate(lines) if line.endswith(f"{docs / 'a.pdf'}  page 1"))
    assert lines[first_a + 1].strip() == f"also at {copy}"
    assert main(["search", "alpha", "--index", index, "-k", "5", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert {r["path"]: r["also_at"] for r in results} == {str(docs / "a.pdf"): [copy], str(docs / "b.pdf"): []}

    assert main(["list", "--index", index]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(str(docs / "a.pdf")) and out[1] == f"  also at {copy}"
    assert main(["list", "--index", index, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["documents"]
    assert [d["also_at"] for d in listed] == [[copy], []]

    assert main(["remove", str(docs / "a.pdf"), "--index", index]) == 0
    assert f"its pages stay indexed at {copy}" in capsys.readouterr().out


def test_server_search_and_mcp_list_carry_also_at(docs, retriever_checkpoint):
    pytest.importorskip("fastapi")
    from helpers.serving import api_client, make_auth

    from docqa.serve import create_app
    from docqa.serve.mcp import PageLibrary
    from docqa.serve.service import Service

    index, _ = _ingest(docs, retriever_checkpoint)
    index.close()
    service = Service(index.path, device="cpu")
    try:
        with api_client(create_app(service, make_auth())) as client:
            results = client.get("/api/search", params={"q": "alpha", "k": 5}).json()["results"]
            documents = client.get("/api/documents").json()["documents"]
        # shown relative to the documents' common folder, as the hit's own path is
        assert {r["path"]: r["also_at"] for r in results} == {"a.pdf": ["uploads/a copy.pdf"], "b.pdf": []}
        assert {d["path"]: d["also_at"] for d in documents} == {"a.pdf": ["uploads/a copy.pdf"], "b.pdf": []}
    finally:
        service.close()
    library = PageLibrary(index.path, device="cpu")
    try:
        assert library.also_at() == {library.index.document(docs / "a.pdf").id: [str(docs / "uploads" / "a copy.pdf")]}
    finally:
        library.close()


def test_an_index_from_before_aliases_opens_and_takes_them(docs, retriever_checkpoint, encoded):
    (docs / "uploads" / "a copy.pdf").unlink()
    index, _ = _ingest(docs, retriever_checkpoint)
    folder = index.path
    index.close()
    # as docqa left an index before aliases (schema 3): no aliases table
    db = sqlite3.connect(folder / "docqa.db")
    db.execute("DROP TABLE aliases")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()

    reopened = DocIndex.open(folder)
    assert reopened.store.schema_version == 4  # migrated in place, on open
    assert reopened.counts() == (2, 5) and [h.also_at for h in reopened.search("alpha", k=2)] == [(), ()]
    shutil.copy(docs / "a.pdf", docs / "uploads" / "a copy.pdf")
    encoded.clear()
    report = reopened.ingest([docs]).to_json()
    assert encoded == [] and report["documents"]["duplicates"] == 1
    assert _also_at(reopened) == {"a.pdf": ["a copy.pdf"], "b.pdf": []}


def _child_ingest(index_dir: Path, docs: Path, model: str) -> dict:
    return DocIndex.open(index_dir, create=True).ingest([docs], model=model, batch_size=2).to_json()


def _child_state(index_dir: Path) -> dict:
    index = DocIndex.open(index_dir)
    return {
        "documents": [(d.path, d.sha256, d.pages) for d in index.documents()],
        "aliases": [(a.path, index.store.page_records(a.document_id) != []) for a in index.aliases()],
        "pages": len(index.page_records()),
    }


@pytest.mark.parametrize(
    "point",
    [
        KillPoint("docqa.index.store", "Store.put_alias", 1, "after", "alias"),  # inside the document's transaction
        KillPoint("docqa.index.store", "Store.promote", 1, "after", "promote"),  # inside the sync's transaction
    ],
    ids=str,
)
def test_kill_9_while_writing_an_alias_leaves_document_and_alias_together(point, docs, tmp_path, retriever_checkpoint):
    index_dir, model = tmp_path / "index", str(retriever_checkpoint)
    if point.attribute == "Store.promote":  # an indexed pair whose document's file then vanishes (a sync)
        assert in_child(partial(_child_ingest, index_dir, docs, model), before=single_threaded).exit_code == 0
        (docs / "a.pdf").unlink()
        run = partial(_sync, index_dir, docs, model)
    else:
        run = partial(_child_ingest, index_dir, docs, model)
    before = in_child(partial(_child_state, index_dir)).value if index_dir.exists() else None
    assert in_child(run, kill=point, before=single_threaded).killed
    after_kill = in_child(partial(_child_state, index_dir), before=single_threaded).value
    if before is None:  # a.pdf and its alias commit together, or neither does
        assert after_kill["aliases"] == [] and str(docs / "a.pdf") not in [p for p, _, _ in after_kill["documents"]]
    else:  # the move commits whole, or not at all
        assert after_kill == before
    assert in_child(run, before=single_threaded).exit_code == 0
    final = in_child(partial(_child_state, index_dir), before=single_threaded).value
    copy = str(docs / "uploads" / "a copy.pdf")
    if point.attribute == "Store.promote":
        assert [path for path, _, _ in final["documents"]] == [str(docs / "b.pdf"), copy] and final["aliases"] == []
    else:
        assert final["aliases"] == [(copy, True)] and final["pages"] == 5


def _sync(index_dir: Path, docs: Path, model: str) -> dict:
    return DocIndex.open(index_dir).ingest([docs], model=model, sync=True).to_json()


def test_watch_keeps_a_renamed_file_without_encoding_it_again(docs, retriever_checkpoint, encoded):
    pytest.importorskip("watchfiles")
    from docqa.config import IngestSettings
    from docqa.watch import FolderWatcher

    batches = []
    watcher = FolderWatcher(
        [docs], "main", settings=IngestSettings(model=str(retriever_checkpoint)), settle_s=0, on_batch=batches.append
    )
    try:
        watcher.catch_up()
        pages = [page.id for page in watcher.index.page_records(watcher.index.document(docs / "b.pdf").id)]
        encoded.clear()
        (docs / "b.pdf").rename(docs / "uploads" / "b moved.pdf")  # as watchfiles reports it: two paths
        watcher.note([str(docs / "b.pdf"), str(docs / "uploads" / "b moved.pdf")])
        assert watcher.settle() is None  # first look at both
        batch = watcher.settle()
        assert batch is not None and (batch.added, batch.removed, batch.moved) == (0, 0, 1)
        assert encoded == []
        moved = watcher.index.document(docs / "uploads" / "b moved.pdf")
        assert [page.id for page in watcher.index.page_records(moved.id)] == pages
        assert _also_at(watcher.index) == {"a.pdf": ["a copy.pdf"], "b moved.pdf": []}
    finally:
        watcher.close()


def test_a_symlink_to_an_indexed_file_is_kept_under_the_link_s_own_path(docs, retriever_checkpoint, encoded, tmp_path):
    index, _ = _ingest(docs, retriever_checkpoint)
    other = tmp_path / "other"
    other.mkdir()
    (other / "link.pdf").symlink_to(docs / "b.pdf")
    encoded.clear()
    report = index.ingest([other]).to_json()
    assert encoded == [] and report["documents"]["duplicates"] == 1
    assert _also_at(index) == {"a.pdf": ["a copy.pdf"], "b.pdf": ["link.pdf"]}
    (link,) = index.aliases(index.document(docs / "b.pdf").id)
    assert link.path == str(other / "link.pdf")  # not its target's path
    assert index.remove([other]).to_json()["removed"] == [str(other / "link.pdf")]  # the folder takes it
    assert _also_at(index) == {"a.pdf": ["a copy.pdf"], "b.pdf": []} and index.counts() == (2, 5)
