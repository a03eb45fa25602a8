"""`docqa serve --watch`: watched folders kept in step inside the server (through its one writer),
what the API shows of them (documents, search, /api/info's generation and watch state), and what
must not stop the server (a file that fails to ingest, a watched folder that disappears)."""

from __future__ import annotations

import os
import shutil
import time

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')
pytest.importorskip("watchfiles", reason='serve --watch needs the watch extra: pip install "docqa[watch]"')

from helpers.documents import make_image, make_pdf  # noqa: E402
from helpers.serving import (  # noqa: E402
    TOKEN,
    api_client,
    corpus_index_fixture,
    free_port,
    make_auth,
    service_fixture,
    start_serve,
    wait_for_job,
    wait_until,
    wait_up,
)

from docqa.cli.main import main  # noqa: E402
from docqa.errors import InputFileError  # noqa: E402
from docqa.serve import create_app  # noqa: E402
from docqa.serve.watching import ServedWatch  # noqa: E402

SETTLE = 0.3

corpus_index = corpus_index_fixture()
service = service_fixture(answer_model=False)


@pytest.fixture()
def watched(tmp_path):
    folder = tmp_path / "watched"
    folder.mkdir()
    return folder


@pytest.fixture()
def client(service, watched):
    ServedWatch(service, [watched], settle_s=SETTLE, tags={"source": "watched"})
    with api_client(create_app(service, make_auth())) as client:
        wait_until(lambda: client.get("/api/info").json()["watch"]["state"] == "watching", 60, "the catch-up sync")
        yield client


def _names(client) -> list[str]:
    return [d["name"] for d in client.get("/api/documents").json()["documents"]]


def _generation(client) -> int:
    return client.get("/api/info").json()["generation"]


def _drop(source, target) -> None:
    """Put a finished file into the folder in one step (as a download or a copy that renames)."""
    os.replace(source, target)


def test_a_dropped_file_is_listed_and_found_and_a_deleted_one_goes(client, watched, tmp_path):
    before = _generation(client)
    _drop(make_pdf(tmp_path / "fresh.pdf", 2, title="fresh"), watched / "fresh.pdf")
    wait_until(lambda: "fresh.pdf" in _names(client), 60, "the dropped file being listed")
    after = _generation(client)
    assert after != before
    hits = client.get("/api/search", params={"q": "fresh", "k": 5, "path": "*fresh.pdf"}).json()["results"]
    assert {h["name"] for h in hits} == {"fresh.pdf"} and len(hits) == 2
    tagged = client.get("/api/search", params={"q": "fresh", "k": 5, "where": "source=watched"}).json()["results"]
    assert {h["name"] for h in tagged} == {"fresh.pdf"}  # --tag lands on what the watcher adds
    info = client.get("/api/info").json()
    assert info["documents"] == 3 and info["watch"]["failures"] == [] and info["watch"]["error"] is None
    assert info["watch"]["folders"][0].endswith("watched") and not os.path.isabs(info["watch"]["folders"][0])

    (watched / "fresh.pdf").unlink()
    wait_until(lambda: "fresh.pdf" not in _names(client), 60, "the deleted file leaving the list")
    assert _generation(client) not in (before, after)
    assert client.get("/api/search", params={"q": "fresh", "k": 5, "path": "*fresh.pdf"}).json()["results"] == []


def test_generation_changes_with_uploads_and_deletes_and_is_in_the_schema(client, tmp_path):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["InfoResponse"]
    assert schema["properties"]["generation"]["type"] == "integer" and "generation" in schema["required"]
    first = _generation(client)
    assert _generation(client) == first  # reading changes nothing
    accepted = client.post("/api/uploads", files={"file": ("up.pdf", make_pdf(tmp_path / "up.pdf", 1).read_bytes())})
    assert wait_for_job(client, accepted.json()["id"])["state"] == "done"
    uploaded = _generation(client)
    assert uploaded > first
    document = next(d for d in client.get("/api/documents").json()["documents"] if d["name"] == "up.pdf")
    assert client.delete(f"/api/documents/{document['id']}").status_code == 200
    assert _generation(client) > uploaded


def test_generation_changes_when_another_process_ingests(client, service, tmp_path):
    from docqa.api import DocIndex

    first = _generation(client)
    outside = make_image(tmp_path / "elsewhere" / "outside.png", text="outside")
    other = DocIndex.open(service.reader.path)  # another writer, as a `docqa ingest` in a shell is
    try:
        other.ingest([outside.parent])
    finally:
        other.close()
    changed = _generation(client)
    assert changed != first and "outside.png" in _names(client)
    assert _generation(client) == changed  # and only once


def test_an_upload_and_a_watched_batch_at_once_both_land(client, service, watched, tmp_path):
    """One writer: while another write holds it, both the upload's job and the watcher's batch wait,
    then each lands in turn (neither fails on the index's write lock)."""
    assert service._write.acquire(timeout=30)
    try:
        accepted = client.post(
            "/api/uploads", files={"file": ("together.pdf", make_pdf(tmp_path / "up.pdf", 2).read_bytes())}
        )
        _drop(make_image(tmp_path / "beside.png", text="beside"), watched / "beside.png")
        job_id = accepted.json()["id"]
        wait_until(lambda: client.get(f"/api/jobs/{job_id}").json()["state"] == "ingesting", 30, "the job starting")
        time.sleep(SETTLE * 8)  # long enough for the watcher to settle the file and wait its turn too
        assert "beside.png" not in _names(client)
    finally:
        service._write.release()
    assert wait_for_job(client, accepted.json()["id"])["state"] == "done"
    wait_until(lambda: "beside.png" in _names(client), 60, "the watched file being listed")
    assert sorted(_names(client)) == ["beside.png", "report.pdf", "scan.png", "together.pdf"]
    watch = client.get("/api/info").json()["watch"]
    assert (watch["state"], watch["error"], watch["failures"], watch["restarts"]) == ("watching", None, [], 0)


