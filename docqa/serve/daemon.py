"""The resident process: keeps an index's retriever (and an answer model) loaded for the CLI.

`docqa search`, `ask` and `chat` first look for a daemon serving the same index on the same device
over a unix socket (mode 0600, in a 0700 folder under $XDG_RUNTIME_DIR, else /tmp/docqa-UID); when
none answers they start one (it loads the models, then serves until idle for DOCQA_DAEMON_IDLE_S
seconds, default 600) and wait for it. Anything else (no daemon could start, it refuses the
request, it dies mid-request) and the command runs in its own process as before.

A daemon never serves another index's or model's requests: the socket is named by a hash of the
index folder and device, the handshake names the index (the daemon refuses any other, and refuses
once the index on disk was rebuilt with another model than the one it holds), and an answer model
is loaded exactly as the request names it. This module's client side imports nothing heavy (no
numpy, torch or transformers), which is what makes a warm `docqa search` fast.

Protocol: one JSON object per line. hello -> ok/refused; search -> hits; ask -> token* then
result; pages, reset (the connection's conversation, for chat); status.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import DocQAError

if TYPE_CHECKING:
    from ..models.generator import Generator

IDLE_S = 600.0
START_TIMEOUT_S = 300.0  # how long a client waits for a daemon it started to load its models


# --- where the socket lives ---------------------------------------------------------------------
def runtime_dir() -> Path:
    """A folder only this user can enter: $XDG_RUNTIME_DIR/docqa, else /tmp/docqa-UID."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "docqa" if base and os.path.isdir(base) else Path(f"/tmp/docqa-{os.getuid()}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise DocQAError(
            f"{folder} is not private to this user (owner {info.st_uid}, mode "
            f"{oct(info.st_mode & 0o777)}); remove it or set XDG_RUNTIME_DIR"
        )
    return folder


def identity(index: Path, device: str | None) -> str:
    """What a daemon serves, as a short hash: the index folder and the device asked for."""
    text = json.dumps([str(index), device or "auto", __version__])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def socket_path(index: Path, device: str | None) -> Path:
    return runtime_dir() / f"{identity(index, device)}.sock"


def enabled() -> bool:
    return os.environ.get("DOCQA_DAEMON", "on").lower() not in ("0", "off", "no", "false")


# --- client side (light) -------------------------------------------------------------------------
class DaemonGone(Exception):
    """The daemon closed the connection or died before finishing a request."""


@dataclass(frozen=True)
class RemoteHit:
    """A search hit as the daemon sent it (the fields `docqa search` prints)."""

    rank: int
    score: float
    path: str
    page: int
    document_id: int
    page_id: int
    also_at: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "score": self.score,
            "path": self.path,
            "page": self.page,
            "document_id": self.document_id,
            "page_id": self.page_id,
            "also_at": list(self.also_at),
        }


class Connection:
    """One connection to a daemon; requests go one after another."""

    def __init__(self, path: Path, timeout_s: float | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("r", encoding="utf-8")

    def send(self, message: dict) -> None:
        try:
            self.sock.sendall((json.dumps(message) + "\n").encode())
        except OSError as error:
            raise DaemonGone(str(error)) from error

    def receive(self) -> dict:
        try:
            line = self.reader.readline()
        except OSError as error:
            raise DaemonGone(str(error)) from error
        if not line.endswith("\n"):
            raise DaemonGone("the resident process closed the connection")
        message = json.loads(line)
        if "error" in message:
            raise DocQAError(message["error"])  # the same one-line error the command would print
        return message

    def request(self, message: dict) -> dict:
        self.send(message)
        return self.receive()

    def close(self) -> None:
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass


def connect(index_dir: Path, device: str | None, *, start: bool = True) -> Connection | None:
    """A connection to the daemon for this index and device that accepted the handshake, starting
    one when there is none (and ``start``); None when the command should run in-process."""
    if not enabled():
        return None
    try:
        path = socket_path(index_dir, device)
    except (OSError, DocQAError):
        return None
    connection = _try(path, index_dir, device)
    if connection is not None or not start:
        return connection
    process = _spawn(index_dir, device, path)
    if process is None:
        return None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        connection = _try(path, index_dir, device)
        if connection is not None:
            return connection
        if process.poll() is not None:  # it failed (bad index or model), or another daemon holds the socket
            return _try(path, index_dir, device)
        time.sleep(0.05)
    return None


def _try(path: Path, index_dir: Path, device: str | None) -> Connection | None:
    if not path.exists():
        return None
    try:
        connection = Connection(path, timeout_s=None)
        connection.request({"op": "hello", "index": str(index_dir), "device": device, "version": __version__})
        return connection
    except (OSError, DaemonGone, DocQAError, ValueError):
        return None


def _spawn(index_dir: Path, device: str | None, path: Path) -> subprocess.Popen | None:
    command = [sys.executable, "-m", "docqa", "daemon", "--index", str(index_dir), "--socket", str(path)]
    if device:
        command += ["--device", device]
    log = path.with_suffix(".log")
    try:
        with open(log, "ab") as out:
            os.chmod(log, 0o600)
            return subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True
            )
    except OSError:
        return None


