"""Find input files: walk the user's paths, decide each file's type by its content, hash it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PDF = "pdf"
IMAGE = "image"

_IMAGE_SIGNATURES: tuple[bytes, ...] = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
# A BMP starts with "BM" (as does plenty of text), then a DIB header of one of these sizes.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
PDF_EXTENSIONS = frozenset({".pdf"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
_SNIFF_BYTES = 1024  # PDF readers accept the %PDF- header anywhere in the first 1 KiB


@dataclass(frozen=True)
class SourceFile:
    """A file found under the user's paths. `path` is absolute and resolved (symlinks followed)."""

    path: Path
    kind: str | None  # PDF, IMAGE, or None when the content is not a supported type
    claimed: bool  # its extension names a supported type


def sniff(head: bytes) -> str | None:
    """The supported type of a file given its first bytes, or None."""
    if b"%PDF-" in head[:_SNIFF_BYTES]:
        return PDF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return IMAGE
    if head.startswith(_IMAGE_SIGNATURES):
        return IMAGE
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return IMAGE
    return None


def describe_content(head: bytes) -> str:
    """A short human description of unsupported content, for error messages."""
    if not head:
        return "the file is empty"
    lowered = head[:256].lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "the content is HTML, not a PDF or an image"
    return "the content is not a PDF or a supported image (png, jpeg, tiff, bmp, webp)"


def printable(path: Path | str) -> str:
    """`path` as text that can always be printed or encoded as UTF-8 (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_SNIFF_BYTES)


def classify(path: Path) -> SourceFile:
    """Sniff one regular file. Raises OSError when it cannot be read."""
    claimed = path.suffix.lower() in PDF_EXTENSIONS | IMAGE_EXTENSIONS
    return SourceFile(path=path, kind=sniff(read_head(path)), claimed=claimed)


def walk(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path | tuple[Path, str]]:
    """Yield every regular file under `paths`, resolved, each once, in a stable order.

    Symlinks are followed, but a directory or file reached twice (symlink loops, two links to one
    file) is yielded once. A path that cannot be visited is yielded as `(path, reason)`.
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[Path] = set()

    def visit(path: Path) -> Iterator[Path | tuple[Path, str]]:
        try:
            resolved = path.resolve(strict=True)
            info = resolved.stat()
        except FileNotFoundError:
            yield (path, "no such file (or a broken symlink)")
            return
        except RuntimeError:
            yield (path, "symlink loop")
            return
        except OSError as error:
            yield (path, error.strerror or str(error))
            return
        if resolved.is_dir():
            key = (info.st_dev, info.st_ino)
            if key in seen_dirs:
                return
            seen_dirs.add(key)
            try:
                children = sorted(resolved.iterdir(), key=lambda child: os.fsencode(child.name))
            except OSError as error:
                yield (path, f"cannot list directory: {error.strerror or error}")
                return
            for child in children:
                yield from visit(child)
        elif resolved.is_file():
            if resolved not in seen_files:
                seen_files.add(resolved)
                yield resolved

    for path in paths:
        yield from visit(Path(os.path.abspath(os.fspath(path))))


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
