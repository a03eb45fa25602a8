"""Readers during a write see only committed documents; a second writer is turned away; a full
disk stops the write with a clear error and leaves the index at its last commit."""

from __future__ import annotations

import resource
import signal
import time
from functools import partial
from pathlib import Path

from helpers.crash_harness import in_child, single_threaded, spawn
from helpers.documents import make_image, make_pdf

SETTINGS = {"batch_size": 1, "image_edge": 512}


def _slow_encoding(started: Path) -> None:
    """Make the writer slow enough for the others to overlap it; touch `started` once it encodes
    (it holds the write lock by then)."""
    from docqa.models.retriever import Retriever

    single_threaded()
    real = Retriever.encode_batch

    def slow(self, batch):
        started.touch()
        time.sleep(0.15)
        return real(self, batch)

    Retriever.encode_batch = slow


def _wait_for(path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


def _ingest(index_dir: Path, paths: list[Path], model: str) -> dict:
    from docqa.api import DocIndex

    return DocIndex.open(index_dir, create=True).ingest(paths, model=model, **SETTINGS).to_json()


def _search_while_writing(index_dir: Path, started: Path, stop: Path) -> dict:
    """One long-lived reader searching over and over while the writer runs (from its first encode
    until `stop` appears); every hit must belong to a whole document."""
    from docqa.api import DocIndex

    index = DocIndex.open(index_dir)
    _wait_for(started)
    searches, seen_counts, partial_documents = 0, [], []
    while not stop.exists():
        hits = index.search("page", k=100)
        pages: dict[str, set[int]] = {}
        for hit in hits:
            pages.setdefault(hit.path, set()).add(hit.page)
        declared = {d.path: d.pages for d in index.documents()}
        partial_documents += [
            path
            for path, numbers in pages.items()
            if path not in declared or numbers != set(range(1, declared[path] + 1))
        ]
        seen_counts.append(len(pages))
        searches += 1
    return {"searches": searches, "seen": seen_counts, "partial": partial_documents}


def _corpus(root: Path, documents: int) -> Path:
    for number in range(documents):
        make_pdf(root / f"doc{number}.pdf", 2, title=f"document {number}")
    return root


def test_searches_during_ingest_see_only_whole_committed_documents(tmp_path, retriever_checkpoint):
    corpus = _corpus(tmp_path / "docs", 8)
    index_dir = tmp_path / "index"
    model = str(retriever_checkpoint)
    in_child(partial(_ingest, index_dir, [corpus / "doc0.pdf"], model), before=single_threaded)  # index exists

    started, stop = tmp_path / "started", tmp_path / "stop"
    writer = spawn(partial(_ingest, index_dir, [corpus], model), before=partial(_slow_encoding, started))
    reader = spawn(partial(_search_while_writing, index_dir, started, stop), before=single_threaded)
    written = writer.wait()
    stop.touch()
    read = reader.wait()
    assert written.exit_code == 0 and written.value["documents"]["added"] == 7
    assert read.value["searches"] >= 3
    assert read.value["partial"] == []
    seen = read.value["seen"]
    assert seen == sorted(seen) and seen[0] >= 1  # documents appear whole, one commit at a time


def test_second_writer_gets_a_clear_message(tmp_path, retriever_checkpoint):
    corpus = _corpus(tmp_path / "docs", 6)
    index_dir = tmp_path / "index"
    model = str(retriever_checkpoint)
    in_child(partial(_ingest, index_dir, [corpus / "doc0.pdf"], model), before=single_threaded)

    def second_writer() -> str:
        from docqa.api import DocIndex
        from docqa.errors import IndexLockedError

        _wait_for(started)  # the first writer holds the lock from before its first encode
        try:
            DocIndex.open(index_dir).ingest([corpus / "doc5.pdf"])
        except IndexLockedError as error:
            return str(error)
        return "no error"

    started = tmp_path / "started"
    first = spawn(partial(_ingest, index_dir, [corpus], model), before=partial(_slow_encoding, started))
    second = in_child(second_writer, before=single_threaded)
    assert first.wait().exit_code == 0
    assert "another docqa process" in second.value and "is writing to this index" in second.value


def _ingest_with_file_size_limit(index_dir: Path, paths: list[Path], limit: int) -> str:
    from docqa.api import DocIndex
    from docqa.errors import StorageFullError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        DocIndex.open(index_dir).ingest(paths)
    except StorageFullError as error:
        return str(error)
    return "no error"


def test_disk_full_keeps_the_index_at_its_last_commit(tmp_path, retriever_checkpoint):
    corpus = tmp_path / "docs"
    make_image(corpus / "first.png", text="first")
    index_dir = tmp_path / "index"
    model = str(retriever_checkpoint)
    in_child(partial(_ingest, index_dir, [corpus], model), before=single_threaded)
    largest = max(path.stat().st_size for path in index_dir.iterdir())
    for number in range(6):
        make_pdf(corpus / f"more{number}.pdf", 3)

    message = in_child(
        partial(_ingest_with_file_size_limit, index_dir, [corpus], largest + 20_000), before=single_threaded
    ).value
    assert "out of disk space" in message and "intact" in message

    def state() -> tuple:
        from docqa.api import DocIndex

        index = DocIndex.open(index_dir)
        documents = {Path(d.path).name: d.pages for d in index.documents()}
        vector_end = max(page.vec_offset + page.vec_count for page in index.page_records())
        return documents, vector_end, index.vectors.rows, len(index.search("x", k=3))

    documents, vector_end, rows, hits = in_child(state, before=single_threaded).value
    assert documents["first.png"] == 1
    assert vector_end == rows and hits >= 1
    rerun = in_child(partial(_ingest, index_dir, [corpus], model), before=single_threaded)
    assert rerun.exit_code == 0
    assert in_child(state, before=single_threaded).value[0] == {"first.png": 1, **{f"more{n}.pdf": 3 for n in range(6)}}
