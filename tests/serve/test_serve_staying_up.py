"""Hostile clients against a real uvicorn on 127.0.0.1, configured as `docqa serve` runs it: cut-off
answer streams, piles of event streams, slow sockets and short bodies. The server must keep
answering everyone else. Every loop is bounded in count and time; traffic stays on loopback.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')
httpx = pytest.importorskip("httpx")

from helpers.documents import make_pdf  # noqa: E402
from helpers.serving import (  # noqa: E402
    TOKEN,
    bearer,
    corpus_index_fixture,
    make_auth,
    running_server,
    service_fixture,
    sse_events,
)

from docqa.serve import create_app  # noqa: E402
from docqa.serve.slots import Limits  # noqa: E402
from docqa.serve.transport import SocketLimits  # noqa: E402

corpus_index = corpus_index_fixture()
service = service_fixture(Limits(event_streams=8, asks_waiting=2, ask_wait_s=60))


def _raw(base: str, request: bytes, timeout_s: float = 5.0) -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
    sock.sendall(request)
    return sock


def _request(method: str, path: str, base: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    host = urlsplit(base).netloc
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        f"Authorization: Bearer {TOKEN}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_headers(sock: socket.socket, timeout_s: float = 60.0) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    for _ in range(10_000):
        if b"\r\n\r\n" in data:
            break
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _ask(http: httpx.Client) -> tuple[int, list[str]]:
    response = http.post("/api/ask", json={"question": "what is the report about", "k": 1, "max_new_tokens": 3})
    return response.status_code, [name for name, _ in sse_events(response.text)]


def test_cut_off_asks_never_keep_the_answer_model(service):
    with running_server(create_app(service, make_auth())) as base:
        ask = _request(
            "POST",
            "/api/ask",
            base,
            json.dumps({"question": "report", "k": 1, "max_new_tokens": 64}).encode(),
            {"Content-Type": "application/json"},
        )
        for _ in range(3):  # dropped right after the response's headers, as in the issue
            sock = _raw(base, ask)
            assert _read_headers(sock).startswith(b"HTTP/1.1 200")
            sock.close()
        sock = _raw(base, ask)  # and one dropped before the server could answer at all
        sock.close()
        with httpx.Client(base_url=base, headers=bearer(), timeout=60) as http:
            for _ in range(10):
                status, names = _ask(http)
                assert status == 200 and names[-1] == "done", names
            deadline = time.monotonic() + 10
            while service.slots.asks.stats()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert service.slots.asks.stats() == {"used": 0, "capacity": 1, "in_flight": 0}


def test_too_many_asks_are_told_to_come_back(service, monkeypatch):
    with running_server(create_app(service, make_auth())) as base:
        gate = threading.Event()
        real = service._answer

        def slow(*args, **kwargs):
            gate.wait(30)
            yield from real(*args, **kwargs)

        monkeypatch.setattr(service, "_answer", slow)
        results: list[int] = []

        def one() -> None:
            with httpx.Client(base_url=base, headers=bearer(), timeout=60) as http:
                results.append(_ask(http)[0])

        threads = [threading.Thread(target=one) for _ in range(3)]  # one answering + two waiting: the line is full
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while service.slots.asks.stats()["in_flight"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        with httpx.Client(base_url=base, headers=bearer(), timeout=10) as http:
            refused = http.post("/api/ask", json={"question": "report", "k": 1, "max_new_tokens": 2})
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
            started = time.monotonic()
            assert http.get("/api/info").status_code == 200 and time.monotonic() - started < 2
        gate.set()
        for thread in threads:
            thread.join(timeout=120)
        assert results == [200, 200, 200]


def test_event_streams_are_bounded_and_released(service, tmp_path):
    pdf = make_pdf(tmp_path / "in" / "queued.pdf", 1, title="queued").read_bytes()
    with (
        running_server(create_app(service, make_auth())) as base,
        httpx.Client(base_url=base, headers=bearer(), timeout=10) as http,
    ):
        assert service._write.acquire(timeout=10)  # the writer is busy: the job stays unfinished
        try:
            job = http.post("/api/uploads", files={"file": ("queued.pdf", pdf, "application/pdf")}).json()
            events = _request("GET", f"/api/jobs/{job['id']}/events", base)
            socks = [_raw(base, events) for _ in range(12)]
            heads = [_read_headers(sock, 10) for sock in socks]
            assert sum(h.startswith(b"HTTP/1.1 200") for h in heads) == 8  # Limits(event_streams=8)
            assert sum(h.startswith(b"HTTP/1.1 429") for h in heads) == 4
            started = time.monotonic()
            assert http.get("/api/info").status_code == 200 and time.monotonic() - started < 2
            for sock in socks:
                sock.close()
            deadline = time.monotonic() + 10
            while service.slots.streams.stats()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert service.slots.streams.stats()["in_flight"] == 0  # every cut-off stream gave its place back
        finally:
            service._write.release()
        with http.stream("GET", f"/api/jobs/{job['id']}/events", timeout=60) as stream:
            assert stream.status_code == 200
            text = "".join(stream.iter_text())
        assert sse_events(text)[-1][0] == "done"


def test_slow_sockets_do_not_lock_out_a_normal_client(service):
    limits = SocketLimits(header_timeout_s=6.0, body_timeout_s=1.0, max_per_client=32)
    with running_server(create_app(service, make_auth()), limits=limits) as base:
        host = urlsplit(base).netloc
        slow = []
        for _ in range(64):  # slowloris: a request line and one header byte at a time
            sock = _raw(base, f"GET /api/info HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
            slow.append(sock)
        stop = time.monotonic() + 4
        with httpx.Client(base_url=base, headers=bearer(), timeout=5) as http:
            for _ in range(8):  # bounded; meanwhile the slow ones keep dribbling
                for sock in slow:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass
                started = time.monotonic()
                response = http.get("/api/info", headers={"Connection": "close"})
                assert response.status_code == 200 and time.monotonic() - started < 2
                if time.monotonic() > stop:
                    break
                time.sleep(0.5)
        # after the header timeout, none of them is still held open
        time.sleep(limits.header_timeout_s + 1)
        open_ones = 0
        for sock in slow:
            sock.settimeout(0.5)
            try:
                sock.send(b"a")
                open_ones += sock.recv(1) != b""
            except (TimeoutError, OSError):
                pass
            sock.close()
        assert open_ones == 0


def test_a_body_shorter_than_its_content_length_is_dropped_fast(service):
    limits = SocketLimits(body_timeout_s=1.0)
    with running_server(create_app(service, make_auth()), limits=limits) as base:
        host = urlsplit(base).netloc
        sock = _raw(
            base,
            (
                f"POST /api/ask HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"question"'
            ).encode(),
        )
        started = time.monotonic()
        sock.settimeout(10)
        data = b""
        for _ in range(100):
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        held = time.monotonic() - started
        sock.close()
        assert held < limits.body_timeout_s + 2, held  # today: held for 40 s and more
        assert not data.startswith(b"HTTP/1.1 200")
        with httpx.Client(base_url=base, headers=bearer(), timeout=5) as http:
            assert http.get("/api/info").status_code == 200