def test_the_upload_folder_cannot_be_watched(service, tmp_path, capsys):
    """Uploads are ingested by their jobs: the uploads folder (inside the index folder) is refused."""
    service.uploads.mkdir(exist_ok=True)
    with pytest.raises(InputFileError, match="inside the index folder"):
        ServedWatch(service, [service.uploads])
    assert service.watching is None
    uploads = tmp_path / "other" / "uploads"
    uploads.mkdir(parents=True)
    assert main(["serve", "--index", str(uploads.parent), "--watch", str(uploads), "--port", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "inside the index folder" in error and len(error.splitlines()) == 1, error


def test_a_watched_folder_holding_the_index_leaves_uploads_to_their_jobs(service, tmp_path, tmp_path_factory):
    make_image(tmp_path / "loose.png", text="loose")  # tmp_path holds the index folder, idx/
    ServedWatch(service, [tmp_path], settle_s=SETTLE)
    with api_client(create_app(service, make_auth())) as client:
        wait_until(lambda: client.get("/api/info").json()["watch"]["state"] == "watching", 60, "the catch-up sync")
        batches = client.get("/api/info").json()["watch"]["batches"]
        source = make_pdf(tmp_path_factory.mktemp("outside") / "m.pdf", 1)  # not in the watched folder
        accepted = client.post("/api/uploads", files={"file": ("mine.pdf", source.read_bytes())})
        job = wait_for_job(client, accepted.json()["id"])
        assert job["state"] == "done" and job["report"]["documents"]["added"] == 1  # the job, not the watcher
        time.sleep(SETTLE * 8)  # the upload was stored inside the watched folder: time enough to act on it
        names = _names(client)
        assert names.count("mine.pdf") == 1 and "loose.png" in names and len(names) == 4
        info = client.get("/api/info").json()
        assert info["watch"]["batches"] == batches  # it did not: changes inside the index folder are not its
        assert info["watch"]["error"] is None and info["watch"]["failures"] == []


def test_a_file_that_fails_is_reported_and_the_server_goes_on(client, watched, tmp_path):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + os.urandom(2000))  # sniffed as a PDF, no page renders
    _drop(bad, watched / "bad.pdf")
    failures = wait_until(lambda: client.get("/api/info").json()["watch"]["failures"], 60, "the failure being shown")
    assert len(failures) == 1 and failures[0]["path"].endswith("bad.pdf") and failures[0]["error"], failures
    assert str(tmp_path) not in failures[0]["error"]
    assert client.get("/api/search", params={"q": "report", "k": 2}).status_code == 200
    assert client.get("/api/info").json()["watch"]["state"] == "watching"
    _drop(make_pdf(tmp_path / "good.pdf", 1, title="good"), watched / "bad.pdf")  # fixed: taken, and no more a failure
    wait_until(lambda: "bad.pdf" in _names(client), 60, "the fixed file being listed")
    assert client.get("/api/info").json()["watch"]["failures"] == []


def test_a_watched_folder_that_disappears_is_reported_and_watched_again(client, watched, tmp_path):
    shutil.rmtree(watched)
    watch = wait_until(
        lambda: (w := client.get("/api/info").json()["watch"])["state"] == "restarting" and w, 60, "the watcher failing"
    )
    assert "watched" in watch["error"] and str(tmp_path) not in watch["error"]  # scrubbed like any error
    assert client.get("/api/search", params={"q": "report", "k": 2}).status_code == 200  # the server stays up
    watched.mkdir()
    make_image(watched / "back.png", text="back")
    wait_until(lambda: "back.png" in _names(client), 90, "the watcher coming back")
    watch = client.get("/api/info").json()["watch"]
    assert watch["state"] == "watching" and watch["error"] is None and watch["restarts"] >= 1


def test_watch_flags_are_checked_before_serving(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--watch", str(tmp_path), "--settle", "5000"])
    assert exited.value.code == 2
    assert "--settle" in capsys.readouterr().err


def test_docqa_serve_watch_keeps_a_served_index_live(tmp_path, corpus_index):
    """The command itself: --watch, --settle and --tag reach the watcher, the page's poll (generation)
    sees the new document, and stopping the server stops the watcher with it."""
    import signal

    import httpx

    index = tmp_path / "idx"
    shutil.copytree(corpus_index, index)
    watched = tmp_path / "watched"
    watched.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port, log = free_port(), tmp_path / "server.log"
    flags = ["--watch", str(watched), "--settle", str(SETTLE), "--tag", "via=serve"]
    process = start_serve(index, port, token_file, log, *flags)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            wait_up(http, process, log)
            wait_until(lambda: http.get("/api/info").json()["watch"]["state"] == "watching", 60, "the catch-up sync")
            before = http.get("/api/info").json()["generation"]
            _drop(make_image(tmp_path / "live.png", text="live"), watched / "live.png")
            wait_until(lambda: http.get("/api/info").json()["generation"] != before, 60, "the generation changing")
            found = http.get("/api/search", params={"q": "live", "where": "via=serve"}).json()["results"]
            assert [hit["name"] for hit in found] == ["live.png"]
        assert "in step" in log.read_text()
        process.send_signal(signal.SIGTERM)
        # uvicorn stops, then raises the signal again: the status of a graceful stop is -SIGTERM
        assert process.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
