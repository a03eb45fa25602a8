"""One writer per index: an exclusive advisory lock on `write.lock` inside the index folder."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from ..errors import IndexLockedError

LOCK_NAME = "write.lock"


class WriteLock:
    """Held for the whole of an ingest or remove; released by close() or when the process dies."""

    def __init__(self, directory: Path, wait_s: float = 0.0) -> None:
        self.path = directory / LOCK_NAME
        self._handle = open(self.path, "a+")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    self._handle.close()
                    raise IndexLockedError(
                        f"{directory}: another docqa process{holder} is writing to this index;"
                        " wait for it to finish (searches can run meanwhile)"
                    ) from None
                time.sleep(0.2)
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def close(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
