"""The HTTP API through FastAPI's TestClient: every endpoint, traversal, limits, errors (as an API
client with a Bearer token; the browser's session, Host and CSRF rules are in test_serve_security)."""

from __future__ import annotations

import io
import json
import os
import sys
import threading

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')


from helpers.documents import make_pdf  # noqa: E402
from helpers.serving import (  # noqa: E402
    TOKEN,
    api_client,
    corpus_index_fixture,
    make_auth,
    service_fixture,
    sse_events,
    wait_for_job,
)

from docqa.cli.main import main  # noqa: E402
from docqa.errors import (
    DocQAError,  # noqa: E402
    TokenError,  # noqa: E402
)
from docqa.models.generator import Generator  # noqa: E402
from docqa.serve import check_bind, create_app, require_serve_extra  # noqa: E402
from docqa.serve.security import Auth  # noqa: E402
from docqa.serve.service import Service, safe_name  # noqa: E402
from docqa.serve.slots import Limits  # noqa: E402

corpus_index = corpus_index_fixture()
service = service_fixture(Limits(max_upload_bytes=200_000, max_request_bytes=4096, max_k=20))


@pytest.fixture()
def client(service):
    with api_client(create_app(service, make_auth())) as client:
        yield client


def _first_page_id(client) -> int:
    return client.get("/api/search", params={"q": "report", "k": 1}).json()["results"][0]["page_id"]


