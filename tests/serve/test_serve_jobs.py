"""Upload jobs: the page cap, cancel, failed uploads listed and deletable, the disk quota, ids never
reused, and jobs that survive a kill -9 of the server (a real `docqa serve` process on 127.0.0.1)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')
httpx = pytest.importorskip("httpx")

from helpers.documents import make_pdf  # noqa: E402
from helpers.serving import (  # noqa: E402
    TOKEN,
    api_client,
    corpus_index_fixture,
    free_port,
    make_auth,
    service_on_copy,
    start_serve,
    wait_for_job,
    wait_until,
    wait_up,
)
from reportlab.pdfgen import canvas  # noqa: E402

from docqa.serve import create_app  # noqa: E402
from docqa.serve.jobs import JobStore  # noqa: E402
from docqa.serve.service import Service  # noqa: E402
from docqa.serve.slots import Limits  # noqa: E402

corpus_index = corpus_index_fixture()


def _thin_pdf(path: Path, pages: int) -> Path:
    """A PDF of many nearly empty pages (10,000 pages in about a second)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf = canvas.Canvas(str(path), pagesize=(200, 200))
    for number in range(pages):
        pdf.drawString(20, 100, f"p{number}")
        pdf.showPage()
    pdf.save()
    return path


def test_a_10000_page_upload_is_capped_at_once_and_can_be_deleted(tmp_path, corpus_index):
    service = service_on_copy(corpus_index, tmp_path / "idx", limits=Limits(max_upload_pages=50))
    try:
        with api_client(create_app(service, make_auth())) as client:
            pdf = _thin_pdf(tmp_path / "in" / "huge.pdf", 10_000)
            started = time.monotonic()
            job = client.post("/api/uploads", files={"file": ("huge.pdf", pdf.read_bytes(), "application/pdf")}).json()
            finished = wait_for_job(client, job["id"], timeout_s=60)
            assert time.monotonic() - started < 30  # today: the writer was held for 521 s
            assert finished["state"] == "failed" and "10000 pages" in finished["error"]
            assert "limit of 50" in finished["error"] and finished["pages_done"] == 0
            # the writer is free again: a delete does not get 409
            scan = next(d for d in client.get("/api/documents").json()["documents"] if d["name"] == "scan.png")
            assert client.delete(f"/api/documents/{scan['id']}").status_code == 200
            # the failed upload is listed with its reason and its file, and can be deleted
            listed = next(j for j in client.get("/api/jobs").json()["jobs"] if j["id"] == job["id"])
            assert listed["state"] == "failed" and listed["file_kept"] and listed["error"]
            stored = service.reader.path / listed["file"]
            assert stored.is_file()
            deleted = client.delete(f"/api/jobs/{job['id']}")
            assert deleted.status_code == 200 and deleted.json()["file_deleted"]
            assert not stored.exists() and client.get(f"/api/jobs/{job['id']}").status_code == 404
            assert [p for p in service.uploads.rglob("*") if p.is_file()] == []
    finally:
        service.close()


def test_a_running_upload_can_be_cancelled(tmp_path, corpus_index):
    service = service_on_copy(corpus_index, tmp_path / "idx")
    try:
        with api_client(create_app(service, make_auth())) as client:
            pdf = make_pdf(tmp_path / "in" / "long.pdf", 40, title="long")
            job = client.post("/api/uploads", files={"file": ("long.pdf", pdf.read_bytes(), "application/pdf")}).json()
            wait_until(lambda: client.get(f"/api/jobs/{job['id']}").json()["pages_done"] >= 1, 60, "the first page")
            cancel = client.delete(f"/api/jobs/{job['id']}")
            assert cancel.status_code == 200 and cancel.json()["cancelling"]
            finished = wait_for_job(client, job["id"], timeout_s=30)
            assert finished["state"] == "cancelled" and "cancelled after" in finished["error"]
            assert finished["pages_done"] < 40
            # every page it encoded is kept (a checkpoint, unsearchable until the document is whole)
            assert 1 <= finished["pages_kept"] == finished["pages_done"]
            assert "encoded pages are kept" in finished["error"]
            assert [d["name"] for d in client.get("/api/documents").json()["documents"]] == ["report.pdf", "scan.png"]
            assert client.delete(f"/api/jobs/{job['id']}").json()["file_deleted"]
            # uploaded again, it goes on from the kept pages
            again = client.post("/api/uploads", files={"file": ("long.pdf", pdf.read_bytes(), "application/pdf")})
            resumed = wait_for_job(client, again.json()["id"], timeout_s=120)
            assert resumed["state"] == "done" and (resumed["pages_done"], resumed["pages_kept"]) == (40, 0)
            assert resumed["report"]["pages_resumed"] == finished["pages_kept"]
            assert resumed["report"]["pages_added"] == 40
            names = [d["name"] for d in client.get("/api/documents").json()["documents"]]
            assert sorted(names) == ["long.pdf", "report.pdf", "scan.png"]
            # a queued job is cancelled before it starts
            assert service._write.acquire(timeout=10)
            try:
                first = client.post(
                    "/api/uploads", files={"file": ("a.pdf", pdf.read_bytes(), "application/pdf")}
                ).json()
                second = client.post(
                    "/api/uploads",
                    files={
                        "file": (
                            "b.pdf",
                            make_pdf(tmp_path / "in" / "b.pdf", 1, title="b").read_bytes(),
                            "application/pdf",
                        )
                    },
                ).json()
                assert client.delete(f"/api/jobs/{second['id']}").json()["state"] == "cancelled"
                client.delete(f"/api/jobs/{first['id']}")
            finally:
                service._write.release()
            assert wait_for_job(client, first["id"])["state"] == "cancelled"
    finally:
        service.close()


