"""Shared set-up for the server tests (docqa serve, mcp, daemon): a tiny indexed corpus and a Service
over a copy of it (as fixtures), a server on a loopback port, the token, and waiting for things."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from docqa.api import DocIndex
from docqa.serve.security import Auth
from docqa.serve.service import Service
from docqa.serve.slots import Limits
from helpers.documents import make_image, make_pdf
from helpers.paths import REPO


def build_corpus_index(root: Path, retriever_checkpoint: Path) -> Path:
    """An index holding report.pdf (2 pages) and scan.png, built with the tiny retriever; returns its folder."""
    docs = root / "docs"
    make_pdf(docs / "report.pdf", 2, title="report")
    make_image(docs / "scan.png", text="scan")
    index = DocIndex.open(root / "idx", create=True)
    index.ingest([docs], model=str(retriever_checkpoint), device="cpu")
    index.close()
    return root / "idx"


def corpus_index_fixture(name: str = "corpus_index"):
    """A module fixture named ``name`` (``corpus_index = corpus_index_fixture()`` in a test module):
    the corpus of build_corpus_index, built once for the module."""

    @pytest.fixture(scope="module", name=name)
    def corpus_index(tmp_path_factory, retriever_checkpoints) -> Path:
        return build_corpus_index(tmp_path_factory.mktemp(name), retriever_checkpoints["colmodernvbert"])

    return corpus_index


def service_fixture(limits: Limits | None = None, *, answer_model: bool = True):
    """A fixture ``service`` (``service = service_fixture(Limits(...))``): for each test, a Service
    over a fresh copy of the module's ``corpus_index``, with the tiny answer model unless
    ``answer_model=False``; closed after the test."""

    @pytest.fixture(name="service")
    def service(request, tmp_path, corpus_index):
        model = request.getfixturevalue("generator_checkpoints")["idefics3"] if answer_model else None
        made = service_on_copy(corpus_index, tmp_path / "idx", answer_model=model, limits=limits)
        yield made
        made.close()

    return service


def service_on_copy(
    template: Path, target: Path, *, answer_model: Path | None = None, limits: Limits | None = None
) -> Service:
    """A service over a fresh copy of the index folder ``template`` (its documents stay where they are)."""
    shutil.copytree(template, target)
    return Service(target, device="cpu", answer_model=str(answer_model) if answer_model else None, limits=limits)


def wait_until(predicate, timeout_s: float, what: str):
    """``predicate()``'s first true value, asked every 0.1 s; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def wait_for_job(client, job_id: str, timeout_s: float = 60.0) -> dict:
    def finished() -> dict | None:
        job = client.get(f"/api/jobs/{job_id}").json()
        return job if job["state"] in ("done", "failed", "cancelled") else None

    return wait_until(finished, timeout_s, f"job {job_id} finishing")


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields.get("event", "message"), fields.get("data", "")))
    return events


TOKEN = "test-token-0123456789abcdef"
BASE = "http://127.0.0.1:8000"  # what TestClient clients pretend to talk to (the Host check needs a local name)


def make_auth() -> Auth:
    return Auth(token=TOKEN)


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def api_client(app, **kwargs):
    """A TestClient that authenticates like an API client (Bearer token), on a local Host."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=BASE, headers=bearer(), **kwargs)


@contextmanager
def running_server(app, limits=None, lifespan="off", certfile: str | None = None, keyfile: str | None = None):
    """uvicorn in a thread on an ephemeral 127.0.0.1 port, configured as `docqa serve` runs it
    (read timeouts, per-client connection limit; TLS with ``certfile``/``keyfile``; ``lifespan="on"``
    as `docqa mcp` runs it); yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    import uvicorn

    from docqa.serve.transport import server_config

    config = server_config(app, port=0, limits=limits, lifespan=lifespan, certfile=certfile, keyfile=keyfile)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    try:
        yield f"{'https' if certfile else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def authenticated(app):
    """``app`` as an API client with the token sees it, on a local Host: the ASGI scope gets the
    Bearer header, Host 127.0.0.1:8000 and that server address (for tools that bring their own client)."""
    token_header = (b"authorization", f"Bearer {TOKEN}".encode())

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k not in (b"host", b"authorization")]
            scope = {
                **scope,
                "server": ("127.0.0.1", 8000),
                "headers": [(b"host", b"127.0.0.1:8000"), token_header, *headers],
            }
        await app(scope, receive, send)

    return wrapped


def free_port() -> int:
    """A loopback port nobody listens on now (for a server process of a test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(index: Path, port: int, token_file: Path, log: Path, *flags: str) -> subprocess.Popen:
    """A real `docqa serve` process over ``index`` on 127.0.0.1:``port`` (its output appended to ``log``)."""
    code = "import sys; from docqa.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = ["serve", "--index", str(index), "--port", str(port), "--token-file", str(token_file), "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-c", code, *command, *flags], stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env
    )


def wait_up(http, process: subprocess.Popen, log: Path) -> None:
    """Until ``http`` (an httpx client with the token) gets /api/info from ``process``; AssertionError with the log's tail."""
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            if http.get("/api/info").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"the server did not come up: {log.read_text()[-2000:]}")