class _Answer:
    def __init__(self, payload: dict) -> None:
        self.text = payload["answer"]
        self.question = payload["question"]
        self.model = payload["answer_model"]
        self.generate_s = payload["timings"]["generate_s"]
        self.citations = [_Citation(**c) for c in payload["citations"]]


@dataclass(frozen=True)
class _Citation:
    path: str
    page: int
    score: float | None
    cited: bool


class RemoteResult:
    def __init__(self, payload: dict) -> None:
        self.payload = payload
        self.answer = _Answer(payload)
        self.notes = payload.get("notes", [])

    def to_json(self) -> dict:
        return self.payload


class RemoteStream:
    """An AnswerStream whose tokens come from the daemon (iterate, then read ``result``)."""

    def __init__(self, connection: Connection, request: dict) -> None:
        self.connection = connection
        self.request = request
        self.result: RemoteResult | None = None
        self.pages: list = []
        self.started = False  # a token was handed out: a retry would repeat text

    def __iter__(self) -> Iterator[str]:
        self.connection.send(self.request)
        while True:
            message = self.connection.receive()
            if "token" in message:
                self.started = True
                yield message["token"]
            elif "result" in message:
                self.result = RemoteResult(message["result"])
                return

    def run(self) -> RemoteResult:
        for _ in self:
            pass
        assert self.result is not None
        return self.result


@dataclass(frozen=True)
class _PageRef:
    path: str
    page: int


class RemoteConversation:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def reset(self) -> None:
        self.connection.request({"op": "reset"})

    def pages(self) -> list[_PageRef]:
        return [_PageRef(p["path"], p["page"]) for p in self.connection.request({"op": "pages"})["pages"]]


class RemoteAsker:
    """An Asker whose model lives in the daemon; the connection keeps the conversation."""

    def __init__(self, connection: Connection, settings: dict) -> None:
        self.connection = connection
        self.settings = settings
        self.notes = connection.request({"op": "asker", **settings})["notes"]
        self.conversation = RemoteConversation(connection)

    def ask(self, question: str) -> RemoteStream:
        return RemoteStream(self.connection, {"op": "ask", "question": question})


