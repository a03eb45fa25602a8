"""The converted-model cache: one folder per (checkpoint hash, engine version, part, shapes, recipe).

A conversion runs once per key, under a file lock (a second process waits, then reuses the result),
into a temporary folder that is renamed into place when complete (a killed conversion leaves only a
``.partial-*`` folder, removed by the next conversion of that key). Lives in ``$DOCQA_CACHE``, else
``$XDG_CACHE_HOME/docqa``, else ``~/.cache/docqa``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ...errors import ModelLoadError
from ...files import atomic_write

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def cache_root() -> Path:
    """Where docqa keeps converted models (see the module docstring)."""
    explicit = os.environ.get("DOCQA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "docqa"


def checkpoint_folder(source: str) -> Path:
    """The local folder holding ``source``'s weights (a folder as given, or its hub cache snapshot)."""
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, local_files_only=True))


def checkpoint_hash(source: str) -> str:
    """sha256 over the checkpoint's config and weight files (memoised by path, size and mtime)."""
    folder = checkpoint_folder(source).resolve()
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json")
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise ModelLoadError(f"{source}: no weight files to convert in {folder}")
    memo_path = cache_root() / "checkpoint-hashes.json"
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo_key = hashlib.sha256(json.dumps([str(folder), stats]).encode()).hexdigest()
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    memo[memo_key] = digest.hexdigest()
    atomic_write(memo_path, json.dumps(memo))
    return memo[memo_key]


def cache_key(**parts: object) -> str:
    """A short stable folder name for a conversion described by ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def converted(key: str, convert: Callable[[Path], None], on_first: Callable[[], None] | None = None) -> Path:
    """The folder of conversion ``key``, running ``convert(folder)`` into it first if needed.

    ``convert`` writes into an empty temporary folder; ``on_first`` is called before a conversion
    actually runs (to tell the user). Safe against a concurrent process and a killed conversion.
    """
    root = cache_root() / "engines"
    final = root / key
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock"):
        if final.is_dir():  # another process finished it while this one waited
            return final
        for stale in root.glob(f"{key}.partial-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        partial = root / f"{key}.partial-{os.getpid()}"
        partial.mkdir()
        if on_first is not None:
            on_first()
        try:
            convert(partial)
            _fsync_tree(partial)
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return final


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