def test_the_upload_quota_refuses_what_does_not_fit(tmp_path, corpus_index):
    pdf = make_pdf(tmp_path / "in" / "q.pdf", 2, title="quota").read_bytes()
    service = service_on_copy(corpus_index, tmp_path / "idx", limits=Limits(upload_quota_bytes=len(pdf) + 100))
    try:
        with api_client(create_app(service, make_auth())) as client:
            assert client.post("/api/uploads", files={"file": ("q.pdf", pdf, "application/pdf")}).status_code == 202
            other = make_pdf(tmp_path / "in" / "r.pdf", 2, title="other").read_bytes()
            refused = client.post("/api/uploads", files={"file": ("r.pdf", other, "application/pdf")})
            assert refused.status_code == 507 and "quota" in refused.json()["error"]
            assert len([p for p in service.uploads.rglob("*") if p.is_file()]) == 1
    finally:
        service.close()


def test_job_ids_are_never_reused(tmp_path, corpus_index):
    service = service_on_copy(corpus_index, tmp_path / "idx")
    pdf = make_pdf(tmp_path / "in" / "one.pdf", 1, title="one").read_bytes()
    try:
        with api_client(create_app(service, make_auth())) as client:
            first = client.post("/api/uploads", files={"file": ("one.pdf", pdf, "application/pdf")}).json()
            wait_for_job(client, first["id"])
            client.delete(f"/api/jobs/{first['id']}")
    finally:
        service.close()
    again = Service(tmp_path / "idx", device="cpu")
    try:
        with api_client(create_app(again, make_auth())) as client:
            second = client.post("/api/uploads", files={"file": ("two.pdf", pdf + b"\n", "application/pdf")}).json()
            assert int(second["id"]) > int(first["id"])
    finally:
        again.close()


def test_a_job_interrupted_twice_fails_with_its_reason(tmp_path):
    upload = tmp_path / "uploads" / "x.pdf"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"%PDF-1.4")
    (tmp_path / "jobs.json").write_text(
        json.dumps(
            {
                "next_id": 8,
                "jobs": [
                    {"id": "5", "name": "x.pdf", "file": str(upload), "state": "ingesting", "resumes": 1},
                    {"id": "6", "name": "x.pdf", "file": str(upload), "state": "ingesting", "resumes": 0},
                    {"id": "7", "name": "gone.pdf", "file": str(tmp_path / "gone.pdf"), "state": "queued"},
                ],
            }
        )
    )
    store = JobStore(tmp_path)
    again = store.recover()
    assert [job.id for job in again] == ["6"] and store.jobs["6"].resumes == 1
    assert store.jobs["5"].state == "failed" and "stopped while ingesting it 2 times" in store.jobs["5"].error
    assert store.jobs["7"].state == "failed" and "gone" in store.jobs["7"].error
    assert store.add("y.pdf", upload).id == "8"


def test_kill_9_during_an_upload_then_a_restart_resumes_the_job(tmp_path, corpus_index):
    index = tmp_path / "idx"
    import shutil

    shutil.copytree(corpus_index, index)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    log = tmp_path / "server.log"
    pdf = make_pdf(tmp_path / "in" / "long.pdf", 6, title="long").read_bytes()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    process = start_serve(index, port, token_file, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as http:
            wait_up(http, process, log)
            assert "/login?code=" in log.read_text() and TOKEN not in log.read_text()
            job = http.post("/api/uploads", files={"file": ("long.pdf", pdf, "application/pdf")}).json()
            wait_until(lambda: http.get(f"/api/jobs/{job['id']}").json()["pages_done"] >= 1, 90, "the first page")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            persisted = json.loads((index / "jobs.json").read_text())
            assert [j["state"] for j in persisted["jobs"]] == ["ingesting"]
            process = start_serve(index, port, token_file, log)
            wait_up(http, process, log)
            listed = http.get("/api/jobs").json()["jobs"]
            assert [j["id"] for j in listed] == [job["id"]] and listed[0]["resumes"] == 1
            finished = wait_until(
                lambda: (j := http.get(f"/api/jobs/{job['id']}").json())["state"] in ("done", "failed") and j,
                180,
                "the resumed job",
            )
            assert finished["state"] == "done" and finished["pages_done"] == 6, finished
            # it went on from the pages encoded before the kill (each is kept as it is encoded), unless
            # the kill came after its commit
            report = finished["report"]
            assert report["pages_resumed"] >= 1 or report["documents"]["unchanged"] == 1, report
            names = [d["name"] for d in http.get("/api/documents").json()["documents"]]
            assert names.count("long.pdf") == 1
            newer = http.post("/api/uploads", files={"file": ("n.pdf", pdf + b"\n", "application/pdf")}).json()
            assert int(newer["id"]) > int(job["id"])
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