def test_search_page_image_heatmap_and_grounding(client):
    found = client.get("/api/search", params={"q": "report revenue", "k": 3})
    assert found.status_code == 200
    results = found.json()["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert {r["name"] for r in results} == {"report.pdf", "scan.png"}
    assert results[0]["score"] >= results[-1]["score"]
    page_id = results[0]["page_id"]
    assert client.get(f"/api/pages/{page_id}").json()["page_id"] == page_id
    image = client.get(f"/api/pages/{page_id}/image", params={"edge": 256})
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(image.content)) as png:
        assert max(png.size) == 256
    heat = client.get(f"/api/pages/{page_id}/heatmap", params={"q": "report revenue"})
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    assert heat.content != client.get(f"/api/pages/{page_id}/image", params={"edge": 1024}).content
    grounding = client.get(f"/api/pages/{page_id}/grounding", params={"q": "report revenue"}).json()
    assert set(grounding) >= {"box", "box_fraction", "width", "height"}
    x0, y0, x1, y1 = grounding["box_fraction"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_search_takes_the_cli_filters(client):
    only_scan = client.get("/api/search", params={"q": "report", "k": 5, "path": "*/scan.png"}).json()["results"]
    assert [r["name"] for r in only_scan] == ["scan.png"]
    exact = client.get("/api/search", params={"q": "report", "k": 3, "exact": "true"}).json()["results"]
    default = client.get("/api/search", params={"q": "report", "k": 3}).json()["results"]
    assert [r["page_id"] for r in exact] == [r["page_id"] for r in default]
    untagged = client.get("/api/search", params={"q": "report", "where": "team=blue"}).json()["results"]
    assert untagged == []
    assert client.get("/api/search", params={"q": "report", "where": "novalue"}).status_code == 422
    assert client.get("/api/search", params={"q": "   "}).status_code == 422  # the index's QueryError


def test_info_documents_and_delete(client, service, corpus_index):
    info = client.get("/api/info").json()
    assert (info["documents"], info["pages"], info["family"]) == (2, 3, "colmodernvbert")
    assert info["limits"]["max_k"] == 20
    documents = client.get("/api/documents").json()["documents"]
    assert [d["name"] for d in documents] == ["report.pdf", "scan.png"]
    scan = documents[1]
    deleted = client.delete(f"/api/documents/{scan['id']}")
    assert deleted.status_code == 200 and deleted.json()["removed"] == [scan["path"]] == ["scan.png"]
    assert (corpus_index.parent / "docs" / "scan.png").exists()  # not an upload: the user's file is left alone
    assert all(not os.path.isabs(d["path"]) for d in documents)
    assert [d["name"] for d in client.get("/api/documents").json()["documents"]] == ["report.pdf"]
    assert client.delete(f"/api/documents/{scan['id']}").status_code == 404
    names = {r["name"] for r in client.get("/api/search", params={"q": "scan", "k": 5}).json()["results"]}
    assert names == {"report.pdf"}


def test_upload_is_sniffed_stored_under_the_index_and_ingested_in_the_background(client, service, tmp_path):
    pdf = make_pdf(tmp_path / "in" / "new.pdf", 3, title="fresh")
    accepted = client.post("/api/uploads", files={"file": ("../../evil/new.pdf", pdf.read_bytes(), "application/pdf")})
    assert accepted.status_code == 202
    job = wait_for_job(client, accepted.json()["id"])
    assert job["state"] == "done" and (job["pages_done"], job["pages_total"]) == (3, 3)
    assert job["report"]["documents"]["added"] == 1
    uploaded = [d for d in client.get("/api/documents").json()["documents"] if d["uploaded"]]
    assert len(uploaded) == 1 and uploaded[0]["pages"] == 3 and uploaded[0]["name"] == "new.pdf"
    stored = uploaded[0]["path"]
    assert stored.startswith("uploads" + os.sep) and not os.path.isabs(stored)
    stored = str(service.reader.path / stored)
    assert os.path.isfile(stored)
    assert not (tmp_path / "evil").exists()
    # the progress stream replays the finished job and ends
    events = sse_events(client.get(f"/api/jobs/{job['id']}/events").text)
    assert events[-1][0] == "done" and json.loads(events[-1][1])["state"] == "done"
    assert client.get("/api/jobs").json()["jobs"][-1]["id"] == job["id"]
    # deleting an uploaded document also deletes its stored file
    assert client.delete(f"/api/documents/{uploaded[0]['id']}").status_code == 200
    assert not os.path.exists(stored)


def test_upload_refuses_what_is_not_a_document_and_what_is_too_big(client, service):
    html = client.post("/api/uploads", files={"file": ("page.pdf", b"<!doctype html><p>hi", "application/pdf")})
    assert html.status_code == 415 and "HTML" in html.json()["error"]
    big = client.post("/api/uploads", files={"file": ("big.pdf", b"%PDF-1.4" + b"0" * 300_000, "application/pdf")})
    assert big.status_code == 413 and "limit" in big.json()["error"]
    empty = client.post("/api/uploads", files={"file": ("e.pdf", b"", "application/pdf")})
    assert empty.status_code == 415
    assert client.post("/api/uploads").status_code == 422
    assert [p for p in service.uploads.rglob("*") if p.is_file()] == []  # nothing refused was kept, no temp file


@pytest.mark.parametrize(
    "name,expected",
    [
        ("../../etc/passwd.pdf", "passwd.pdf"),
        ("/abs/path/x.pdf", "x.pdf"),
        ("..\\..\\win.pdf", "win.pdf"),
        ("a\x00b.pdf", "ab.pdf"),
        ("..", "upload.pdf"),
        (".hidden", "hidden.pdf"),
        ("ré sumé;rm -rf.pdf", "r_ sum_rm -rf.pdf"),
    ],
)
def test_upload_names_never_leave_their_folder(name, expected):
    assert safe_name(name, "pdf") == expected


TRAVERSALS = [
    "/api/pages/..%2F..%2Fetc%2Fpasswd/image",
    "/api/pages/../../etc/passwd/image",
    "/api/pages/%2Fetc%2Fpasswd/image",
    "/api/pages//etc/passwd/image",
    "/api/pages/1%00/image",
    "/api/pages/%00/image",
    "/api/pages/-1/image",
    "/api/pages/0/image",
    "/api/pages/1e3/image",
    "/api/pages/99999999999999999999999999/image",
    "/api/pages/%252e%252e%252fetc/image",
    "/static/..%2Fservice.py",
    "/static/../app.py",
    "/static/%2E%2E/service.py",
    "/static/app.js%00.py",
    "/static/%2Fetc%2Fpasswd",
    "/api/jobs/..%2F1",
    "/api/jobs/%00",
    "/api/jobs/%2Fetc%2Fpasswd/events",
]


def test_traversal_attempts_fail_closed(client):
    for path in TRAVERSALS:
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert b"import" not in response.content and b"root:" not in response.content, path
    for path in ["/api/documents/..%2F1", "/api/documents/%2Fetc%2Fpasswd", "/api/documents/1%00"]:
        assert 400 <= client.delete(path).status_code < 500, path
    assert client.get("/api/documents").json()["documents"]  # nothing was deleted


def test_a_symlinked_or_changed_source_is_refused(client, service, tmp_path):
    page_id = _first_page_id(client)
    source = str(service.page(page_id).file)
    secret = tmp_path / "secret.pdf"
    make_pdf(secret, 2, title="secret")
    os.replace(source, source + ".moved")
    try:
        os.symlink(secret, source)  # the indexed path now points somewhere else
        refused = client.get(f"/api/pages/{page_id}/image", params={"edge": 300})
        assert refused.status_code == 409 and "changed since it was indexed" in refused.json()["error"]
        assert client.get(f"/api/pages/{page_id}/heatmap", params={"q": "x"}).status_code == 409
    finally:  # the corpus is shared by this module's tests
        os.unlink(source)
        os.replace(source + ".moved", source)


def test_a_symlink_planted_at_the_upload_target_is_replaced_not_followed(client, service, tmp_path):
    pdf = make_pdf(tmp_path / "in" / "plant.pdf", 1, title="plant")
    import hashlib

    folder = service.uploads / hashlib.sha256(pdf.read_bytes()).hexdigest()[:16]
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    os.symlink(outside, folder / "plant.pdf")
    accepted = client.post("/api/uploads", files={"file": ("plant.pdf", pdf.read_bytes(), "application/pdf")})
    assert wait_for_job(client, accepted.json()["id"])["state"] == "done"
    assert outside.read_text() == "keep me" and not (folder / "plant.pdf").is_symlink()


def test_limits_and_malformed_input_get_clear_4xx(client):
    assert client.get("/api/search", params={"q": "x", "k": 21}).json()["error"].startswith("k: ")
    assert client.get("/api/search", params={"q": "x", "k": 0}).status_code == 422
    assert client.get("/api/search", params={"q": "x", "k": "ten"}).status_code == 422
    assert client.get("/api/search", params={"q": "x" * 1001}).status_code == 422
    assert client.get("/api/search").json()["error"] == "q: Field required"
    assert client.get("/api/pages/1/image", params={"edge": 99999}).status_code == 422
    bad_json = client.post("/api/ask", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422 and "error" in bad_json.json()
    assert client.post("/api/ask", json={"question": "q", "k": 99}).status_code == 422
    assert client.post("/api/ask", json={"question": "q", "extra": 1}).status_code == 422
    assert client.post("/api/ask", json={"question": ""}).status_code == 422
    huge = client.post(
        "/api/ask", content=b'{"question": "' + b"x" * 10_000 + b'"}', headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413
    assert client.get("/api/pages/424242/image").status_code == 404
    assert client.get("/api/jobs/424242").status_code == 404
    assert client.get("/no/such/route").status_code == 404
    assert client.put("/api/search").status_code == 405


def test_ask_streams_the_answer_then_citations_with_boxes(client):
    response = client.post("/api/ask", json={"question": "what is the report about", "k": 2, "max_new_tokens": 6})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "pages" and names[-2:] == ["citations", "done"]
    assert set(names[1:-2]) <= {"token"}
    pages = json.loads(events[0][1])["pages"]
    citations = json.loads(events[-2][1])["citations"]
    assert [c["page_id"] for c in citations] == [p["page_id"] for p in pages] and len(pages) == 2
    for citation in citations:
        assert set(citation) >= {"page_id", "path", "page", "score", "cited", "box"}
        if citation["box"] is not None:
            x0, y0, x1, y1 = citation["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    done = json.loads(events[-1][1])
    streamed = "".join(json.loads(data)["text"] for name, data in events if name == "token")
    assert done["answer"] == streamed


def test_concurrent_questions_share_one_answer_model(client, monkeypatch):
    loads = []
    real_load = Generator.load.__func__

    def counting_load(cls, *args, **kwargs):
        loads.append(args)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(Generator, "load", classmethod(counting_load))
    statuses = []

    def ask() -> None:
        statuses.append(client.post("/api/ask", json={"question": "report", "k": 1, "max_new_tokens": 2}).status_code)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [200, 200, 200] and len(loads) == 1


def test_ask_on_an_empty_index_is_a_404(tmp_path, retriever_checkpoint):
    service = Service(tmp_path / "empty", model=str(retriever_checkpoint), device="cpu")
    try:
        with api_client(create_app(service, make_auth())) as client:
            response = client.post("/api/ask", json={"question": "anything"})
            assert response.status_code == 404 and "upload" in response.json()["error"]
            assert client.get("/api/search", params={"q": "x"}).json()["results"] == []
            assert client.get("/api/documents").json()["documents"] == []
    finally:
        service.close()


def test_page_and_openapi_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {
        "/api/search",
        "/api/ask",
        "/api/uploads",
        "/api/documents",
        "/api/pages/{page_id}/image",
        "/api/pages/{page_id}/heatmap",
        "/api/jobs/{job_id}",
        "/api/info",
    } <= set(schema["paths"])
    assert client.get("/docs").status_code == 404  # no Swagger UI: it would load scripts from a CDN


def test_token_is_required_everywhere(service):
    with api_client(create_app(service, make_auth())) as client:
        client.headers.pop("Authorization")
        for path in ["/static/app.js", "/openapi.json", "/api/info", "/api/search?q=x", "/api/documents"]:
            response = client.get(path)
            assert response.status_code == 401 and "token" in response.json()["error"], path
        assert client.get("/").status_code == 401 and "login" in client.get("/").text
        assert client.post("/api/uploads", files={"file": ("a.pdf", b"%PDF-1.4", "application/pdf")}).status_code == 401
        assert client.get("/api/info", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert client.get("/api/info", headers={"Authorization": f"Bearer {TOKEN[:-1]}"}).status_code == 401
        assert client.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/api/info", headers={"X-DocQA-Token": TOKEN}).status_code == 401  # Bearer only
        assert client.get(f"/api/info?token={TOKEN}").status_code == 401  # never in a URL but /login's
        assert list(service.uploads.glob("**/*.pdf")) == []


def test_short_tokens_are_refused():
    with pytest.raises(TokenError, match="at least 16"):
        Auth(token="a")
    with pytest.raises(TokenError):
        Auth(token="sixteen chars ok")  # spaces
    assert len(Auth().token) >= 40  # the default is random


def test_binding_beyond_localhost_needs_tls_or_insecure(capsys):
    check_bind("127.0.0.1", tls=False)
    check_bind("0.0.0.0", tls=True)
    check_bind("0.0.0.0", tls=False, insecure=True)
    with pytest.raises(DocQAError, match="--certfile"):
        check_bind("0.0.0.0", tls=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--certfile" in err
    assert main(["serve", "--token", "short", "--port", "8999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 16" in err


def test_missing_serve_extra_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(DocQAError, match=r'pip install "docqa\[serve\]"'):
        require_serve_extra()
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "docqa[serve]"' in err
