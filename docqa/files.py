"""Writing files so that a reader or a crash sees the old content or the new, never a mix."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


class PendingFile:
    """A temporary file being written (``file``); ``place`` makes it durable and puts it at a path."""

    def __init__(self, temp: Path, handle: int) -> None:
        self.temp = temp
        self.file: BinaryIO = os.fdopen(handle, "wb")
        self.placed = False

    def place(self, path: Path) -> None:
        """fsync, then rename over ``path`` (a path in the temporary file's own folder, or at least
        on its file system): ``path`` holds either its old content or all that was written."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, path)
        self.placed = True


@contextmanager
def atomic_writer(folder: Path, name: str) -> Iterator[PendingFile]:
    """A temporary file in ``folder`` (".NAME.*.tmp") to write into, for a destination known only
    once it is written (an upload named by its digest); ``place(path)`` puts it there. Left unplaced
    (the block failed, or decided against it), it is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    pending = PendingFile(Path(temp_name), handle)
    try:
        yield pending
    finally:
        if not pending.placed:
            pending.file.close()
            pending.temp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write `path`'s new content into, put in its place atomically and durably when the
    block ends: a temporary file beside it (".NAME.*.tmp"), fsynced, then renamed over `path`. A
    block that fails leaves `path` as it was and no temporary file."""
    with atomic_writer(path.parent, path.name) as pending:
        yield pending.file
        pending.place(path)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` atomically and durably (see `atomic_file`)."""
    with atomic_file(path) as temp:
        temp.write(data.encode() if isinstance(data, str) else data)
