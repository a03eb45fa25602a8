"""Who may talk to the server, from where: login and sessions, the Host allowlist, CSRF, headers,
paths in responses, and pre-auth error paths (FastAPI's TestClient, as a browser would send them)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')

from fastapi.testclient import TestClient  # noqa: E402
from helpers.documents import make_pdf  # noqa: E402
from helpers.serving import (  # noqa: E402
    BASE,
    TOKEN,
    api_client,
    corpus_index_fixture,
    make_auth,
    service_fixture,
)

from docqa.errors import TokenError  # noqa: E402
from docqa.serve import create_app, resolve_token  # noqa: E402
from docqa.serve.security import Auth  # noqa: E402
from docqa.serve.slots import Limits  # noqa: E402

SAME = {"Sec-Fetch-Site": "same-origin", "Origin": BASE}


corpus_index = corpus_index_fixture()
service = service_fixture(Limits(max_upload_bytes=200_000), answer_model=False)


@pytest.fixture()
def auth():
    return make_auth()


@pytest.fixture()
def browser(service, auth):
    """A TestClient logged in as a browser: it holds the session cookie, no Bearer header."""
    with TestClient(create_app(service, auth), base_url=BASE) as client:
        opened = client.get(f"/login?code={auth.login_code()}", follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert TOKEN not in cookie and "Secure" not in cookie  # never the raw token; Secure only under TLS
        page = client.get("/", headers={"Sec-Fetch-Site": "none"})
        assert page.status_code == 200 and 'name="docqa-xsrf"' in page.text
        client.xsrf = page.text.split('name="docqa-xsrf" content="', 1)[1].split('"', 1)[0]
        yield client


def _pdf(tmp_path, name="x.pdf") -> bytes:
    return make_pdf(tmp_path / "in" / name, 1, title="upload").read_bytes()


def _uploaded(service) -> list:
    return [p for p in service.uploads.glob("**/*") if p.is_file()] if service.uploads.exists() else []


def test_a_login_code_works_once_and_the_session_works_from_the_page(browser, service, auth, tmp_path):
    assert browser.get("/api/info", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    accepted = browser.post(
        "/api/uploads",
        files={"file": ("a.pdf", _pdf(tmp_path), "application/pdf")},
        headers={**SAME, "X-XSRF-Token": browser.xsrf},
    )
    assert accepted.status_code == 202
    code = auth.login_code()
    with TestClient(create_app(service, auth), base_url=BASE) as other:
        assert other.get(f"/login?code={code}", follow_redirects=False).status_code == 303
        assert other.get(f"/login?code={code}", follow_redirects=False).status_code == 401  # used up
        assert other.get(f"/login?token={TOKEN}", follow_redirects=False).status_code == 303


def test_a_foreign_host_is_refused_even_with_the_token(service, auth):
    app = create_app(service, auth)
    for base in [
        "http://evil.example:8000",
        "http://127.0.0.1.evil.example:8000",
        "http://127.0.0.1:9000",
        "http://localhost:8001",
        "http://0.0.0.0:8000",
    ]:
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            host = base.split("//", 1)[1]
            for path in ["/api/documents", "/api/info", "/", f"/login?token={TOKEN}", "/static/app.js"]:
                response = client.get(path, headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 421, (host, path, response.status_code)
                assert "/" + "docs" not in response.text
            deleted = client.delete("/api/documents/1", headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
            assert deleted.status_code == 421
    with api_client(app) as client:
        assert len(client.get("/api/documents").json()["documents"]) == 2  # nothing deleted
        for host in ["localhost:8000", "[::1]:8000", "127.0.0.1:8000"]:
            assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    allowed = create_app(service, Auth(token=TOKEN, allow_hosts=frozenset({"docqa.lan"})))
    with api_client(allowed) as client:
        assert client.get("/api/info", headers={"Host": "docqa.lan:8000"}).status_code == 200
        assert client.get("/api/info", headers={"Host": "evil.example:8000"}).status_code == 421


def test_a_cross_site_cookie_post_is_refused_and_nothing_is_ingested(browser, service, tmp_path):
    pdf = _pdf(tmp_path)
    files = {"file": ("evil.pdf", pdf, "application/pdf")}
    attempts = [
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},  # fetch(..., {mode: "no-cors"})
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:9000"},  # another port of this host
        {"Origin": "http://localhost:8000", "Sec-Fetch-Site": "same-site"},
        {},  # neither Origin nor Sec-Fetch-Site: not from this page
        {**SAME},  # the right origin, but no XSRF token: a form or no-cors fetch cannot add one
        {**SAME, "X-XSRF-Token": "forged"},
    ]
    for headers in attempts:
        response = browser.post("/api/uploads", files=files, headers=headers)
        assert response.status_code == 403, (headers, response.status_code, response.text)
        deleted = browser.delete("/api/documents/1", headers=headers)
        assert deleted.status_code == 403, headers
        asked = browser.post("/api/ask", json={"question": "q"}, headers=headers)
        assert asked.status_code == 403, headers
    assert _uploaded(service) == [] and service.jobs() == []
    assert len(service.documents()) == 2


def test_cross_site_gets_start_no_work(browser, service):
    page_id = service.search("report", 1)[0].page_id
    for site in ["cross-site", "same-site"]:  # <img src> on another site, or on another port of this host
        for path in [
            f"/api/pages/{page_id}/image?edge=2048",
            f"/api/pages/{page_id}/heatmap?q=x",
            "/api/search?q=report",
            "/api/documents",
            "/api/info",
        ]:
            response = browser.get(path, headers={"Sec-Fetch-Site": site})
            assert response.status_code == 403, (site, path)
    assert service._images == {}  # nothing was rendered
    assert browser.get(f"/api/pages/{page_id}/image", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200


def test_a_cookie_from_another_port_cannot_upload(service, auth, tmp_path):
    other = Auth(token=TOKEN)  # the server on the other port, with the very same token
    with TestClient(create_app(service, auth), base_url=BASE) as client:
        # its session cookie, under this server's cookie name, from a page of that server
        forged = {"Cookie": f"docqa_session_8000={other.new_session()}"}
        response = client.post(
            "/api/uploads",
            files={"file": ("p.pdf", _pdf(tmp_path), "application/pdf")},
            headers={**forged, **SAME, "X-XSRF-Token": other.xsrf("x")},
        )
        assert response.status_code == 401
        # and this server's own valid cookie, sent by a page on port 9000 (cookies ignore ports)
        mine = {"Cookie": f"docqa_session_8000={auth.new_session()}"}
        response = client.post(
            "/api/uploads",
            files={"file": ("p.pdf", _pdf(tmp_path), "application/pdf")},
            headers={**mine, "Origin": "http://127.0.0.1:9000", "Sec-Fetch-Site": "same-site"},
        )
        assert response.status_code == 403
    assert _uploaded(service) == []


def test_sessions_expire_and_cannot_be_forged(service):
    auth = Auth(token=TOKEN, session_s=-1)
    expired = auth.new_session()
    assert auth.session_nonce(expired) is None
    live = Auth(token=TOKEN)
    value = live.new_session()
    expires, nonce, signature = value.split(".")
    assert live.session_nonce(value) == nonce
    assert live.session_nonce(f"{int(expires) + 9999}.{nonce}.{signature}") is None
    assert live.session_nonce(f"{expires}.other.{signature}") is None
    for junk in ["", ".", "..", "a.b.c", "1.2.3.4", "9" * 300, TOKEN]:
        assert live.session_nonce(junk) is None


@pytest.mark.parametrize(
    "path",
    [
        "/?token=%E2%82%AC",
        "/login?token=%E2%82%AC",
        "/api/info?token=%E2%82%AC",
        "/login?code=%FF%FE",
        "/login?token=",
        "/login",
        "/api/search?q=%E2%82%AC",
        "/%E2%82%AC",
        "/static/%E2%82%AC",
    ],
)
def test_pre_auth_error_paths_are_4xx(service, auth, path):
    with TestClient(create_app(service, auth), base_url=BASE, raise_server_exceptions=False) as client:
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        for headers in [
            {"Cookie": b"docqa_session_8000=\xff\xfe"},
            {"Cookie": "=;;;==;"},
            {"Authorization": "Bearer"},
            {"Authorization": b"Bearer \xe2\x82\xac"},
            {"Host": "[::1"},
            {"Host": "a:b:c"},
            {"Host": "127.0.0.1:99999999"},
            {"Host": ""},
        ]:
            response = client.get(path, headers=headers)
            assert 400 <= response.status_code < 500, (path, headers, response.status_code)


def test_security_headers_on_every_response(service, auth):
    with api_client(create_app(service, auth)) as client:
        for response in [
            client.get("/"),
            client.get("/api/info"),
            client.get("/nope"),
            client.get("/api/info", headers={"Authorization": "Bearer nope"}),
            client.post("/api/ask", content=b"x" * 2_000_000, headers={"content-type": "application/json"}),
        ]:
            csp = response.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src 'self'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
        assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
        assert "cdn" not in client.get("/").text.lower()


def test_responses_carry_relative_paths_unless_asked(service, auth, corpus_index, tmp_path):
    root = str(corpus_index.parent)
    with api_client(create_app(service, auth)) as client:
        bodies = [
            client.get("/api/search", params={"q": "report", "k": 5}).text,
            client.get("/api/documents").text,
            client.get("/api/info").text,
        ]
        page_id = client.get("/api/search", params={"q": "report", "k": 1}).json()["results"][0]["page_id"]
        bodies.append(client.get(f"/api/pages/{page_id}").text)
        job = client.post("/api/uploads", files={"file": ("n.pdf", _pdf(tmp_path, "n.pdf"), "application/pdf")}).json()
        bodies.append(json.dumps(job))
        for body in bodies:
            assert root not in body and str(tmp_path) not in body, body[:300]
        paths = {d["path"] for d in client.get("/api/documents").json()["documents"]}
        assert paths == {"report.pdf", "scan.png"}
    service.absolute_paths = True
    with api_client(create_app(service, auth)) as client:
        paths = {d["path"] for d in client.get("/api/documents").json()["documents"]}
        assert all(os.path.isabs(p) and p.startswith(root) for p in paths)


def test_tokens_come_from_a_file_or_the_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert resolve_token(None, str(token_file), {}) == (TOKEN, "file")
    assert resolve_token(None, None, {"DOCQA_TOKEN": TOKEN}) == (TOKEN, "environment")
    assert resolve_token(TOKEN, None, {}) == (TOKEN, "argument")
    token, source = resolve_token(None, None, {})
    assert source == "random" and len(token) >= 40
    with pytest.raises(TokenError, match="cannot read"):
        resolve_token(None, str(tmp_path / "missing"), {})
    (tmp_path / "short").write_text("abc")
    with pytest.raises(TokenError, match="at least 16"):
        resolve_token(None, str(tmp_path / "short"), {})
