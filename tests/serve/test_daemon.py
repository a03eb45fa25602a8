"""The resident process behind `docqa search/ask/chat`: shared by concurrent clients, never used for
another index or model, and a daemon killed mid-request leaves the CLI answering in-process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.serving import corpus_index_fixture, wait_until

from docqa.api import DocIndex
from docqa.serve.daemon import Connection, socket_path

corpus = corpus_index_fixture("corpus")


@pytest.fixture()
def runtime(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR with daemons on; every daemon started in it is killed at the end."""
    folder = Path(f"/tmp/dq-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.setenv("DOCQA_DAEMON", "on")
    monkeypatch.setenv("DOCQA_DAEMON_IDLE_S", "120")
    try:
        yield folder
    finally:
        for sock in (folder / "docqa").glob("*.sock"):
            pid = _status(sock).get("pid")
            if pid:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def _docqa(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "docqa", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**env),
    )


def _run(*args: str, timeout: float = 300, **env: str) -> dict:
    process = _docqa(*args, **env)
    out, err = process.communicate("", timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out)


def _status(sock: Path) -> dict:
    try:
        connection = Connection(sock, timeout_s=10)
        try:
            return connection.request({"op": "status"})
        finally:
            connection.close()
    except Exception:  # noqa: BLE001 - gone
        return {}


def _wait_for(sock: Path, timeout_s: float = 120) -> dict:
    return wait_until(lambda: _status(sock) if sock.exists() else {}, timeout_s, f"a daemon answering at {sock}")


def _in_process_search(index: Path, query: str) -> list[dict]:
    return _run("search", query, "--index", str(index), "-k", "3", "--json", DOCQA_DAEMON="off")["results"]


HEAVY = ("torch", "transformers", "faiss", "sqlite_utils", "starlette")  # model, index and web stacks


def _heavy_imports_of(*argv: str) -> list[str]:
    """The modules of HEAVY a CLI process imported while running ``argv`` (it must exit 0)."""
    script = (
        "import contextlib, io, json, sys\n"
        "from docqa.cli.main import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    code = main({list(argv)!r})\n"
        f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=300)
    code, heavy = json.loads(done.stdout.splitlines()[-1])
    assert code == 0, done.stderr
    return heavy


def test_concurrent_clients_share_one_daemon(corpus, runtime, generator_checkpoints):
    expected = _in_process_search(corpus, "report page 2")
    clients = [_docqa("search", "report page 2", "--index", str(corpus), "-k", "3", "--json") for _ in range(4)]
    for client in clients:
        out, err = client.communicate("", timeout=300)
        assert client.returncode == 0, err
        assert json.loads(out)["results"] == expected
    sock = socket_path(corpus, None)
    status = _wait_for(sock)
    assert status["served"] >= 1 and status["index"] == str(corpus)
    assert len(list((runtime / "docqa").glob("*.sock"))) == 1  # one daemon, however many clients started at once
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE((runtime / "docqa").stat().st_mode) == 0o700
    served = status["served"]
    again = _run("search", "report page 2", "--index", str(corpus), "-k", "3", "--json")
    assert again["results"] == expected and _status(sock)["served"] == served + 1

    model = str(generator_checkpoints["idefics3"])
    ask = (
        "ask",
        "what is in the report?",
        "--index",
        str(corpus),
        "-k",
        "2",
        "--max-pages",
        "2",
        "--max-new-tokens",
        "6",
        "--answer-model",
        model,
        "--json",
    )
    resident = _run(*ask)
    status = _status(sock)
    assert status["answer_model"] == str(Path(model).resolve())
    assert status["last_ask_timings"] == resident["timings"]  # how the benchmark splits a first token's time
    local = _run(*ask, DOCQA_DAEMON="off")
    for answer in (resident, local):
        answer.pop("timings")
    assert resident == local

    # a warm daemon's client loads neither the model stack nor the index's or server's: that keeps it fast
    assert _heavy_imports_of("search", "report page 2", "--index", str(corpus), "-k", "3", "--json") == []
    assert _heavy_imports_of(*ask) == []

    chat = _docqa("chat", "--index", str(corpus), "-k", "1", "--max-new-tokens", "4", "--answer-model", model, "--json")
    out, err = chat.communicate("first question\n/pages\n/reset\n/pages\n", timeout=300)
    assert chat.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.get("command") for line in lines] == [None, "/pages", "/reset", "/pages"]
    assert len(lines[1]["pages"]) == 1 and lines[3]["pages"] == []


def test_a_daemon_of_another_index_or_model_is_not_used(corpus, runtime, tmp_path, retriever_checkpoints):
    other = tmp_path / "other"
    docs = tmp_path / "otherdocs"
    from helpers.documents import make_image

    make_image(docs / "lonely.png", text="lonely")
    index = DocIndex.open(other, create=True)
    index.ingest([docs], model=str(retriever_checkpoints["colmodernvbert"]), device="cpu")
    index.close()
    # a daemon holding `corpus` listens where a client of `other` looks
    squatter = _docqa("daemon", "--index", str(corpus), "--socket", str(socket_path(other, None)))
    try:
        status = _wait_for(socket_path(other, None))
        results = _run("search", "lonely", "--index", str(other), "-k", "3", "--json")["results"]
        assert [Path(r["path"]).name for r in results] == ["lonely.png"]
        assert _status(socket_path(other, None))["served"] == status["served"] == 0
    finally:
        squatter.kill()
        squatter.wait()

    # the index is rebuilt with another model while its daemon runs: the daemon refuses and ends
    first = _run("search", "lonely", "--index", str(other), "-k", "1", "--json")["results"]
    assert [Path(r["path"]).name for r in first] == ["lonely.png"]
    sock = socket_path(other, None)
    old = _wait_for(sock)
    shutil.rmtree(other)
    make_image(docs / "second.png", text="second")
    index = DocIndex.open(other, create=True)
    index.ingest([docs], model=str(retriever_checkpoints["colqwen2"]), device="cpu")
    index.close()
    results = _run("search", "second", "--index", str(other), "-k", "5", "--json")["results"]
    assert sorted(Path(r["path"]).name for r in results) == ["lonely.png", "second.png"]
    assert results == _in_process_search(other, "second")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _status(sock).get("pid") == old["pid"]:
        time.sleep(0.2)
    assert _status(sock).get("pid") != old["pid"]  # the stale daemon is gone


def test_killing_the_daemon_mid_request_leaves_the_cli_answering(corpus, runtime):
    expected = _in_process_search(corpus, "scan")
    sock = socket_path(corpus, None)
    daemon = _docqa("daemon", "--index", str(corpus), DOCQA_DAEMON_TEST_DELAY_S="60")
    try:
        _wait_for(sock)
        client = _docqa("search", "scan", "--index", str(corpus), "-k", "3", "--json")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _status(sock).get("served", 0) < 1:
            time.sleep(0.1)
        assert _status(sock)["served"] == 1  # the client's request is inside the daemon now
        daemon.send_signal(signal.SIGKILL)
        out, err = client.communicate("", timeout=300)
        assert client.returncode == 0, err
        assert json.loads(out)["results"] == expected
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()
