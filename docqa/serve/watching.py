"""`docqa serve --watch`: folders kept in step inside the server (``docqa.watch.FolderWatcher`` on a
thread of its own).

The watcher's batches run through the service's one writer (``Service.write``): they take turns with
uploads and deletes, searches see them at their next read, and each changes the index's generation.
Nothing the watcher meets stops the server: a file that fails to ingest is listed with its reason
in ``to_json()`` (``/api/info``'s ``watch``) until a later batch takes it; a watcher that fails (a
folder gone, a bug) is logged and started again after a pause that grows with each failure, and a
start catches up with one ``ingest --sync``, as `docqa watch` does after a kill.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..config import IngestSettings
from ..errors import DocQAError
from ..watch import Batch, FolderWatcher, format_batch

if TYPE_CHECKING:
    from .service import Service

RESTART_S = 1.0  # the first pause before a failed watcher starts again; doubled per failure in a row
RESTART_MAX_S = 60.0
FAILURES_KEPT = 100


class _Stopped(DocQAError):
    """Raised from an ingest's progress callback: the server is stopping."""


class ServedWatch:
    """One FolderWatcher at a time over the service's index, restarted whenever it fails, from now
    until ``service.close()`` (it is ``service.watching`` at once). Refused at once (InputFileError,
    IndexLockedError) for a folder that is missing or inside the index folder, or when another
    watcher keeps this index."""

    def __init__(
        self,
        service: Service,
        folders: Iterable[str | os.PathLike[str]],
        *,
        settle_s: float = 1.0,
        rescan_s: float | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.folders = list(folders)
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self.tags = dict(tags or {})
        self.state = "starting"  # starting -> watching (after the catch-up) -> restarting -> ... -> stopped
        self.batches = 0
        self.restarts = 0
        self.error: str | None = None  # why the watcher last failed
        self.last: dict[str, Any] | None = None  # the last batch, as `docqa watch --json` prints it
        self.failed: dict[str, str] = {}  # path -> why it did not ingest, until a later batch takes it
        self._in_a_row = 0  # failures since the last catch-up: the pause before a restart doubles with each
        self._lock = threading.Lock()  # the watcher being made, run or stopped
        self._state = threading.Lock()  # the fields above
        self._stop = threading.Event()
        self._watcher: FolderWatcher | None = self._new_watcher()  # bad folders fail here, at start-up
        self._resolved = [str(folder) for folder in self._watcher.folders]
        self.shown_folders = [service.shown(folder) for folder in self._resolved]
        self._thread = threading.Thread(target=self._run, name="docqa-watch", daemon=True)
        service.watching = self
        self._thread.start()

    def _new_watcher(self) -> FolderWatcher:
        service = self.service
        settings = IngestSettings(
            model=service.model if service.reader.build is None else None,
            device=service.device,
            batch_size=1,  # as uploads: release the shared model between pages, so searches go on
            tags=self.tags,
            on_progress=self._progress,
        )
        return FolderWatcher(
            self.folders,
            service.reader.path,
            settings=settings,
            settle_s=self.settle_s,
            rescan_s=self.rescan_s,
            on_batch=self._batch,
            writer=service.write,
        )

    def _progress(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise _Stopped(f"the server is stopping ({done} of {total} pages encoded are kept)")

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:  # stop() sees the watcher it must stop, or this sees the stop
                if self._stop.is_set():
                    break
                try:
                    watcher = self._watcher = self._watcher or self._new_watcher()
                except Exception as error:  # noqa: BLE001  (a folder gone, say): tried again after a pause
                    watcher = None
                    self._failed(error)
            if watcher is not None:
                try:
                    watcher.run()  # returns once stopped; closes the watcher either way
                except Exception as error:  # noqa: BLE001  logged and started again: never the server's end
                    if not self._stop.is_set():
                        self._failed(error)
                with self._lock:
                    self._watcher = None
            self._stop.wait(min(RESTART_MAX_S, RESTART_S * 2 ** min(max(self._in_a_row - 1, 0), 10)))
        with self._lock:
            if self._watcher is not None:  # made, never run: release its lock and handle
                self._watcher.close()
                self._watcher = None
        with self._state:
            self.state = "stopped"

    def _failed(self, error: Exception) -> None:
        what = str(error) if isinstance(error, DocQAError) else f"{type(error).__name__}: {error}"
        with self._state:
            self.error = self._scrub(what)
            self.state = "restarting"
            self.restarts += 1
            self._in_a_row += 1
        print(f"docqa: watch: {what}; starting again", file=sys.stderr, flush=True)

    def _batch(self, batch: Batch) -> None:
        """Called by the watcher after each batch (on its thread)."""
        with self._state:
            if batch.event in ("ready", "rescan"):  # a whole sync: its failures are the whole list
                self.failed.clear()
                self.state, self.error, self._in_a_row = "watching", None, 0
            for path in batch.paths:
                self.failed.pop(path, None)
            for path, why in batch.failures:
                self.failed[path] = why
            while len(self.failed) > FAILURES_KEPT:
                self.failed.pop(next(iter(self.failed)))
            self.batches += 1
            self.last = {**batch.to_json(), "at": time.time()}
        if batch.event != "synced" or batch.added or batch.updated or batch.removed or batch.moved or batch.failed:
            print(f"docqa: watch: {format_batch(batch)}", file=sys.stderr, flush=True)
        for path, why in batch.failures:
            print(f"docqa: watch:   failed: {path}: {why}", file=sys.stderr, flush=True)

    def to_json(self) -> dict:
        """What ``/api/info`` shows under ``watch`` (paths shown as the server shows documents')."""
        with self._state:
            state, batches, restarts, error = self.state, self.batches, self.restarts, self.error
            last, failed = self.last, list(self.failed.items())
        if last is not None:
            last = {**last, "failures": [self._failure(f["path"], f["error"]) for f in last["failures"]]}
        return {
            "folders": self.shown_folders,
            "state": state,
            "batches": batches,
            "restarts": restarts,
            "error": error,
            "last": last,
            "failures": [self._failure(path, why) for path, why in failed],
        }

    def _failure(self, path: str, why: str) -> dict[str, str]:
        return {"path": self.service.shown(path), "error": self._scrub(why)}

    def _scrub(self, text: str) -> str:
        """An error with the watched folders shown as /api/info shows them (unless absolute paths)."""
        if not self.service.absolute_paths:
            for folder, shown in zip(self._resolved, self.shown_folders, strict=True):
                text = text.replace(folder, shown)
        return self.service.scrub(text)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            if self._watcher is not None:
                self._watcher.stop()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
