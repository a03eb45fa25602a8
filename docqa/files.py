"""Writing small files so that a reader or a crash sees the old content or the new, never a mix."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write `path`'s new content into, put in its place atomically and durably when the
    block ends: a temporary file beside it (".NAME.*.tmp"), fsynced, then renamed over `path`. A
    block that fails leaves `path` as it was and no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            yield temp
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` atomically and durably (see `atomic_file`)."""
    with atomic_file(path) as temp:
        temp.write(data.encode() if isinstance(data, str) else data)
