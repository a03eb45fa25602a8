#!/usr/bin/env python3
"""Issue 17's "Tests must show" findings as black-box HTTP probes against a real `docqa serve`.

It shows the server-security findings fail on the old server (commit 4194998, the last one before
the server rewrite 66a1a5c) and pass on a newer one; the results of one such run are in
benchmarks/results/server-probes.md. The probes only speak HTTP (and raw sockets) to the server,
so the same probes run against either tree's code. Everything is on 127.0.0.1: every server it
starts binds 127.0.0.1 only, `probe` refuses a base URL that is not loopback, every loop is bounded
in count and in seconds, and every process it starts is stopped by its own id. What a browser
would add (Origin, Sec-Fetch-Site, cookies) is added by hand, worst case for the server (the
cookie is sent even where SameSite would withhold it).

This is not part of the test suite: no test imports it (scripts/ is not on the test path) and CI
does not run it. A full `drive` of both trees takes many minutes. Needs httpx (a test dependency).

Subcommands:

  setup OUT --kind old|new   build, with ONE tree's own code and test helpers, a tiny retriever
      (colmodernvbert), a tiny answer model (idefics3) and a tiny index template (report.pdf, 2
      pages, plus scan.png) under OUT, and the probe inputs under OUT/inputs: small.pdf, six.pdf,
      forty.pdf, the 10,000-page huge.pdf and the 9400x9400 huge.png (as
      tests/serve/test_serve_render_memory.py draws it). Run it in the tree, with
      PYTHONPATH=<tree>:<tree>/tests: the new tree's helpers import as `helpers.NAME`
      (--kind new), the old tree's tests import `tiny_retrievers` etc. directly (--kind old).

  drive --tree TREE --kind old|new --work OUT [--probes a,b] [--results FILE]
      for each probe, start a fresh
      `nice -n 5 python3 -m docqa serve --index COPY --host 127.0.0.1 --port FREE --device cpu
      --answer-model OUT/generator` in TREE (PYTHONPATH=TREE) on a copy of OUT/idx_template, run
      the probe, and stop the server (SIGTERM, then SIGKILL after 10 s, recording which it took).
      One JSON line per probe on stdout; server logs under OUT/runs/. --kind says how to start the
      server and how a legitimate client authenticates (old: no token, as its README's default,
      except --token for the cookie probe; new: --token-file, Bearer for API clients, the printed
      one-time login URL for the browser).

  probe NAME --base http://127.0.0.1:PORT [--token T] [--login-code C] [--index-dir IDX]
        [--pid PID] [--inputs DIR]
      one probe against a server already running on loopback (the probes that restart a server or
      start a second one need `drive`).

Reproduce (from the root of a checkout of the commit under test; OLD and NEW are throwaway
worktrees, WORK any scratch folder):

  S=$PWD/scripts/serve_probes.py OLD=/work/wt/oldserve NEW=/work/wt/newserve WORK=/tmp/serve-probes
  git worktree add --detach $OLD 4194998
  git worktree add --detach $NEW HEAD    # or the commit under test
  export DOCQA_ENGINE=torch HF_HUB_OFFLINE=1 DOCQA_DAEMON=off OMP_NUM_THREADS=1
  (cd $OLD && DOCQA_HOME=$WORK/old/home PYTHONPATH=$OLD:$OLD/tests python3 $S setup $WORK/old --kind old)
  (cd $NEW && DOCQA_HOME=$WORK/new/home PYTHONPATH=$NEW:$NEW/tests python3 $S setup $WORK/new --kind new)
  P=foreign_host,cross_site_post,cookie_other_port,failed_upload,kill9,cut_off_ask,slow_sockets,huge_upload,huge_upload_cancel,big_renders
  python3 $S drive --tree $OLD --kind old --work $WORK/old --probes $P > $WORK/old_run.log
  python3 $S drive --tree $NEW --kind new --work $WORK/new --probes $P > $WORK/new_run.log
  git worktree remove --force $OLD; git worktree remove --force $NEW
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

TOKEN = "probe-token-0123456789abcdef"
GB = 1024**3


# --------------------------------------------------------------------------------------------------
@dataclass
class Target:
    base: str
    token: str | None = None  # Bearer token a legitimate API client sends (None: the server needs none)
    login_code: str | None = None  # new server: the one-time login code it printed (browser login)
    index_dir: Path | None = None
    pid: int | None = None
    inputs: Path | None = None
    kind: str = "?"
    notes: list = field(default_factory=list)

    @property
    def host(self) -> str:
        return urlsplit(self.base).netloc

    @property
    def port(self) -> int:
        return urlsplit(self.base).port

    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, timeout: float = 30.0, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.auth(), timeout=timeout, **kw)

    def uploads_files(self) -> list[str]:
        if self.index_dir is None:
            return []
        root = self.index_dir / "uploads"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def raw(target: Target, data: bytes, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=timeout_s)
    sock.sendall(data)
    return sock


def request_bytes(target: Target, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in {**target.auth(), **(headers or {})}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_headers(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        for _ in range(10_000):
            if b"\r\n\r\n" in data:
                break
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, OSError):
        pass
    return data


def sse_names(text: str) -> list[str]:
    return [line[7:].strip() for line in text.splitlines() if line.startswith("event: ")]


def wait_job(http: httpx.Client, job_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    job = {}
    while time.monotonic() < deadline:
        job = http.get(f"/api/jobs/{job_id}").json()
        if job.get("state") in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.25)
    return {**job, "_timed_out": True}


def rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def browser_session(target: Target) -> tuple[dict, str | None]:
    """What the victim's browser holds after logging in as the server intends: (cookies, xsrf token).
    Old server without a token: nothing (it needs none). New: the printed one-time login URL."""
    cookies: dict = {}
    xsrf = None
    with httpx.Client(base_url=target.base, timeout=30) as http:
        if target.login_code:
            opened = http.get(f"/login?code={target.login_code}", follow_redirects=False)
            cookies = dict(opened.cookies)
            page = http.get("/", headers={"Sec-Fetch-Site": "none"}, cookies=cookies)
            found = re.search(r'name="docqa-xsrf" content="([^"]*)"', page.text)
            xsrf = found.group(1) if found else None
            target.notes.append(f"login: {opened.status_code}, cookie names {sorted(cookies)}, page {page.status_code}")
        elif target.token:  # old server with --token: /?token=T sets the docqa_token cookie
            opened = http.get(f"/?token={target.token}")
            cookies = dict(opened.cookies)
            target.notes.append(f"/?token=: {opened.status_code}, cookies {cookies}")
    return cookies, xsrf


def docs(target: Target) -> list[dict]:
    with target.client() as http:
        return http.get("/api/documents").json()["documents"]


def pdf_bytes(target: Target, name: str) -> bytes:
    return (target.inputs / name).read_bytes()


# --------------------------------------------------------------------------------------------------
# The probes. Each returns (passed, details); passed means "the finding is fixed on this server".


def probe_cut_off_ask(t: Target) -> tuple[bool, dict]:
    """1. Three asks dropped right after the response headers, one dropped before any answer; then 10 asks."""
    body = json.dumps({"question": "report", "k": 1, "max_new_tokens": 64}).encode()
    ask = request_bytes(t, "POST", "/api/ask", body, {"Content-Type": "application/json"})
    heads = []
    for _ in range(3):
        sock = raw(t, ask, 60)
        heads.append(read_headers(sock, 60).split(b"\r\n", 1)[0].decode(errors="replace"))
        sock.close()
    raw(t, ask).close()
    results = []
    misses = 0
    with t.client(timeout=20) as http:
        for _ in range(10):
            started = time.monotonic()
            try:
                response = http.post(
                    "/api/ask", json={"question": "what is the report about", "k": 1, "max_new_tokens": 3}
                )
                names = sse_names(response.text)
                results.append(
                    [response.status_code, names[-1] if names else None, round(time.monotonic() - started, 2)]
                )
                misses = 0
            except httpx.TimeoutException:
                results.append(["timeout>20s", None, round(time.monotonic() - started, 2)])
                misses += 1
                if misses >= 2:  # bounded: two hung asks in a row are enough to show it
                    break
    info = time_get(t, "/api/info", 5)
    answered = sum(1 for r in results if r[0] == 200 and r[1] == "done")
    return answered == 10, {"cut_off_heads": heads, "asks": results, "answered": f"{answered}/10", "info_after": info}


def time_get(t: Target, path: str, timeout: float) -> list:
    started = time.monotonic()
    try:
        with t.client(timeout=timeout) as http:
            code = http.get(path, headers={"Connection": "close"}).status_code
    except httpx.HTTPError as error:
        code = type(error).__name__
    return [code, round(time.monotonic() - started, 2)]


def probe_slow_sockets(t: Target) -> tuple[bool, dict]:
    """3. 64 slowloris sockets while a normal client asks /api/info (must be 200 within 2 s); then the
    slow ones after the header timeout; then a body shorter than its Content-Length."""
    slow = []
    for _ in range(64):
        try:
            slow.append(raw(t, f"GET /api/info HTTP/1.1\r\nHost: {t.host}\r\nX-Slow: ".encode()))
        except OSError:
            pass
    normal = []
    stop = time.monotonic() + 6
    for _ in range(10):
        for sock in slow:
            try:
                sock.send(b"a")
            except OSError:
                pass
        normal.append(time_get(t, "/api/info", 5))
        if time.monotonic() > stop:
            break
        time.sleep(0.5)
    time.sleep(11)  # past the new server's 10 s header timeout
    still_open = 0
    for sock in slow:
        sock.settimeout(0.5)
        try:
            sock.send(b"a")
            still_open += sock.recv(1) != b""
        except TimeoutError:
            still_open += 1  # no answer and not closed: still held
        except OSError:
            pass
        sock.close()
    # a body shorter than its Content-Length
    sock = raw(
        t,
        (
            f"POST /api/ask HTTP/1.1\r\nHost: {t.host}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in t.auth().items())
            + 'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"question"'
        ).encode(),
    )
    started = time.monotonic()
    sock.settimeout(1)
    data = b""
    for _ in range(30):  # at most 30 s
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            break
    held = round(time.monotonic() - started, 1)
    sock.close()
    ok_normal = all(code == 200 and s < 2 for code, s in normal)
    passed = ok_normal and still_open == 0 and held < 12
    return passed, {
        "slow_sockets_opened": len(slow),
        "normal_client": normal,
        "slow_still_open_after_11s": still_open,
        "short_body_held_s": held if held < 29 else f">={held} (probe stopped waiting)",
        "short_body_answer": data.split(b"\r\n", 1)[0].decode(errors="replace"),
    }


def probe_foreign_host(t: Target) -> tuple[bool, dict]:
    """2a. DNS rebinding: Host evil.example:PORT reads documents/paths/images and deletes a document."""
    before = docs(t)
    page_id = first_page_id(t)
    out = {}
    passed = True
    tries = [("no token", {})] + ([("with the valid token", t.auth())] if t.token else [])
    hosts = [f"evil.example:{t.port}", f"127.0.0.1.evil.example:{t.port}"]
    with httpx.Client(base_url=t.base, timeout=20) as http:
        for host in hosts:  # reads first
            for label, auth in tries:
                h = {"Host": host, **auth}
                got = http.get("/api/documents", headers=h)
                img = http.get(f"/api/pages/{page_id}/image", headers=h)
                absolute = None
                if got.status_code == 200:
                    absolute = any(os.path.isabs(d["path"]) for d in got.json()["documents"])
                out[f"{host} ({label})"] = {
                    "GET /api/documents": got.status_code,
                    "absolute_paths_in_it": absolute,
                    "GET page image": [img.status_code, img.headers.get("content-type")],
                }
                passed &= got.status_code >= 400 and img.status_code >= 400
        for host in hosts:  # then one delete per Host
            for label, auth in tries:
                current = docs(t)
                if not current:
                    break
                deleted = http.delete(f"/api/documents/{current[-1]['id']}", headers={"Host": host, **auth})
                out[f"{host} ({label})"]["DELETE /api/documents/ID"] = deleted.status_code
                passed &= deleted.status_code >= 400
    out["documents_left_of_2"] = len(docs(t))
    return passed and out["documents_left_of_2"] == len(before) == 2, out


def first_page_id(t: Target) -> int:
    with t.client() as http:
        return http.get("/api/search", params={"q": "report", "k": 1}).json()["results"][0]["page_id"]


def probe_cross_site_post(t: Target) -> tuple[bool, dict]:
    """2b. A cross-site no-cors multipart POST to /api/uploads (with the victim's cookie where it has one)."""
    cookies, xsrf = browser_session(t)
    pdf = pdf_bytes(t, "small.pdf")
    attempts = {
        "fetch no-cors from http://evil.example": {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
        "Origin null (sandboxed iframe / form)": {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        "no Origin, no Sec-Fetch-Site": {},
        "same-origin headers but no XSRF token": {"Sec-Fetch-Site": "same-origin", "Origin": t.base},
    }
    out = {}
    with httpx.Client(base_url=t.base, timeout=30) as http:
        for label, headers in attempts.items():
            r = http.post(
                "/api/uploads", files={"file": ("evil.pdf", pdf, "application/pdf")}, headers=headers, cookies=cookies
            )
            out[label] = r.status_code
        page_id = first_page_id(t)
        img = http.get(
            f"/api/pages/{page_id}/image?edge=2048",
            cookies=cookies,
            headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "image"},
        )
        out["<img> cross-site GET image?edge=2048"] = img.status_code
    time.sleep(1)
    with t.client() as http:  # the owner looks (legitimate client)
        jobs = http.get("/api/jobs").json()["jobs"]
        for job in jobs:
            wait_job(http, job["id"], 60)
        jobs = http.get("/api/jobs").json()["jobs"]
    names = [d["name"] for d in docs(t)]
    out["jobs_after"] = [(j["id"], j["name"], j["state"]) for j in jobs]
    out["documents_after"] = names
    out["uploads_dir_files"] = t.uploads_files()
    refused = all(400 <= code < 500 for label, code in out.items() if label in attempts)
    nothing = not jobs and "evil.pdf" not in names and not out["uploads_dir_files"]
    if xsrf is not None:  # control: the real page (same origin + its XSRF token) can upload
        with httpx.Client(base_url=t.base, timeout=30) as http:
            ok = http.post(
                "/api/uploads",
                files={"file": ("mine.pdf", pdf, "application/pdf")},
                cookies=cookies,
                headers={"Sec-Fetch-Site": "same-origin", "Origin": t.base, "X-XSRF-Token": xsrf},
            )
        out["control: own page, same-origin + XSRF"] = ok.status_code
    return refused and nothing and img.status_code >= 400, out


def probe_cookie_other_port(t: Target, other: Target) -> tuple[bool, dict]:
    """2c. The server at t (port A) and another on port B, same token. (i) A's own cookie sent by a page on
    port B; (ii) the cookie B issued, replayed to A under A's cookie name, with same-origin headers."""
    cookies_a, xsrf_a = browser_session(t)
    cookies_b, xsrf_b = browser_session(other)
    pdf = pdf_bytes(t, "small.pdf")
    out = {
        "cookies_A": {k: (v if len(v) < 12 else v[:8] + "...") for k, v in cookies_a.items()},
        "cookies_B": {k: (v if len(v) < 12 else v[:8] + "...") for k, v in cookies_b.items()},
    }
    a_name = next(iter(cookies_a), None)
    with httpx.Client(base_url=t.base, timeout=30) as http:
        r1 = http.post(
            "/api/uploads",
            files={"file": ("p1.pdf", pdf, "application/pdf")},
            cookies=cookies_a,
            headers={
                "Origin": other.base,
                "Sec-Fetch-Site": "same-site",
                **({"X-XSRF-Token": xsrf_a} if xsrf_a else {}),
            },
        )
        out["(i) A's cookie from a page on port B (Origin B, same-site)"] = r1.status_code
        replay = {a_name: next(iter(cookies_b.values()))} if a_name and cookies_b else dict(cookies_b)
        r2 = http.post(
            "/api/uploads",
            files={"file": ("p2.pdf", pdf, "application/pdf")},
            cookies=replay,
            headers={"Origin": t.base, "Sec-Fetch-Site": "same-origin", **({"X-XSRF-Token": xsrf_b} if xsrf_b else {})},
        )
        out["(ii) B's cookie under A's name, same-origin headers + B's XSRF"] = r2.status_code
        r3 = http.post(
            "/api/uploads",
            files={"file": ("p3.pdf", pdf, "application/pdf")},
            cookies=cookies_b,
            headers={"Origin": t.base, "Sec-Fetch-Site": "same-origin", **({"X-XSRF-Token": xsrf_b} if xsrf_b else {})},
        )
        out["(iii) B's cookie as B set it, sent to A"] = r3.status_code
    time.sleep(1)
    out["uploads_dir_files_A"] = t.uploads_files()
    passed = all(r.status_code >= 400 for r in (r1, r2, r3)) and not out["uploads_dir_files_A"]
    if xsrf_a:
        with httpx.Client(base_url=t.base, timeout=30) as http:
            ok = http.post(
                "/api/uploads",
                files={"file": ("own.pdf", pdf, "application/pdf")},
                cookies=cookies_a,
                headers={"Origin": t.base, "Sec-Fetch-Site": "same-origin", "X-XSRF-Token": xsrf_a},
            )
        out["control: A's cookie from A's own page + XSRF"] = ok.status_code
    return passed, out


def probe_big_renders(t: Target) -> tuple[bool, dict]:
    """4. Eight concurrent renders (edge 2048..2041, no cache hits) of one 9,400 x 9,400 PNG."""
    png = t.inputs / "huge.png"
    with t.client(timeout=60) as http:
        job = http.post("/api/uploads", files={"file": ("huge.png", png.read_bytes(), "image/png")}).json()
        done = wait_job(http, job["id"], 240)
        if done.get("state") != "done":
            return False, {"could_not_index_the_png": done}
        page_id = next(
            r["page_id"]
            for r in http.get("/api/search", params={"q": "huge", "k": 10}).json()["results"]
            if r["name"] == "huge.png"
        )
    time.sleep(1)
    baseline = rss(t.pid)
    peak = [baseline or 0]
    finished = threading.Event()

    def sample() -> None:
        for _ in range(20_000):
            value = rss(t.pid)
            if value:
                peak[0] = max(peak[0], value)
            if finished.wait(0.05):
                return

    statuses = []

    def render(edge: int) -> None:
        started = time.monotonic()
        try:
            with t.client(timeout=170) as http:
                r = http.get(f"/api/pages/{page_id}/image", params={"edge": edge})
                statuses.append([r.status_code, r.headers.get("retry-after"), round(time.monotonic() - started, 1)])
        except httpx.HTTPError as error:
            statuses.append([type(error).__name__, None, round(time.monotonic() - started, 1)])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=render, args=(2048 - n,), daemon=True) for n in range(8)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 180
    for th in threads:
        th.join(timeout=max(0.1, deadline - time.monotonic()))
    finished.set()
    sampler.join(5)
    wall = round(time.monotonic() - started, 1)
    rise = (peak[0] - baseline) if baseline else None
    good = (
        len(statuses) == 8
        and all(s[0] == 200 or (s[0] == 503 and s[1]) for s in statuses)
        and any(s[0] == 200 for s in statuses)
    )
    return bool(good and rise is not None and rise <= GB), {
        "statuses[code, retry-after, s]": sorted(statuses, key=str),
        "wall_s": wall,
        "rss_baseline_GB": round(baseline / GB, 2) if baseline else None,
        "rss_peak_GB": round(peak[0] / GB, 2),
        "rss_rise_GB": round(rise / GB, 2) if rise is not None else None,
    }


def probe_huge_upload(t: Target, cancel_after_pages: int | None = None) -> tuple[bool, dict]:
    """5. A 10,000-page PDF: capped at once, or cancellable (DELETE /api/jobs/ID); the writer free for deletes."""
    pdf = pdf_bytes(t, "huge.pdf")
    out: dict = {"pdf_bytes": len(pdf)}
    with t.client(timeout=30) as http:
        started = time.monotonic()
        r = http.post("/api/uploads", files={"file": ("huge.pdf", pdf, "application/pdf")})
        job = r.json()
        out["upload"] = r.status_code
        samples = []
        cancel = None
        for _ in range(60):  # at most ~45 s of watching
            state = http.get(f"/api/jobs/{job['id']}").json()
            samples.append(
                [round(time.monotonic() - started, 1), state["state"], state["pages_done"], state["pages_total"]]
            )
            if state["state"] in ("done", "failed", "cancelled"):
                break
            if cancel is None and state["pages_done"] >= (cancel_after_pages or 5):
                cancel = http.delete(f"/api/jobs/{job['id']}")
                out["DELETE /api/jobs/ID (cancel) at pages_done"] = [state["pages_done"], cancel.status_code]
            if time.monotonic() - started > 45:
                break
            time.sleep(0.75)
        final = http.get(f"/api/jobs/{job['id']}").json()
        out["job_samples[s,state,done,total]"] = samples if len(samples) <= 6 else samples[:3] + ["..."] + samples[-3:]
        out["job_final"] = {k: final.get(k) for k in ("state", "pages_done", "pages_total", "error")}
        scan = next(d for d in http.get("/api/documents").json()["documents"] if d["name"] == "scan.png")
        d0 = time.monotonic()
        deleted = http.delete(f"/api/documents/{scan['id']}")
        out["DELETE a document meanwhile"] = [deleted.status_code, round(time.monotonic() - d0, 1)]
    ended = final["state"] in ("failed", "cancelled")
    passed = ended and time.monotonic() - started < 60 and deleted.status_code == 200
    return passed, out


def probe_kill9(t: Target, restart) -> tuple[bool, dict]:
    """6b. kill -9 while an upload is being ingested, restart on the same index: is the job there?"""
    pdf = pdf_bytes(t, "forty.pdf")
    out: dict = {}
    with t.client(timeout=30) as http:
        job = http.post("/api/uploads", files={"file": ("long.pdf", pdf, "application/pdf")}).json()
        state = {}
        for _ in range(400):  # at most ~60 s
            state = http.get(f"/api/jobs/{job['id']}").json()
            if state["state"] != "queued" and state["pages_done"] >= 1 or state["state"] in ("done", "failed"):
                break
            time.sleep(0.15)
    os.kill(t.pid, signal.SIGKILL)
    out["killed_at"] = {k: state.get(k) for k in ("id", "state", "pages_done", "pages_total")}
    if state.get("state") != "ingesting":
        out["inconclusive"] = "the job was not mid-ingest when killed"
    t2 = restart()
    with t2.client(timeout=30) as http:
        listed = http.get("/api/jobs").json()["jobs"]
        out["jobs_after_restart"] = [
            {k: j.get(k) for k in ("id", "state", "pages_done", "resumes", "error")} for j in listed
        ]
        final = None
        mine = [j for j in listed if j["id"] == job["id"]]
        if mine:
            final = wait_job(http, job["id"], 180)
            out["job_final"] = {k: final.get(k) for k in ("state", "pages_done", "pages_total", "error")}
        names = [d["name"] for d in http.get("/api/documents").json()["documents"]]
    out["documents_after_restart"] = names
    out["uploads_dir_files"] = t2.uploads_files()
    passed = (
        bool(mine)
        and final is not None
        and (
            final["state"] == "done"
            and names.count("long.pdf") == 1
            or final["state"] == "failed"
            and final.get("error")
        )
    )
    return passed and "inconclusive" not in out, out


def probe_failed_upload(t: Target) -> tuple[bool, dict]:
    """6a. An upload that sniffs as PDF but cannot be read: listed with its reason, deletable, file gone."""
    bad = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"this is not a pdf body\n" * 200
    out: dict = {}
    with t.client(timeout=30) as http:
        r = http.post("/api/uploads", files={"file": ("broken.pdf", bad, "application/pdf")})
        out["upload"] = r.status_code
        job = r.json()
        final = wait_job(http, job["id"], 60)
        out["job"] = {k: final.get(k) for k in ("state", "error", "file", "file_kept")}
        out["uploads_dir_before"] = t.uploads_files()
        listed = [j for j in http.get("/api/jobs").json()["jobs"] if j["id"] == job["id"]]
        out["listed_in_/api/jobs"] = bool(listed)
        out["in_/api/documents"] = any(
            d["name"] == "broken.pdf" for d in http.get("/api/documents").json()["documents"]
        )
        d = http.delete(f"/api/jobs/{job['id']}")
        out["DELETE /api/jobs/ID"] = [d.status_code, d.text[:160]]
    out["uploads_dir_after"] = t.uploads_files()
    passed = (
        final.get("state") == "failed"
        and bool(final.get("error"))
        and bool(listed)
        and d.status_code == 200
        and not out["uploads_dir_after"]
    )
    return passed, out


# --------------------------------------------------------------------------------------------------
# The driver: a fresh server per probe.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(
        self,
        tree: Path,
        kind: str,
        work: Path,
        index: Path,
        port: int,
        log: Path,
        extra: list[str] | None = None,
        token: bool = False,
    ) -> None:
        self.tree, self.kind, self.work, self.index, self.port, self.log = tree, kind, work, index, port, log
        args = [
            sys.executable,
            "-m",
            "docqa",
            "serve",
            "--index",
            str(index),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--answer-model",
            str(work / "generator"),
        ]
        self.token = None
        if kind == "new":
            token_file = work / "token"
            token_file.write_text(TOKEN)
            args += ["--token-file", str(token_file)]
            self.token = TOKEN
        elif token:  # the old CLI only has --token
            args += ["--token", TOKEN]
            self.token = TOKEN
        args += extra or []
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "DOCQA_HOME": str(work / "home"),
            "DOCQA_ENGINE": "torch",
            "HF_HUB_OFFLINE": "1",
            "DOCQA_DAEMON": "off",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.args = args
        self.proc = subprocess.Popen(
            ["nice", "-n", "5", *args],
            cwd=tree,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def target(self) -> Target:
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                if httpx.get(base + "/api/info", headers=headers, timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("server did not come up in 120 s")
        code = None
        if self.kind == "new":
            codes = re.findall(r"/login\?code=([A-Za-z0-9_\-]+)", self.log.read_text())
            code = codes[-1] if codes else None
        return Target(
            base=base,
            token=self.token,
            login_code=code,
            index_dir=self.index,
            pid=self.proc.pid,
            inputs=self.work / "inputs",
            kind=self.kind,
        )

    def stop(self) -> str:
        if self.proc.poll() is not None:
            return f"already exited ({self.proc.returncode})"
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group of the process started here, by its id
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
            return "SIGTERM: exited"
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return "SIGTERM did not stop it within 10 s: SIGKILL"


def restart_server(
    servers: list[Server], tree: Path, kind: str, work: Path, index: Path, port: int, log: Path
) -> Target:
    """Start the server again on the same index and port (kept in servers, so that it is stopped too)."""
    again = Server(tree, kind, work, index, port, log)
    servers.append(again)
    return again.target()


PROBES = [
    "cut_off_ask",
    "slow_sockets",
    "foreign_host",
    "cross_site_post",
    "cookie_other_port",
    "big_renders",
    "huge_upload",
    "huge_upload_cancel",
    "kill9",
    "failed_upload",
]


def drive(tree: Path, kind: str, work: Path, probes: list[str], results_path: Path | None) -> int:
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    results = []
    for name in probes:
        run = runs / f"{kind}-{name}-{int(time.time())}"
        run.mkdir()
        index = run / "idx"
        shutil.copytree(work / "idx_template", index)
        log = run / "server.log"
        servers: list[Server] = []
        started = time.monotonic()
        stops = []
        try:
            extra = []
            if name == "huge_upload_cancel":
                if kind == "old":
                    results.append(
                        {
                            "probe": name,
                            "kind": kind,
                            "passed": None,
                            "details": "n/a: the old CLI has no page cap to raise and no cancel; see huge_upload",
                        }
                    )
                    print(json.dumps(results[-1]), flush=True)
                    continue
                extra = ["--max-upload-pages", "20000"]
            server = Server(tree, kind, work, index, free_port(), log, extra, token=(name == "cookie_other_port"))
            servers.append(server)
            target = server.target()
            if name == "cookie_other_port":
                other_index = run / "idx_b"
                shutil.copytree(work / "idx_template", other_index)
                b = Server(tree, kind, work, other_index, free_port(), run / "server_b.log", token=True)
                servers.append(b)
                passed, details = probe_cookie_other_port(target, b.target())
            elif name == "kill9":
                restart = functools.partial(restart_server, servers, tree, kind, work, index, server.port, log)
                passed, details = probe_kill9(target, restart)
            elif name == "huge_upload_cancel":
                passed, details = probe_huge_upload(target, cancel_after_pages=10)
            else:
                passed, details = globals()[f"probe_{name}"](target)
            if target.notes:
                details["notes"] = target.notes
        except Exception as error:  # report it as the probe's result, and go on
            passed, details = None, {"error": f"{type(error).__name__}: {error}"}
        finally:
            for s in servers:
                stops.append(s.stop())
        result = {
            "probe": name,
            "kind": kind,
            "passed": passed,
            "seconds": round(time.monotonic() - started, 1),
            "server_stop": stops,
            "details": details,
        }
        results.append(result)
        print(json.dumps(result), flush=True)
        shutil.rmtree(index, ignore_errors=True)  # keep logs, drop the index copies
        shutil.rmtree(run / "idx_b", ignore_errors=True)
    if results_path:
        results_path.write_text(json.dumps(results, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------
# setup: the tiny models, index template and probe inputs, built with one tree's own code.


def setup(out: Path, kind: str) -> int:
    """Build OUT/retriever, OUT/generator, OUT/idx_template and OUT/inputs with the code on PYTHONPATH."""
    if kind == "new":
        from helpers.documents import make_image, make_pdf
        from helpers.tiny_generators import build_generator_checkpoint
        from helpers.tiny_retrievers import build_retriever_checkpoint
    else:
        from documents import make_image, make_pdf
        from tiny_generators import build_generator_checkpoint
        from tiny_retrievers import build_retriever_checkpoint
    from PIL import Image, ImageDraw
    from reportlab.pdfgen import canvas

    import docqa
    from docqa.api import DocIndex

    print("docqa from", docqa.__file__)
    out.mkdir(parents=True, exist_ok=True)
    ret = build_retriever_checkpoint("colmodernvbert", out / "retriever")
    gen = build_generator_checkpoint("idefics3", out / "generator")
    documents = out / "docs"
    make_pdf(documents / "report.pdf", 2, title="report")
    make_image(documents / "scan.png", text="scan")
    index = DocIndex.open(out / "idx_template", create=True)
    index.ingest([documents], model=str(ret), device="cpu")
    index.close()
    # extra inputs for the probes
    make_pdf(out / "inputs" / "small.pdf", 1, title="upload")
    make_pdf(out / "inputs" / "six.pdf", 6, title="long")
    make_pdf(out / "inputs" / "forty.pdf", 40, title="long")
    edge = 9400
    im = Image.new("RGB", (edge, edge), "white")
    draw = ImageDraw.Draw(im)
    for step in range(0, edge, 400):
        draw.line([(step, 0), (edge - step, edge)], fill="black", width=9)
    im.save(out / "inputs" / "huge.png", format="PNG", compress_level=1)
    del draw, im
    p = out / "inputs" / "huge.pdf"
    c = canvas.Canvas(str(p), pagesize=(200, 200))
    for n in range(10_000):
        c.drawString(20, 100, f"p{n}")
        c.showPage()
    c.save()
    print("built", ret, gen, out / "idx_template", p.stat().st_size)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup", help="build the tiny models, index template and probe inputs with one tree's code")
    s.add_argument("out", type=Path)
    s.add_argument("--kind", choices=["old", "new"], required=True, help="how that tree's test helpers import")
    d = sub.add_parser("drive", help="a fresh server from TREE for each probe, then stop it")
    d.add_argument("--tree", type=Path, required=True)
    d.add_argument("--kind", choices=["old", "new"], required=True)
    d.add_argument("--work", type=Path, required=True)
    d.add_argument("--probes", default=",".join(PROBES))
    d.add_argument("--results", type=Path)
    p = sub.add_parser("probe", help="one probe against a server already running on loopback")
    p.add_argument(
        "name",
        choices=[
            "cut_off_ask",
            "slow_sockets",
            "foreign_host",
            "cross_site_post",
            "big_renders",
            "huge_upload",
            "failed_upload",
        ],
    )
    p.add_argument("--base", required=True)
    p.add_argument("--token")
    p.add_argument("--login-code")
    p.add_argument("--index-dir", type=Path)
    p.add_argument("--pid", type=int)
    p.add_argument("--inputs", type=Path)
    args = parser.parse_args()
    if args.command == "setup":
        return setup(args.out, args.kind)
    if args.command == "drive":
        return drive(args.tree, args.kind, args.work, args.probes.split(","), args.results)
    if urlsplit(args.base).hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("loopback only")
    t = Target(
        base=args.base,
        token=args.token,
        login_code=args.login_code,
        index_dir=args.index_dir,
        pid=args.pid,
        inputs=args.inputs,
    )
    passed, details = globals()[f"probe_{args.name}"](t)
    print(("PASS" if passed else "FAIL"), json.dumps(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
