"""Office, OpenDocument, web and text files to PDF, with LibreOffice, cached by content hash.

One `Converter` per process keeps a small pool of long-lived headless soffice instances (one per
worker, each with a private profile, bounded by the cores), so a folder of documents pays
LibreOffice's start-up once, not per file. Each conversion:

- works on a private copy of the document in a staging folder: for HTML and Markdown a
  self-contained rewrite (docqa.inputs.webpages), so nothing outside the document's folder is read
  and no URL is fetched;
- runs inside a bubblewrap sandbox where available (no network, no view of the file system beyond
  the system's programs and the staging folder), under an address-space limit;
- loads the document hidden and read-only, with macros never executed and links never updated;
- is killed after a per-file timeout (the worker and its soffice are restarted for the next file).

The PDF lands in the cache ($DOCQA_CACHE, else ~/.cache/docqa) under the sha256 of the content, so
re-ingesting, asking, grounding and the server's page images render the cached PDF and never
convert twice. A document is always cited by its original path; the PDF is an internal detail.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache, lru_cache
from pathlib import Path

from ..errors import ConversionError, LibreOfficeMissingError
from ..files import atomic_file
from . import sources, webpages

LIBREOFFICE_PACKAGES = (
    "libreoffice-core-nogui libreoffice-writer-nogui libreoffice-impress-nogui "
    "libreoffice-calc-nogui python3-uno bubblewrap"
)
INSTALL_HINT = f"apt-get install -y {LIBREOFFICE_PACKAGES}"
DEFAULT_TIMEOUT_S = float(os.environ.get("DOCQA_CONVERT_TIMEOUT", "120"))
DEFAULT_MEMORY_MB = int(os.environ.get("DOCQA_CONVERT_MEMORY_MB", "4096"))  # address space per worker
STARTUP_TIMEOUT_S = 90.0
# Bumped whenever the conversion recipe changes what a PDF looks like (cached PDFs then differ).
RECIPE = "lo1"
_WORKER_SCRIPT = Path(__file__).with_name("uno_worker.py")

# How LibreOffice is told to read each staged file (None: let it detect the type).
_IMPORT = {
    sources.TEXT: ("Text (encoded)", "UTF8,LF,Liberation Mono,en-US"),
    sources.HTML: ("HTML (StarWriter)", None),
    sources.MARKDOWN: ("HTML (StarWriter)", None),
}
_STAGED_SUFFIX = {
    sources.DOCX: ".docx",
    sources.PPTX: ".pptx",
    sources.XLSX: ".xlsx",
    sources.ODT: ".odt",
    sources.ODP: ".odp",
    sources.ODS: ".ods",
    sources.DOC: ".doc",
    sources.PPT: ".ppt",
    sources.XLS: ".xls",
    sources.RTF: ".rtf",
    sources.HTML: ".html",
    sources.MARKDOWN: ".html",
    sources.TEXT: ".txt",
}


def _libreoffice_missing(what: str = "LibreOffice is not installed") -> LibreOfficeMissingError:
    return LibreOfficeMissingError(f"{what}: install it with `{INSTALL_HINT}`")


def cache_dir() -> Path:
    """Where converted PDFs are kept: $DOCQA_CACHE, else $XDG_CACHE_HOME/docqa, else ~/.cache/docqa."""
    root = os.environ.get("DOCQA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "docqa"
    )
    return Path(root) / "converted" / RECIPE


def cached_pdf_path(sha256: str) -> Path:
    return cache_dir() / sha256[:2] / f"{sha256}.pdf"


def find_soffice() -> str | None:
    """The soffice program: $DOCQA_SOFFICE, else on PATH, else Debian's location."""
    for candidate in (os.environ.get("DOCQA_SOFFICE"), shutil.which("soffice"), "/usr/lib/libreoffice/program/soffice"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@cache
def _uno_python_for(candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run([candidate, "-c", "import uno"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                return candidate
    return None


def uno_python() -> str | None:
    """A Python that can `import uno` ($DOCQA_UNO_PYTHON, this one, or the system's python3)."""
    return _uno_python_for((os.environ.get("DOCQA_UNO_PYTHON") or "", sys.executable, "/usr/bin/python3"))


def libreoffice_available() -> bool:
    return find_soffice() is not None and uno_python() is not None


@lru_cache(maxsize=1)
def _bwrap_works() -> bool:
    bwrap = shutil.which("bwrap")
    if bwrap is None or os.environ.get("DOCQA_CONVERT_SANDBOX", "1") == "0":
        return False
    probe = subprocess.run(
        [bwrap, *_system_binds(), "--unshare-all", "--die-with-parent", "--", "/bin/true"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def _system_binds() -> list[str]:
    """bwrap arguments that show the sandbox the system's programs, libraries, fonts and LibreOffice's
    own configuration, and nothing else of the file system."""
    args = ["--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for top in ("/bin", "/lib", "/lib64", "/sbin", "/lib32", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for etc in (
        "/etc/fonts",
        "/etc/libreoffice",
        "/etc/ld.so.cache",
        "/etc/alternatives",
        "/etc/localtime",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
    ):
        if os.path.exists(etc):
            args += ["--ro-bind", etc, etc]
    return args


def _limit_memory(megabytes: int) -> None:
    limit = megabytes << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class _Worker:
    """One worker process (and its soffice) speaking JSON lines; restarted after a kill or a crash."""

    def __init__(self, converter: Converter, number: int) -> None:
        self.converter = converter
        self.stage = Path(tempfile.mkdtemp(prefix=f"docqa-convert-{os.getpid()}-{number}-"))
        (self.stage / "home").mkdir()
        self.number = number
        self.process: subprocess.Popen | None = None
        self.served = 0

    def command(self) -> list[str]:
        converter = self.converter
        if converter.worker_command is not None:
            return [*converter.worker_command, str(self.stage)]
        python, soffice = uno_python(), find_soffice()
        if python is None or soffice is None:
            raise _libreoffice_missing()
        script = self.stage / "uno_worker.py"
        shutil.copyfile(_WORKER_SCRIPT, script)
        inner = [python, str(script), soffice, str(self.stage / "profile"), f"docqa{os.getpid()}w{self.number}"]
        if not converter.sandboxed:
            return inner
        return [
            "bwrap",
            *_system_binds(),
            "--bind",
            str(self.stage),
            str(self.stage),
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--setenv",
            "HOME",
            str(self.stage / "home"),
            "--setenv",
            "TMPDIR",
            "/tmp",
            "--chdir",
            str(self.stage),
            "--",
            *inner,
        ]

    def start(self) -> None:
        memory = self.converter.memory_mb
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=(lambda: _limit_memory(memory)) if memory else None,
            env={**os.environ, "HOME": str(self.stage / "home"), "SAL_USE_VCLPLUGIN": "svp"},
        )
        answer = self.read(STARTUP_TIMEOUT_S)
        if answer is None or not answer.get("ready"):
            self.kill()
            raise _libreoffice_missing("LibreOffice did not start (its worker exited or hung)")

    def read(self, timeout_s: float) -> dict | None:
        """One answer line, or None on timeout or when the worker died."""
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self.process.stdout.readline()
        if not line:
            return None
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return None

    def kill(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.kill()
        except ProcessLookupError:
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self.process = None

    def convert(
        self, staged: Path, import_filter: tuple[str | None, str | None], out: Path, timeout_s: float, shown_as: str
    ) -> None:
        if self.process is None or self.process.poll() is not None:
            self.kill()
            self.start()
        assert self.process is not None and self.process.stdin is not None
        name, options = import_filter
        request = {"in": str(staged), "out": str(out), "filter": name, "options": options}
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            self.kill()
            raise ConversionError(shown_as, "LibreOffice's worker died before converting it") from None
        answer = self.read(timeout_s)
        if answer is None:
            alive = self.process.poll() is None
            self.kill()
            if alive:
                raise ConversionError(
                    shown_as,
                    f"converting it took longer than {timeout_s:g} s, the limit per"
                    " file (killed; raise it with DOCQA_CONVERT_TIMEOUT if it is just slow)",
                )
            raise ConversionError(shown_as, "LibreOffice crashed converting it (or ran out of its memory limit)")
        self.served += 1
        if not answer.get("ok"):
            raise ConversionError(
                shown_as, f"LibreOffice could not convert it: {answer.get('error') or 'unknown error'}"
            )
        if not out.is_file() or out.stat().st_size == 0:
            raise ConversionError(shown_as, "LibreOffice wrote no PDF for it")

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.stage, ignore_errors=True)


class Converter:
    """A pool of LibreOffice workers converting documents to cached PDFs (thread-safe).

    `workers` defaults to half the cores (at least one, at most 4): encoding needs the rest.
    `worker_command` replaces the LibreOffice worker by another program speaking its protocol
    (tests use a stand-in that sleeps); it gets the staging folder as its last argument.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_mb: int | None = DEFAULT_MEMORY_MB,
        worker_command: Sequence[str] | None = None,
        sandboxed: bool | None = None,
    ) -> None:
        env_workers = os.environ.get("DOCQA_CONVERT_WORKERS")
        cores = os.cpu_count() or 1
        self.workers = workers or (int(env_workers) if env_workers else max(1, min(4, cores // 2)))
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.worker_command = list(worker_command) if worker_command is not None else None
        self.sandboxed = (_bwrap_works() if self.worker_command is None else False) if sandboxed is None else sandboxed
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(self.workers)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="docqa-convert")
        self._inflight: dict[str, Future] = {}
        self._sequence = 0
        self.conversions = 0  # documents actually converted (not served from the cache)

    # -- public --------------------------------------------------------------------------------
    def available(self) -> bool:
        return self.worker_command is not None or libreoffice_available()

    def pdf_for(self, path: Path, kind: str, *, sha256: str | None = None, shown_as: str | None = None) -> Path:
        """The cached PDF of `path` (a CONVERTED kind), converting it first if needed."""
        return self.submit(path, kind, sha256=sha256, shown_as=shown_as).result()

    def submit(self, path: Path, kind: str, *, sha256: str | None = None, shown_as: str | None = None) -> Future:
        """Start converting in the background (a Future of the cached PDF's path); one conversion
        per content, however many callers ask at once."""
        shown = shown_as or sources.printable(path)
        try:
            digest = sha256 or sources.sha256_of(path)
        except OSError as error:
            return _failed(ConversionError(shown, f"cannot read the file: {error.strerror or error}"))
        target = cached_pdf_path(digest)
        if target.is_file():
            return _done(target)
        with self._lock:
            running = self._inflight.get(digest)
            if running is not None:
                return running
            if not self.available():
                return _failed(_libreoffice_missing())
            future = self._executor.submit(self._convert, path, kind, digest, shown)
            self._inflight[digest] = future
        future.add_done_callback(lambda _: self._forget(digest))
        return future

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            workers, self._all, self._idle = self._all, [], []
        for worker in workers:
            worker.close()

    # -- inside ----------------------------------------------------------------------------------
    def _forget(self, digest: str) -> None:
        with self._lock:
            self._inflight.pop(digest, None)

    def _take(self) -> _Worker:
        self._slots.acquire()
        with self._lock:
            if self._idle:
                return self._idle.pop()
            worker = _Worker(self, len(self._all))
            self._all.append(worker)
            return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)
        self._slots.release()

    def _convert(self, path: Path, kind: str, digest: str, shown: str) -> Path:
        target = cached_pdf_path(digest)
        worker = self._take()
        try:
            with self._lock:
                self._sequence += 1
                number = self._sequence
            job = worker.stage / "in" / str(number)
            job.mkdir(parents=True)
            try:
                staged = _stage(path, kind, job, shown)
                out = worker.stage / "out" / f"{number}.pdf"
                out.parent.mkdir(exist_ok=True)
                worker.convert(staged, _IMPORT.get(kind, (None, None)), out, self.timeout_s, shown)
                target.parent.mkdir(parents=True, exist_ok=True)
                with out.open("rb") as produced, atomic_file(target) as cached:
                    shutil.copyfileobj(produced, cached)
                self.conversions += 1
                return target
            finally:
                shutil.rmtree(job, ignore_errors=True)
        finally:
            self._give_back(worker)


def _stage(path: Path, kind: str, folder: Path, shown: str) -> Path:
    """The copy of `path` that LibreOffice reads (HTML/Markdown rewritten self-contained; text as UTF-8)."""
    staged = folder / f"document{_STAGED_SUFFIX.get(kind, '')}"
    try:
        if kind in (sources.HTML, sources.MARKDOWN, sources.TEXT):
            data = path.read_bytes()
            encoding = sources.text_encoding(data[:4096]) or "utf-8"
            text = data.decode(encoding, errors="replace")
            if kind == sources.MARKDOWN:
                text = webpages.markdown_to_html(text, path.stem)
            if kind in (sources.HTML, sources.MARKDOWN):
                text = webpages.self_contained(text, path.parent)
            staged.write_text(text, encoding="utf-8")
        else:
            shutil.copyfile(path, staged)
    except OSError as error:
        raise ConversionError(shown, f"cannot read the file: {error.strerror or error}") from error
    return staged


def _done(value: Path) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _failed(error: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


_default: Converter | None = None
_default_lock = threading.Lock()


def default_converter() -> Converter:
    """The process's shared converter (started on first use, closed at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Converter()
            atexit.register(_default.close)
        return _default


def set_default_converter(converter: Converter | None) -> Converter | None:
    """Replace the shared converter (tests, benchmarks); returns the previous one (not closed)."""
    global _default
    with _default_lock:
        previous, _default = _default, converter
        return previous
