"""`docqa watch`: keep an index in step with folders as their files change (watchfiles).

On start the watcher catches up with one `ingest --sync` of the folders (so a watcher killed, even
with kill -9, loses nothing: committed documents stay, a half-written one is recovered by the next
writer, and whatever changed while it was down is picked up). Then every change is batched:
watchfiles yields once the folders have been quiet for ``settle_s``, and a file is only taken once
its size and mtime have stayed the same across two looks and it is at least ``settle_s`` old, so a
file still being written is ingested once, complete. Paths that exist are ingested (new and
changed files; unchanged ones are skipped by content hash), paths that are gone are removed (a
moved file is a removal plus an addition; a removed folder takes its documents with it).

One writer: the watcher holds ``watch.lock`` in the index folder for its whole life (a second
watcher is refused), and each batch takes the index's write lock like any ingest; when a manual
`docqa ingest` holds it, the batch waits and is retried. Inside `docqa serve --watch` the batches
are handed to the server's own writer (``writer``), so they take turns with uploads and deletes.
The index folder's own files (the server's uploads among them) are never the watcher's.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from .config import IngestSettings
from .errors import IndexLockedError, InputFileError, MissingDependencyError

if TYPE_CHECKING:
    from .api import DocIndex

WATCH_LOCK = "watch.lock"
INSTALL_HINT = 'docqa watch needs watchfiles: pip install "docqa[watch]"'
T = TypeVar("T")


class Writer(Protocol):
    """Runs one write on a handle of the index and returns what it returned (a server's one writer)."""

    def __call__(self, work: Callable[[DocIndex], T]) -> T: ...


@dataclass
class Batch:
    """What one round of changes did to the index."""

    event: str  # "ready" (the catch-up sync at start), "synced" (a batch of changes), "rescan"
    added: int = 0
    updated: int = 0
    removed: int = 0
    moved: int = 0  # gone paths whose document stays indexed at another path with its content
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    waiting: int = 0  # files seen changing, not yet settled
    seconds: float = 0.0
    paths: list[str] = field(default_factory=list)  # what a "synced" batch looked at (not in to_json)

    def to_json(self) -> dict:
        return {
            "event": self.event,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "moved": self.moved,
            "failed": self.failed,
            "failures": [{"path": p, "error": e} for p, e in self.failures],
            "waiting": self.waiting,
            "seconds": round(self.seconds, 3),
        }


class WatchLock:
    """An exclusive flock on ``watch.lock``: one watcher per index (released when the process dies)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / WATCH_LOCK
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text().strip()
            self._handle.close()
            raise IndexLockedError(
                f"{directory}: another docqa watch{f' (pid {holder})' if holder else ''} "
                "already keeps this index in step; stop it first"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


_GONE = "gone"  # a pending path seen gone once


def _signature(path: str) -> tuple | str | None:
    """How a path looks now: None when gone, "dir" for a folder, else (size, mtime_ns, inode)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if os.path.isdir(path):
        return "dir"
    return (info.st_size, info.st_mtime_ns, info.st_ino)


class FolderWatcher:
    """Keeps ``index`` equal to what ``ingest --sync`` of ``folders`` would make it; its writes run
    on its own handle, or through ``writer`` (a server's one writer) when given."""

    def __init__(
        self,
        folders: Iterable[str | os.PathLike[str]],
        index: str | os.PathLike[str] | None = None,
        *,
        settings: IngestSettings | None = None,
        settle_s: float = 1.0,
        rescan_s: float | None = None,
        on_batch: Callable[[Batch], None] | None = None,
        writer: Writer | None = None,
    ) -> None:
        try:
            import watchfiles  # noqa: F401
        except ImportError as error:
            raise MissingDependencyError(INSTALL_HINT) from error
        from .api import DocIndex

        self.folders = [Path(folder).expanduser().resolve() for folder in folders]
        self.index = DocIndex.open(index, create=True)
        for folder in self.folders:
            problem = (
                "not a folder (docqa watch keeps folders in step)"
                if not folder.is_dir()
                else "inside the index folder, whose files are the index's own (uploads to docqa serve are "
                "ingested by their upload jobs); watch another folder"
                if folder.is_relative_to(self.index.path.resolve())
                else None
            )
            if problem:
                self.index.close()
                raise InputFileError(str(folder), problem)
        try:
            self.lock = WatchLock(self.index.path)
        except IndexLockedError:
            self.index.close()
            raise
        self._write = writer or (lambda work: work(self.index))
        self.settings = settings or IngestSettings()
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self.on_batch = on_batch or (lambda batch: None)
        self.stop_event = threading.Event()
        self._pending: dict[str, tuple | str | None] = {}  # path -> its signature at the last look
        self._last_sync = 0.0
        self._leaving: set[str] = set()  # watched folders found gone, whose documents are being removed

    # --- one round ---------------------------------------------------------------------------
    def catch_up(self, event: str = "ready") -> Batch:
        """One ingest --sync of every folder (at start, and every ``rescan_s`` if set)."""
        started = time.monotonic()
        report = self._with_lock(
            lambda index: index.ingest([str(f) for f in self.folders], _replace(self.settings, sync=True))
        )
        self._last_sync = time.monotonic()
        batch = Batch(
            event,
            added=report.added,
            updated=report.updated,
            removed=report.removed,
            moved=report.moved,
            failed=report.failed,
            failures=[(str(f.path), f.error) for f in report.failures],
            seconds=time.monotonic() - started,
        )
        self.on_batch(batch)
        return batch

    def note(self, paths: Iterable[str]) -> None:
        """Record paths that changed (their state is looked at when the batch is settled)."""
        for path in paths:
            if not self._ignored(path):
                self._pending.setdefault(path, None)

    def settle(self, now: float | None = None) -> Batch | None:
        """Apply the pending paths that have settled; None when nothing was ready. A path that is gone
        is taken at its second look, so that a file moved from it, settling at its new path meanwhile,
        comes in the same batch: kept as another path of the document, which then moves there."""
        now = time.time() if now is None else now
        ready: list[str] = []
        for path, previous in list(self._pending.items()):
            current = _signature(path)
            if current == "dir":  # a folder moved or copied in: each file in it settles on its own
                del self._pending[path]
                self.note(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
                continue
            if current is None and previous != _GONE:  # removed a look later: with the path it may have moved to
                self._pending[path] = _GONE
                continue
            if isinstance(current, tuple):
                quiet = now - current[1] / 1e9 >= self.settle_s
                if current != previous or not quiet:  # still changing, or too fresh: look again later
                    self._pending[path] = current
                    continue
            ready.append(path)
        if not ready:
            return None
        started = time.monotonic()
        present = [path for path in ready if os.path.exists(path)]
        gone = [path for path in ready if not os.path.exists(path)]
        batch = Batch("synced", paths=ready)

        def apply(index: DocIndex) -> None:
            # the present files first: a file moved within the folders is then kept as another path
            # of its old path's document (same content), and removing the old path moves the
            # document there, nothing encoded again
            if present:
                try:
                    report = index.ingest(present, self.settings)
                except InputFileError as error:  # every path vanished since the look: next round removes them
                    self.note([error.path])
                else:
                    batch.added, batch.updated, batch.failed = report.added, report.updated, report.failed
                    batch.failures = [(str(f.path), f.error) for f in report.failures]
            if gone:
                removed = index.remove(gone)
                batch.removed += len(removed.removed) - len(removed.moved)
                batch.moved += len(removed.moved)

        self._with_lock(apply)
        for path in ready:
            self._pending.pop(path, None)
        batch.waiting = len(self._pending)
        batch.seconds = time.monotonic() - started
        self.on_batch(batch)
        return batch

    def _ignored(self, path: str) -> bool:
        """The index's own files (an index kept inside a watched folder) never count as changes."""
        index = str(self.index.path.resolve())
        return path == index or path.startswith(index + os.sep)

    def _with_lock(self, work: Callable[[DocIndex], T]) -> T:
        """Run a write; while another writer (a manual ingest) holds the index, wait and retry."""
        while True:
            try:
                return self._write(work)
            except IndexLockedError:
                if self.stop_event.wait(0.5):
                    raise

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Catch up, then follow changes until ``stop_event`` is set (or Ctrl-C); InputFileError
        once a watched folder is gone (its documents removed first)."""
        import watchfiles

        step_ms = max(50, int(self.settle_s * 1000))
        watcher = watchfiles.watch(
            *self.folders,
            watch_filter=None,
            debounce=max(30_000, step_ms),
            step=step_ms,
            stop_event=self.stop_event,
            rust_timeout=max(200, step_ms),
            yield_on_timeout=True,
            raise_interrupt=True,
            ignore_permission_denied=True,
        )
        started = False
        try:
            for changes in watcher:
                # the first yield comes once the watcher is set up: what changes from here on is seen,
                # so the catch-up sync cannot miss a change made while it runs
                if not started:
                    started = True
                    self.catch_up()
                    continue
                self.note(path for _, path in changes)
                if self._pending:
                    self.settle()
                gone = next((str(folder) for folder in self.folders if not folder.is_dir()), None)
                if gone is not None:  # watchfiles would go on, deaf to it even once it is back
                    if gone in self._leaving and gone not in self._pending:  # its documents went in a batch
                        raise InputFileError(gone, "the watched folder is gone (moved or deleted)")
                    self._leaving.add(gone)
                    self.note([gone])  # settled like any gone path (unless its deletion was seen already)
                if self.rescan_s and time.monotonic() - self._last_sync >= self.rescan_s:
                    self.catch_up("rescan")
        finally:
            self.close()

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.lock.close()
        self.index.close()


def _replace(settings: IngestSettings, **changes) -> IngestSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def format_batch(batch: Batch) -> str:
    what = "caught up" if batch.event == "ready" else "rescanned" if batch.event == "rescan" else "synced"
    line = (
        f"{what}: {batch.added} added, {batch.updated} updated, {batch.removed} removed, {batch.failed} failed"
        f"{f', {batch.moved} moved' if batch.moved else ''} in {batch.seconds:.1f} s"
    )
    return line + (f" ({batch.waiting} still being written)" if batch.waiting else "")


__all__ = ["Batch", "FolderWatcher", "format_batch"]
