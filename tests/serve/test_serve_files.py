"""The original files behind the web page's "open" and "download" (GET /api/documents/{id}/file), and
the documents list's status of each file (indexed, or an upload's job state): happy paths, then the
hostile ones (ids that are no document, a file changed or swapped for a symlink, a pipe or a folder
after indexing, traversal, names that would break a header, requests without the token or from
another site)."""

from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')

from fastapi.testclient import TestClient  # noqa: E402
from helpers.documents import make_image, make_pdf  # noqa: E402
from helpers.serving import BASE, TOKEN, api_client, make_auth, service_on_copy, wait_for_job  # noqa: E402

from docqa.api import DocIndex  # noqa: E402
from docqa.serve import create_app  # noqa: E402
from docqa.serve.service import Original  # noqa: E402

ODD_NAME = 'q"uote\nline ünïcode;.pdf'  # a quote, a newline, non-ASCII letters and a separator


@pytest.fixture(scope="module")
def files_corpus(tmp_path_factory, retriever_checkpoints) -> Path:
    """An index of red/report.pdf (2 pages, tagged team=red), blue/scan.png (team=blue), a PDF with
    an odd name and, where LibreOffice is installed, blue/notes.txt (a converted kind)."""
    root = tmp_path_factory.mktemp("files_corpus")
    make_pdf(root / "docs" / "red" / "report.pdf", 2, title="report")
    make_image(root / "docs" / "blue" / "scan.png", text="scan")
    make_pdf(root / "docs" / "odd" / ODD_NAME, 1, title="odd")
    if shutil.which("soffice"):
        (root / "docs" / "blue" / "notes.txt").write_text("plain notes about the budget\n" * 20)
    model = str(retriever_checkpoints["colmodernvbert"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCQA_CACHE", str(root / "cache"))
        index = DocIndex.open(root / "idx", create=True)
        for folder, team in [("red", "red"), ("blue", "blue"), ("odd", "odd")]:
            index.ingest([root / "docs" / folder], model=model, device="cpu", tags={"team": team})
        index.close()
    return root / "idx"


@pytest.fixture()
def docs(files_corpus) -> Path:
    return files_corpus.parent / "docs"


@pytest.fixture()
def service(files_corpus, tmp_path):
    made = service_on_copy(files_corpus, tmp_path / "idx")
    yield made
    made.close()


@pytest.fixture()
def client(service):
    with api_client(create_app(service, make_auth())) as client:
        yield client


def _documents(client) -> dict[str, dict]:
    return {d["name"]: d for d in client.get("/api/documents").json()["documents"]}


def _csp(response) -> list[str]:
    return response.headers.get_list("content-security-policy")


def test_a_pdf_opens_inline_and_downloads_as_an_attachment(client, docs):
    report = _documents(client)["report.pdf"]
    assert report["status"] == "indexed"
    source = docs / "red" / "report.pdf"
    opened = client.get(f"/api/documents/{report['id']}/file")
    assert opened.status_code == 200 and opened.content == source.read_bytes()
    assert opened.headers["content-type"] == "application/pdf"
    assert opened.headers["content-disposition"] == 'inline; filename="report.pdf"'
    assert "sandbox" in _csp(opened) and any("default-src 'none'" in p for p in _csp(opened))
    assert opened.headers["x-content-type-options"] == "nosniff"
    assert opened.headers["content-length"] == str(source.stat().st_size)
    saved = client.get(f"/api/documents/{report['id']}/file", params={"download": "true"})
    assert saved.status_code == 200 and saved.content == opened.content
    assert saved.headers["content-disposition"] == 'attachment; filename="report.pdf"'


def test_an_image_opens_as_its_type_and_anything_else_only_downloads(client, service):
    documents = _documents(client)
    scan = client.get(f"/api/documents/{documents['scan.png']['id']}/file")
    assert scan.status_code == 200 and scan.headers["content-type"] == "image/png"
    assert scan.headers["content-disposition"].startswith("inline;")
    if "notes.txt" not in documents:
        pytest.skip("LibreOffice is not installed: no converted document in the corpus")
    assert documents["notes.txt"]["kind"] == "text"
    notes = client.get(f"/api/documents/{documents['notes.txt']['id']}/file")  # the original, not its PDF
    assert notes.status_code == 200 and notes.content.startswith(b"plain notes about the budget")
    assert notes.headers["content-type"] == "application/octet-stream"
    assert notes.headers["content-disposition"] == 'attachment; filename="notes.txt"'


def test_search_hits_say_which_document_and_kind_the_page_is(client):
    results = client.get("/api/search", params={"q": "report", "k": 10}).json()["results"]
    by_name = {r["name"]: r for r in results}
    documents = _documents(client)
    assert by_name["report.pdf"]["document_id"] == documents["report.pdf"]["id"]
    assert (by_name["report.pdf"]["kind"], by_name["scan.png"]["kind"]) == ("pdf", "image")


def test_the_filters_the_page_sends_narrow_search(client):
    red = client.get("/api/search", params={"q": "report", "k": 10, "where": "team=red"}).json()["results"]
    assert {r["name"] for r in red} == {"report.pdf"}
    glob = client.get("/api/search", params={"q": "report", "k": 10, "path": "*/blue/*"}).json()["results"]
    assert {r["name"] for r in glob} <= {"scan.png", "notes.txt"} and glob


def test_an_odd_file_name_cannot_break_the_header(client):
    odd = _documents(client)[ODD_NAME]
    response = client.get(f"/api/documents/{odd['id']}/file", params={"download": "1"})
    assert response.status_code == 200
    value = response.headers["content-disposition"]
    assert "\n" not in value and "\r" not in value
    kind, fallback, real = (part.strip() for part in value.split(";", 2))
    assert kind == "attachment"
    assert fallback.startswith('filename="') and fallback.count('"') == 2  # the fallback is plain ASCII
    assert fallback.encode("ascii") and "ü" not in fallback and ";" not in fallback
    assert real.startswith("filename*=UTF-8''")
    assert unquote(real.removeprefix("filename*=UTF-8''")) == ODD_NAME.replace("\n", "_")
    assert "'" not in real.removeprefix("filename*=UTF-8''") and '"' not in real
    controls = Original("a\r\nb\x00c.pdf", "application/pdf", 0, io.BytesIO())
    assert controls.disposition(download=False) == 'inline; filename="a_b_c.pdf"'
    assert Original("x.docx", "application/octet-stream", 0, io.BytesIO()).disposition(False).startswith("attachment;")


def test_ids_that_are_no_document_and_traversal_get_nothing(client):
    assert client.get("/api/documents/999999/file").status_code == 404
    for path in [
        "/api/documents/0/file",
        "/api/documents/-1/file",
        "/api/documents/abc/file",
        "/api/documents/..%2F..%2F..%2Fetc%2Fpasswd/file",
        "/api/documents/1%00/file",
        "/api/documents/%2Fetc%2Fpasswd/file",
        "/api/documents/1/file/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/documents/1/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"/api/documents/{2**63}/file",
    ]:
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert b"root:" not in response.content, path
    first = min(d["id"] for d in _documents(client).values())
    named = client.get(f"/api/documents/{first}/file", params={"path": "/etc/passwd", "file": "/etc/passwd"})
    assert named.status_code == 200 and b"root:" not in named.content  # a path in the request is ignored


def test_a_document_without_a_file_has_nothing_to_open(client, service):
    import numpy as np

    writer = DocIndex.open(service.reader.path)
    try:
        vectors = np.random.default_rng(0).standard_normal((4, writer.dim)).astype(np.float32)
        writer.add_embeddings("vectors-only", [vectors])
    finally:
        writer.close()
    embedded = _documents(client)["vectors-only"]
    response = client.get(f"/api/documents/{embedded['id']}/file")
    assert response.status_code == 404 and "no file" in response.json()["error"]


@pytest.mark.parametrize("swap", ["edited", "same_size", "symlink_elsewhere", "gone", "folder", "fifo"])
def test_a_file_changed_or_swapped_since_indexing_is_refused(client, docs, tmp_path, swap):
    scan = _documents(client)["scan.png"]
    source = docs / "blue" / "scan.png"
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:secret\n" * 10)
    original = source.read_bytes()
    os.replace(source, tmp_path / "scan.png.kept")
    try:
        if swap == "edited":
            source.write_bytes(original + b"appended")
        elif swap == "same_size":
            source.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        elif swap == "symlink_elsewhere":
            os.symlink(secret, source)
        elif swap == "folder":
            source.mkdir()
        elif swap == "fifo":
            os.mkfifo(source)  # opening it for reading must not wait for a writer
        refused = client.get(f"/api/documents/{scan['id']}/file")
        assert refused.status_code == 409, refused.text
        assert "since it was indexed" in refused.json()["error"] and "scan.png" in refused.json()["error"]
        assert b"root:" not in refused.content and str(tmp_path) not in refused.text
    finally:  # the corpus is shared by this module's tests
        if source.is_dir() and not source.is_symlink():
            source.rmdir()
        elif os.path.lexists(source):
            source.unlink()
        os.replace(tmp_path / "scan.png.kept", source)


def test_a_symlink_to_the_same_bytes_still_serves_them(client, docs, tmp_path):
    scan = _documents(client)["scan.png"]
    source = docs / "blue" / "scan.png"
    copy = tmp_path / "copy.png"
    shutil.copy(source, copy)
    os.replace(source, tmp_path / "scan.png.kept")
    try:
        os.symlink(copy, source)
        served = client.get(f"/api/documents/{scan['id']}/file")
        assert served.status_code == 200 and served.content == copy.read_bytes()  # what was indexed, nothing else
    finally:
        source.unlink()
        os.replace(tmp_path / "scan.png.kept", source)


def test_the_file_route_needs_the_token_and_refuses_other_sites(service):
    auth = make_auth()
    app = create_app(service, auth)
    with api_client(app) as client:
        document_id = next(iter(_documents(client).values()))["id"]
        path = f"/api/documents/{document_id}/file"
        client.headers.pop("Authorization")
        for headers in [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"X-DocQA-Token": TOKEN}]:
            refused = client.get(path, headers=headers)
            assert refused.status_code == 401 and not refused.content.startswith(b"%PDF"), headers
        assert client.get(f"{path}?token={TOKEN}").status_code == 401
        assert (
            client.get(path, headers={"Authorization": f"Bearer {TOKEN}", "Host": "evil.test:8000"}).status_code == 421
        )
    with TestClient(app, base_url=BASE) as browser:
        assert browser.get(f"/login?code={auth.login_code()}", follow_redirects=False).status_code == 303
        assert browser.get(path, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200  # its own page
        assert browser.get(path, headers={"Sec-Fetch-Site": "none"}).status_code == 200  # typed or bookmarked
        for headers in [
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},  # another port of this host
            {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.test"},
            {"Origin": "http://evil.test"},  # no Sec-Fetch-Site, but another origin says who asks
            {"Origin": "http://127.0.0.1:9999"},
        ]:
            refused = browser.get(path, headers=headers)
            assert refused.status_code == 403 and not refused.content.startswith(b"%PDF"), headers


def test_the_documents_list_has_failed_and_running_uploads_with_their_state(client, service, tmp_path):
    broken = b"%PDF-1.4\n" + b"this is not really a pdf\n" * 50
    accepted = client.post("/api/uploads", files={"file": ("broken.pdf", broken, "application/pdf")})
    job = wait_for_job(client, accepted.json()["id"])
    assert job["state"] == "failed"
    listed = client.get("/api/documents").json()
    assert "broken.pdf" not in {d["name"] for d in listed["documents"]}
    pending = {p["name"]: p for p in listed["pending"]}
    assert pending["broken.pdf"]["status"] == "failed" and pending["broken.pdf"]["error"]
    assert pending["broken.pdf"]["id"] == job["id"]
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
    assert client.get("/api/documents").json()["pending"] == []
    # one being ingested shows as such, then as an indexed document and no longer pending
    started = threading.Event()
    real_ingest = service._ingest

    def slow_ingest(job):
        started.set()
        threading.Event().wait(1.0)
        real_ingest(job)

    service._ingest = slow_ingest
    pdf = make_pdf(tmp_path / "in" / "fresh.pdf", 1, title="fresh")
    accepted = client.post("/api/uploads", files={"file": ("fresh.pdf", pdf.read_bytes(), "application/pdf")})
    started.wait(10)
    states = {p["name"]: p["status"] for p in client.get("/api/documents").json()["pending"]}
    assert states["fresh.pdf"] in ("queued", "ingesting")
    assert wait_for_job(client, accepted.json()["id"])["state"] == "done"
    listed = client.get("/api/documents").json()
    assert listed["pending"] == [] and _documents(client)["fresh.pdf"]["status"] == "indexed"


def test_original_files_are_checked_two_at_a_time_and_a_long_wait_is_a_503(files_corpus, tmp_path):
    from docqa.serve.slots import Limits

    service = service_on_copy(files_corpus, tmp_path / "idx", limits=Limits(wait_s=0.2, files_in_flight=3))
    try:
        with api_client(create_app(service, make_auth())) as client:
            path = f"/api/documents/{_documents(client)['report.pdf']['id']}/file"
            held = [service.slots.files.reserve() for _ in range(2)]
            for ticket in held:
                ticket.wait(1)
            busy = client.get(path)
            assert busy.status_code == 503 and busy.headers["retry-after"]
            held.append(service.slots.files.reserve())  # now three in flight: the next is turned away at once
            assert client.get(path).status_code == 429
            for ticket in held:
                ticket.release()
            assert client.get(path).status_code == 200
    finally:
        service.close()
