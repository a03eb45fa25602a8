"""Shared set-up for the server tests: a Service over a tiny indexed corpus, and job waiting."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from docqa.api import DocIndex
from docqa.serve.security import Auth
from docqa.serve.service import Service
from docqa.serve.slots import Limits
from helpers.documents import make_image, make_pdf


def build_corpus_index(root: Path, retriever_checkpoint: Path) -> Path:
    """An index holding report.pdf (2 pages) and scan.png, built with the tiny retriever; returns its folder."""
    docs = root / "docs"
    make_pdf(docs / "report.pdf", 2, title="report")
    make_image(docs / "scan.png", text="scan")
    index = DocIndex.open(root / "idx", create=True)
    index.ingest([docs], model=str(retriever_checkpoint), device="cpu")
    index.close()
    return root / "idx"


def service_on_copy(
    template: Path, target: Path, *, answer_model: Path | None = None, limits: Limits | None = None
) -> Service:
    """A service over a fresh copy of the index folder ``template`` (its documents stay where they are)."""
    shutil.copytree(template, target)
    return Service(target, device="cpu", answer_model=str(answer_model) if answer_model else None, limits=limits)


def wait_for_job(client, job_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


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
def running_server(app, limits=None, lifespan="off"):
    """uvicorn in a thread on an ephemeral 127.0.0.1 port, configured as `docqa serve` runs it
    (read timeouts, per-client connection limit; ``lifespan="on"`` as `docqa mcp` runs it); yields
    the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    import uvicorn

    from docqa.serve.transport import server_config

    server = uvicorn.Server(server_config(app, port=0, limits=limits, lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
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
