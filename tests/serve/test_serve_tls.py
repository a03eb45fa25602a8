"""TLS: --certfile/--keyfile serve https on 127.0.0.1 with a self-signed certificate made here by
openssl; the session cookie is Secure under TLS, and plain http to the TLS port gets nothing."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')
httpx = pytest.importorskip("httpx")

from helpers.serving import bearer, make_auth, running_server  # noqa: E402

from docqa.serve import create_app  # noqa: E402
from docqa.serve.service import Service  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def test_https_with_a_secure_session_cookie(tmp_path, retriever_checkpoint):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    service = Service(tmp_path / "idx", model=str(retriever_checkpoint), device="cpu")
    auth = make_auth()
    try:
        with running_server(create_app(service, auth), certfile=str(cert), keyfile=str(key)) as base:
            assert base.startswith("https://127.0.0.1:")
            with httpx.Client(base_url=base, verify=str(cert), timeout=30) as http:
                assert http.get("/api/info", headers=bearer()).status_code == 200
                login = http.get(f"/login?code={auth.login_code()}", follow_redirects=False)
                assert login.status_code == 303 and "Secure" in login.headers["set-cookie"]
            with pytest.raises(httpx.HTTPError):
                httpx.get(base.replace("https://", "http://") + "/api/info", headers=bearer(), timeout=5)
    finally:
        service.close()
