"""`docqa watch`: after every kind of change, the watched index equals a fresh `ingest --sync` of
the folder (same documents, same content hashes, same page vectors)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("watchfiles")

from helpers.documents import make_image, make_pdf  # noqa: E402
from helpers.paths import REPO
from helpers.stored import stored_pages  # noqa: E402

from docqa.api import DocIndex  # noqa: E402
from docqa.config import IngestSettings  # noqa: E402
from docqa.errors import IndexLockedError, InputFileError  # noqa: E402
from docqa.index.store import DB_NAME  # noqa: E402
from docqa.inputs.sources import sha256_of  # noqa: E402
from docqa.watch import FolderWatcher  # noqa: E402

SETTLE = 0.3


def _on_disk(folder: Path) -> dict[str, str]:
    """What the folder holds now: resolved path -> sha256, for every file ingest takes."""
    return {str(p.resolve()): sha256_of(p) for p in folder.rglob("*") if p.is_file() and p.suffix in (".png", ".pdf")}


def _indexed(index_dir: Path) -> dict[str, str]:
    """Every path the index holds, a document's own or an alias's (another file with its content) -> sha256."""
    index = DocIndex.open(index_dir)
    try:
        return {str(record.file): record.sha256 for record in [*index.documents(), *index.aliases()]}
    finally:
        index.close()


def _paths(index: DocIndex) -> set[tuple[str, str, int]]:
    """(path, sha256, pages) of every path the index holds; which copy of a content is the document's
    own path depends on the order the copies came in."""
    pages = {record.id: record.pages for record in index.documents()}
    aliases = [(a.path, a.sha256, pages[a.document_id]) for a in index.aliases()]
    return {(r.path, r.sha256, r.pages) for r in index.documents()} | set(aliases)


def _pages_by_content(index: DocIndex) -> dict[tuple[str, int], np.ndarray]:
    content = {record.path: record.sha256 for record in index.documents()}
    return {(content[path], number): vectors for (path, number), vectors in stored_pages(index).items()}


def _wait_in_step(index_dir: Path, folder: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (index_dir / DB_NAME).exists():
            try:
                if _indexed(index_dir) == _on_disk(folder):
                    return
            except Exception:  # noqa: BLE001 - the index may be mid-creation
                pass
        time.sleep(0.25)
    raise AssertionError(f"the index did not catch up: {sorted(_indexed(index_dir))} vs {sorted(_on_disk(folder))}")


_RETRIEVERS: dict[str, object] = {}


def _assert_equals_fresh_sync(index_dir: Path, folder: Path, checkpoint: Path, tmp: Path) -> None:
    fresh_dir = tmp / f"fresh-{time.monotonic_ns()}"
    fresh = DocIndex.open(fresh_dir, create=True)
    watched = DocIndex.open(index_dir)
    try:
        if _on_disk(folder):
            if str(checkpoint) not in _RETRIEVERS:  # one tiny model for every fresh index: loading it is slow
                _RETRIEVERS[str(checkpoint)] = fresh.retriever(str(checkpoint), "cpu")
            fresh.adopt_retriever(_RETRIEVERS[str(checkpoint)])
            fresh.ingest([folder], model=str(checkpoint), device="cpu", sync=True)
        ours, theirs = _paths(watched), _paths(fresh)
        assert ours == theirs
        if theirs:
            mine, expected = _pages_by_content(watched), _pages_by_content(fresh)
            assert mine.keys() == expected.keys()
            for key in expected:
                np.testing.assert_allclose(mine[key], expected[key], atol=1e-3, err_msg=str(key))
    finally:
        fresh.close()
        watched.close()
        shutil.rmtree(fresh_dir, ignore_errors=True)


@pytest.fixture()
def watching(tmp_path, retriever_checkpoint):
    """A FolderWatcher over tmp/docs (holding one PDF to start with) in a thread; yields (docs, index_dir, batches)."""
    docs = tmp_path / "docs"
    make_pdf(docs / "start.pdf", 2, title="start")
    index_dir = tmp_path / "idx"
    batches = []
    watcher = FolderWatcher(
        [docs],
        index_dir,
        settings=IngestSettings(model=str(retriever_checkpoint), device="cpu"),
        settle_s=SETTLE,
        on_batch=batches.append,
    )
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        _wait_in_step(index_dir, docs)
        yield docs, index_dir, batches
    finally:
        watcher.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_add_modify_delete_rename(watching, tmp_path, retriever_checkpoint):
    docs, index_dir, batches = watching
    assert batches[0].event == "ready" and batches[0].added == 1
    check = lambda: _assert_equals_fresh_sync(index_dir, docs, retriever_checkpoint, tmp_path)  # noqa: E731

    make_image(docs / "a.png", text="alpha")  # add
    make_pdf(docs / "sub" / "b.pdf", 1, title="bee")
    _wait_in_step(index_dir, docs)
    check()

    make_image(docs / "a.png", text="alpha changed", color="yellow")  # modify
    _wait_in_step(index_dir, docs)
    check()

    (docs / "sub" / "b.pdf").rename(docs / "sub" / "c.pdf")  # rename within the folder
    _wait_in_step(index_dir, docs)
    check()

    (docs / "sub").rename(docs / "moved")  # rename a folder
    _wait_in_step(index_dir, docs)
    check()

    outside = tmp_path / "outside"
    outside.mkdir()
    (docs / "a.png").rename(outside / "a.png")  # moved out: gone from the index
    (docs / "start.pdf").unlink()  # delete
    _wait_in_step(index_dir, docs)
    check()

    shutil.move(str(outside), str(docs / "back"))  # a folder moved in: its files are ingested
    _wait_in_step(index_dir, docs)
    check()

    shutil.rmtree(docs / "moved")  # a folder deleted
    _wait_in_step(index_dir, docs)
    check()


def test_partially_written_file_is_taken_once_complete(watching, tmp_path, retriever_checkpoint):
    docs, index_dir, batches = watching
    source = make_pdf(tmp_path / "big.pdf", 3, title="big")
    data = source.read_bytes()
    target = docs / "big.pdf"
    before = len(batches)
    with open(target, "wb") as handle:  # written in pieces, each well inside the settle time
        for start in range(0, len(data), len(data) // 8 + 1):
            handle.write(data[start : start + len(data) // 8 + 1])
            handle.flush()
            time.sleep(SETTLE / 4)
    _wait_in_step(index_dir, docs)
    _assert_equals_fresh_sync(index_dir, docs, retriever_checkpoint, tmp_path)
    taken = [b for b in batches[before:] if b.added or b.updated or b.failed]
    assert [(b.added, b.updated, b.failed) for b in taken] == [(1, 0, 0)], [b.to_json() for b in batches[before:]]

    # a writer that stalls longer than the settle time: the half file may fail, the whole one wins
    with open(docs / "slow.pdf", "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(SETTLE * 4)
        handle.write(data[len(data) // 2 :])
    _wait_in_step(index_dir, docs)
    _assert_equals_fresh_sync(index_dir, docs, retriever_checkpoint, tmp_path)


@pytest.mark.slow  # 200 page encodes (the burst, then the fresh --sync it is compared with)
def test_burst_of_100_files(watching, tmp_path, retriever_checkpoint):
    docs, index_dir, batches = watching
    for number in range(100):
        make_image(
            docs / "burst" / f"{number:03d}.png",
            size=(64, 80),
            text=str(number),
            color=(number * 2 % 255, 200, 255 - number),
        )
    _wait_in_step(index_dir, docs, timeout_s=600)
    _assert_equals_fresh_sync(index_dir, docs, retriever_checkpoint, tmp_path)
    for number in range(0, 100, 2):
        (docs / "burst" / f"{number:03d}.png").unlink()
    _wait_in_step(index_dir, docs)
    _assert_equals_fresh_sync(index_dir, docs, retriever_checkpoint, tmp_path)


def test_one_watcher_per_index(watching, retriever_checkpoint):
    docs, index_dir, _ = watching
    with pytest.raises(IndexLockedError, match="another docqa watch"):
        FolderWatcher([docs], index_dir, settings=IngestSettings(model=str(retriever_checkpoint), device="cpu"))


def test_a_folder_inside_the_index_is_refused_and_one_that_goes_ends_the_watch(tmp_path, retriever_checkpoint):
    settings = IngestSettings(model=str(retriever_checkpoint), device="cpu")
    (tmp_path / "idx" / "uploads").mkdir(parents=True)
    with pytest.raises(InputFileError, match="inside the index folder"):
        FolderWatcher([tmp_path / "idx" / "uploads"], tmp_path / "idx", settings=settings)
    docs = tmp_path / "docs"
    make_image(docs / "a.png", text="a")
    watcher = FolderWatcher([docs], tmp_path / "idx", settings=settings, settle_s=SETTLE)
    ended: list[BaseException] = []

    def run() -> None:
        try:
            watcher.run()
        except BaseException as error:  # noqa: BLE001  what the watch command would report
            ended.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_in_step(tmp_path / "idx", docs)
    shutil.rmtree(docs)  # watchfiles alone would go on watching nothing, even once the folder is back
    thread.join(timeout=60)
    watcher.stop()
    assert not thread.is_alive() and isinstance(ended[0], InputFileError), ended
    assert "is gone" in str(ended[0]) and _indexed(tmp_path / "idx") == {}  # its documents went first


def _start_watch(docs: Path, index_dir: Path, checkpoint: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "docqa",
            "watch",
            str(docs),
            "--index",
            str(index_dir),
            "--model",
            str(checkpoint),
            "--device",
            "cpu",
            "--settle",
            str(SETTLE),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_event(process: subprocess.Popen, timeout_s: float = 300) -> dict:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert result and result[0], f"no event from docqa watch; stderr: {process.stderr.read() if process.poll() else ''}"
    return json.loads(result[0])


@pytest.mark.slow  # two watcher processes, each importing torch and loading the model
def test_kill_9_then_restart_catches_up(tmp_path, retriever_checkpoint):
    docs = tmp_path / "docs"
    make_pdf(docs / "one.pdf", 2, title="one")
    index_dir = tmp_path / "idx"
    process = _start_watch(docs, index_dir, retriever_checkpoint)
    try:
        assert _read_event(process)["event"] == "ready"
        for number in range(12):  # a batch large enough to be killed in the middle of
            make_pdf(docs / f"many-{number:02d}.pdf", 3, title=f"many {number}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_indexed(index_dir)) < 3:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    # while it is down: a file changes, one is deleted, one is added
    make_pdf(docs / "one.pdf", 1, title="one, shorter")
    (docs / "many-00.pdf").unlink()
    make_image(docs / "late.png", text="late")
    process = _start_watch(docs, index_dir, retriever_checkpoint)
    try:
        assert _read_event(process)["event"] == "ready"
        _wait_in_step(index_dir, docs, timeout_s=300)
        _assert_equals_fresh_sync(index_dir, docs, retriever_checkpoint, tmp_path)
        make_image(docs / "after.png", text="after restart")  # and it keeps watching
        event = _read_event(process)
        assert event["event"] == "synced" and event["added"] == 1
        _assert_equals_fresh_sync(index_dir, docs, retriever_checkpoint, tmp_path)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=30) == 130
        finally:
            if process.poll() is None:
                process.kill()