# --- the daemon ---------------------------------------------------------------------------------
class Daemon:
    """Holds one index, its retriever and at most one answer model; serves until idle."""

    def __init__(self, index: str, path: Path, device: str | None = None, idle_s: float = IDLE_S) -> None:
        from ..api import DocIndex

        self.index = DocIndex.open(index)
        self.path = path
        self.device = device
        self.idle_s = idle_s
        self.built = self._stamp()
        self._read = threading.Lock()
        self._answer = threading.Lock()
        self._generator: Generator | None = None
        self._generator_key: tuple[str, str | None] | None = None
        self._active = 0
        self._last = time.monotonic()
        self._count = threading.Lock()
        self.served = 0
        self.last_timings: dict | None = None  # of the last answer given (status reports it)
        self.stale = False
        if self.index.build is not None:
            self.index.retriever(device=device)  # loaded before the socket appears

    def _stamp(self):
        return self.index.identity()

    def generator(self, model: str | None, engine: str | None) -> Generator:
        """The answer model the request names, loaded once (another one replaces it)."""
        from ..models.checkpoints import check_device
        from ..models.generator import Generator, default_answer_model

        device = check_device(self.device)
        wanted = model or default_answer_model(device)
        if Path(wanted).expanduser().is_dir():
            wanted = str(Path(wanted).expanduser().resolve())
        key = (wanted, engine)
        if self._generator is None or self._generator_key != key:
            self._generator = None  # the old model is let go before the new one loads
            self._generator = Generator.load(wanted, device=device, engine=engine)
            self._generator_key = key
        return self._generator

    # --- serving -------------------------------------------------------------------------
    def serve(self) -> None:
        lock_file = open(self.path.with_suffix(".lock"), "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # one daemon per socket
        except BlockingIOError:
            return
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        old_umask = os.umask(0o177)
        try:
            server.bind(str(temporary))
        finally:
            os.umask(old_umask)
        os.chmod(temporary, 0o600)
        server.listen(64)
        os.replace(temporary, self.path)  # appears only once the models are loaded and it listens
        inode = self.path.stat().st_ino
        server.settimeout(1.0)
        try:
            while True:
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    with self._count:
                        idle = self._active == 0 and time.monotonic() - self._last > self.idle_s
                    if idle or self.stale or not self._still_mine(inode):
                        return
                    continue
                threading.Thread(target=self._connection, args=(client,), daemon=True).start()
        finally:
            if self._still_mine(inode):
                self.path.unlink(missing_ok=True)
            server.close()
            lock_file.close()

    def _still_mine(self, inode: int) -> bool:
        try:
            return self.path.stat().st_ino == inode
        except OSError:
            return False

    def _connection(self, client: socket.socket) -> None:
        with self._count:
            self._active += 1
        session: dict = {}
        reader = client.makefile("r", encoding="utf-8")

        def send(message: dict) -> None:
            client.sendall((json.dumps(message, ensure_ascii=False) + "\n").encode())

        try:
            for line in reader:
                try:
                    request = json.loads(line)
                    for reply in self._handle(request, session):
                        send(reply)
                except DocQAError as error:
                    send({"error": str(error)})
                except (ValueError, KeyError, TypeError) as error:
                    send({"error": f"bad request to the resident process: {error}"})
        except OSError:
            pass  # the client went away
        finally:
            with self._count:
                self._active -= 1
                self._last = time.monotonic()
            client.close()

    def _handle(self, request: dict, session: dict) -> Iterator[dict]:
        op = request["op"]
        delay = float(os.environ.get("DOCQA_DAEMON_TEST_DELAY_S") or 0)  # tests: time to kill it mid-request
        if op == "hello":
            if request.get("index") != str(self.index.path):
                raise DocQAError(f"this resident process serves {self.index.path}, not {request.get('index')}")
            if request.get("device") != self.device or request.get("version") != __version__:
                raise DocQAError("this resident process runs another device or docqa version")
            if self._stamp() != self.built:
                self.stale = True  # ends the daemon: the next command starts one for the index as it is now
                raise DocQAError(f"{self.index.path} was rebuilt since this resident process loaded it")
            session["hello"] = True
            yield {"ok": True, "index": str(self.index.path), "pid": os.getpid()}
            return
        if op == "status":
            yield {
                "index": str(self.index.path),
                "served": self.served,
                "pid": os.getpid(),
                "answer_model": (self._generator_key or [None])[0],
                "last_ask_timings": self.last_timings,  # how the last answer's time was spent, in here
            }
            return
        if not session.get("hello"):
            raise DocQAError("say hello first")
        self.served += 1
        if delay:
            time.sleep(delay)
        if op == "search":
            with self._read:
                hits = self.index.search(
                    request["query"],
                    k=int(request["k"]),
                    device=self.device,
                    exact=bool(request.get("exact")),
                    rerank=request.get("rerank"),
                    where=request.get("where") or {},
                    path=request.get("path"),
                    engine=request.get("engine"),
                )
            yield {"hits": [hit.to_json() for hit in hits]}
        elif op == "asker":
            from ..answer.ask import Asker
            from ..models.generator import Conversation

            with self._answer:
                generator = self.generator(request.get("answer_model"), request.get("engine"))
            conversation = Conversation(max_images=request["max_images"]) if request.get("max_images") else None
            asker = Asker(
                generator,
                self.index,
                k=int(request["k"]),
                max_pages=int(request["max_pages"]),
                max_new_tokens=int(request["max_new_tokens"]),
                conversation=conversation,
                where=request.get("where") or {},
                path=request.get("path"),
            )
            session["asker"] = asker
            yield {"notes": asker.notes}
        elif op == "ask":
            asker = session["asker"]
            with self._answer:
                with self._read:
                    stream = asker.ask(request["question"])
                for piece in stream:
                    yield {"token": piece}
            result = stream.result.to_json()
            self.last_timings = result["timings"]
            yield {"result": result}
        elif op == "pages":
            pages = session["asker"].conversation.pages()
            yield {"pages": [{"path": p.path, "page": p.page} for p in pages]}
        elif op == "reset":
            session["asker"].conversation.reset()
            yield {"ok": True}
        else:
            raise DocQAError(f"unknown request {op!r}")

    def close(self) -> None:
        self.index.close()


def run_daemon(
    index: str | None, *, socket_file: str | None = None, device: str | None = None, idle_s: float | None = None
) -> None:
    from ..config import index_path

    # A resident process shares the cores with whatever the user runs: OpenMP threads that spin at
    # every barrier (the default ACTIVE policy) then wait for the scheduler, which made a 2-thread
    # query encode several times slower on a loaded machine (benchmarks/results/cli.md). Read
    # when torch loads, so set before it is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    folder = index_path(index)
    path = Path(socket_file) if socket_file else socket_path(folder, device)
    idle = idle_s if idle_s is not None else float(os.environ.get("DOCQA_DAEMON_IDLE_S") or IDLE_S)
    daemon = Daemon(str(folder), path, device=device, idle_s=idle)
    try:
        daemon.serve()
    finally:
        daemon.close()


__all__ = ["Connection", "Daemon", "RemoteAsker", "RemoteHit", "connect", "enabled", "run_daemon"]
