"""Find input files: walk the user's paths, decide each file's type by its content, hash it.

PDFs and images are rendered directly; office, OpenDocument, web and text files (CONVERTED kinds)
go through LibreOffice first (docqa.inputs.converters). Every type is decided by content: zip
members, OLE directory entries, text encodings; the extension only tells Markdown from plain text.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import struct
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import WalkOptions

PDF = "pdf"
IMAGE = "image"
# Kinds converted to PDF by LibreOffice first; the stored kind of such a document is one of these.
DOCX, PPTX, XLSX = "docx", "pptx", "xlsx"  # Office Open XML (macro-enabled .docm/.pptm/.xlsm included)
ODT, ODP, ODS = "odt", "odp", "ods"  # OpenDocument
DOC, PPT, XLS = "doc", "ppt", "xls"  # the binary (OLE) Office formats
RTF, HTML, MARKDOWN, TEXT, EPUB = "rtf", "html", "markdown", "text", "epub"
CONVERTED = frozenset({DOCX, PPTX, XLSX, ODT, ODP, ODS, DOC, PPT, XLS, RTF, HTML, MARKDOWN, TEXT})
OFFICE_EXTENSIONS = frozenset(
    {
        ".doc",
        ".docx",
        ".docm",
        ".dotx",
        ".dot",
        ".rtf",
        ".odt",
        ".ott",
        ".ppt",
        ".pptx",
        ".pptm",
        ".pps",
        ".ppsx",
        ".odp",
        ".otp",
        ".xls",
        ".xlsx",
        ".xlsm",
        ".ods",
        ".ots",
        ".html",
        ".htm",
        ".xhtml",
        ".md",
        ".markdown",
        ".txt",
        ".text",
        ".epub",
    }
)
TEXT_EXTENSIONS = frozenset({".txt", ".text", ""})
MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown"})
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml"})
# Zip members declaring more than this in all, or one member this large at a ratio over MAX_ZIP_RATIO,
# are refused before LibreOffice inflates anything.
MAX_ZIP_EXPANDED = 1 << 30
MAX_ZIP_RATIO = 100
_ZIP_RATIO_FLOOR = 32 << 20
MAX_CONVERTED_BYTES = int(os.environ.get("DOCQA_MAX_CONVERT_MB", "200")) << 20  # larger: "too large"

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OPENDOCUMENT = {
    "application/vnd.oasis.opendocument.text": ODT,
    "application/vnd.oasis.opendocument.text-template": ODT,
    "application/vnd.oasis.opendocument.presentation": ODP,
    "application/vnd.oasis.opendocument.presentation-template": ODP,
    "application/vnd.oasis.opendocument.spreadsheet": ODS,
    "application/vnd.oasis.opendocument.spreadsheet-template": ODS,
    "application/epub+zip": EPUB,
}
_OOXML_PARTS = (("word/document.xml", DOCX), ("ppt/presentation.xml", PPTX), ("xl/workbook.xml", XLSX))

_IMAGE_SIGNATURES: tuple[bytes, ...] = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
# A BMP starts with "BM" (as does plenty of text), then a DIB header of one of these sizes.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
PDF_EXTENSIONS = frozenset({".pdf"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
_SNIFF_BYTES = 1024  # PDF readers accept the %PDF- header anywhere in the first 1 KiB


@dataclass(frozen=True)
class SourceFile:
    """A file found under the user's paths. `path` is absolute, as the user's path reached it."""

    path: Path
    kind: str | None  # PDF, IMAGE, a CONVERTED kind, or None when the content is not a supported type
    claimed: bool  # its extension names a supported type
    problem: str | None = None  # why a file of a supported type cannot be indexed (encrypted, zip bomb)
    encoding: str | None = None  # TEXT / MARKDOWN / HTML: the text encoding found


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


def printable(path: Path | str | bytes) -> str:
    """`path` as text that can always be printed or encoded as UTF-8 (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_SNIFF_BYTES)


def classify(path: Path, name: str | None = None) -> SourceFile:
    """Sniff one regular file (known by ``name`` when its own name is a temporary one: the
    extension tells text, Markdown and HTML apart). Raises OSError when it cannot be read."""
    suffix = Path(name or path.name).suffix.lower()
    claimed = suffix in PDF_EXTENSIONS | IMAGE_EXTENSIONS | OFFICE_EXTENSIONS
    head = read_head(path)
    kind = sniff(head)
    if kind is not None:
        return SourceFile(path=path, kind=kind, claimed=claimed)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        kind, problem = _sniff_zip(path)
        return SourceFile(path, kind, claimed, problem)
    if head.startswith(_OLE_MAGIC):
        kind, problem = _sniff_ole(path)
        return SourceFile(path, kind, claimed, problem)
    if head.lstrip(b"\xef\xbb\xbf").startswith(b"{\\rtf"):
        return SourceFile(path, RTF, claimed)
    encoding = text_encoding(head)
    if encoding is not None:
        text = head.decode(encoding, errors="ignore").lstrip("\ufeff \t\r\n").lower()
        looks_html = text.startswith(("<!doctype html", "<html"))
        if suffix in HTML_EXTENSIONS or (looks_html and (suffix == "" or not claimed)):
            return SourceFile(path, HTML, claimed, encoding=encoding)
        if suffix in MARKDOWN_EXTENSIONS:
            return SourceFile(path, MARKDOWN, claimed, encoding=encoding)
        if suffix in TEXT_EXTENSIONS:
            return SourceFile(path, TEXT, claimed, encoding=encoding)
    if (
        claimed
        and suffix in OFFICE_EXTENSIONS
        and suffix not in HTML_EXTENSIONS | MARKDOWN_EXTENSIONS | TEXT_EXTENSIONS
    ):
        return SourceFile(
            path,
            None,
            claimed,
            f"named {suffix} but the content is not such a document (no zip or OLE container: damaged or mislabelled)",
        )
    return SourceFile(path=path, kind=None, claimed=claimed)


def text_encoding(head: bytes) -> str | None:
    """The encoding of text content (BOM, else UTF-8, else a single-byte text), or None for binary."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if not head or b"\x00" in head:
        return None if head else "utf-8"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as error:
        if error.start >= len(head) - 3 and error.reason in ("unexpected end of data", "invalid continuation byte"):
            try:  # a character cut at the end of the sniffed bytes
                head[: error.start].decode("utf-8")
                return "utf-8"
            except UnicodeDecodeError:
                pass
    controls = sum(byte < 32 and byte not in (9, 10, 12, 13) for byte in head)
    return "cp1252" if controls == 0 else None


def _sniff_zip(path: Path) -> tuple[str | None, str | None]:
    """(kind, problem) of a zip container: OOXML by its main part, OpenDocument/EPUB by `mimetype`."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            names = {info.filename for info in members}
            kind = next((kind for part, kind in _OOXML_PARTS if part in names), None)
            if kind is None and "mimetype" in names:
                mimetype = archive.read("mimetype")[:200].decode("ascii", errors="replace").strip()
                kind = _OPENDOCUMENT.get(mimetype)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise
        return None, f"a damaged zip archive ({type(error).__name__}: {str(error)[:120]})"
    if kind is None:
        return None, None  # some other zip: unsupported, not damaged
    expanded = sum(info.file_size for info in members)
    if expanded > MAX_ZIP_EXPANDED:
        return kind, (
            f"its zip members expand to {expanded / 2**20:,.0f} MiB (over the limit of"
            f" {MAX_ZIP_EXPANDED >> 20:,} MiB): a zip bomb, not converted"
        )
    for info in members:
        if info.file_size > _ZIP_RATIO_FLOOR and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            return kind, (
                f"zip member {info.filename[:80]!r} expands {info.file_size // max(info.compress_size, 1):,}x"
                f" to {info.file_size / 2**20:,.0f} MiB: a zip bomb, not converted"
            )
    return kind, None


def _sniff_ole(path: Path) -> tuple[str | None, str | None]:
    """(kind, problem) of an OLE compound file, from the names in its directory."""
    try:
        names = ole_stream_names(path)
    except ValueError as error:
        return None, f"a damaged OLE (legacy Office) file: {error}"
    if "EncryptedPackage" in names or "EncryptionInfo" in names:
        return None, "the document is protected with a password (encrypted); remove the password to index it"
    if "WordDocument" in names:
        return DOC, None
    if "Workbook" in names or "Book" in names:
        return XLS, None
    if "PowerPoint Document" in names:
        return PPT, None
    return None, None


def ole_stream_names(path: Path, limit: int = 4096) -> set[str]:
    """The entry names of an OLE compound file's directory (at most `limit` entries)."""
    with open(path, "rb") as handle:
        header = handle.read(512)
        if len(header) < 512 or header[:8] != _OLE_MAGIC:
            raise ValueError("truncated header")
        sector_size = 1 << struct.unpack_from("<H", header, 30)[0]
        if sector_size not in (512, 4096):
            raise ValueError("bad sector size")
        fat_sectors = struct.unpack_from("<I", header, 44)[0]
        first_dir = struct.unpack_from("<I", header, 48)[0]
        difat = list(struct.unpack_from("<109I", header, 76))[: min(fat_sectors, 109)]
        size = os.fstat(handle.fileno()).st_size

        def sector(number: int) -> bytes:
            offset = (number + 1) * sector_size
            if number >= 0xFFFFFFFA or offset + sector_size > size + sector_size:
                raise ValueError("sector out of range")
            handle.seek(offset)
            return handle.read(sector_size)

        fat: list[int] = []
        for number in difat:  # the first 109 FAT sectors (files up to ~7 MB of FAT): enough for the directory
            fat.extend(struct.unpack(f"<{sector_size // 4}I", sector(number).ljust(sector_size, b"\xff")))
        names: set[str] = set()
        current, visited = first_dir, 0
        while current < 0xFFFFFFFA and visited < limit // (sector_size // 128):
            data = sector(current)
            for start in range(0, len(data) - 127, 128):
                length = struct.unpack_from("<H", data, start + 64)[0]
                if 2 <= length <= 64:
                    names.add(data[start : start + length - 2].decode("utf-16-le", errors="replace"))
            visited += 1
            current = fat[current] if current < len(fat) else 0xFFFFFFFE
        return names


@dataclass(frozen=True)
class Skipped:
    """A file (or a folder, not entered) that the walk leaves out on purpose, and why."""

    path: Path
    reason: str
    group: str  # HIDDEN or EXCLUDED


HIDDEN = "hidden"
EXCLUDED = "excluded"


def _matches(globs: Sequence[str], name: str, relative: str) -> str | None:
    return next((glob for glob in globs if fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(relative, glob)), None)


def walk(
    paths: Iterable[str | os.PathLike[str]], options: WalkOptions | None = None
) -> Iterator[Path | tuple[Path, str] | Skipped]:
    """Yield every regular file under `paths`, each once, in a stable order, as the path it was
    reached by (absolute; a symlink under its own name, not its target's).

    Symlinks are followed, but a directory or file reached twice (symlink loops, two links to one
    file) is yielded once, by the first path that reached it. A path that cannot be visited is yielded as `(path, reason)`; what the
    options leave out (hidden, excluded) as Skipped, a hidden or excluded folder once, unentered.
    Paths given explicitly are taken even when hidden.
    """
    options = options or WalkOptions()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[Path] = set()

    def visit(path: Path, root: Path, given: bool) -> Iterator[Path | tuple[Path, str] | Skipped]:
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
        is_dir = resolved.is_dir()
        if not given:
            relative = path.relative_to(root).as_posix()
            if not options.hidden and path.name.startswith("."):
                what = "hidden folder, not entered" if is_dir else "hidden file"
                yield Skipped(path, f"{what} (--hidden takes it)", HIDDEN)
                return
            glob = _matches(options.exclude, path.name, relative)
            if glob is not None:
                yield Skipped(path, f"excluded by --exclude {glob!r}", EXCLUDED)
                return
            if not is_dir and options.include and _matches(options.include, path.name, relative) is None:
                yield Skipped(path, "matches no --include glob", EXCLUDED)
                return
        elif not is_dir and options.include and _matches(options.include, path.name, path.name) is None:
            yield Skipped(path, "matches no --include glob", EXCLUDED)
            return
        if is_dir:
            key = (info.st_dev, info.st_ino)
            if key in seen_dirs:
                return
            seen_dirs.add(key)
            try:
                children = sorted(path.iterdir(), key=lambda child: os.fsencode(child.name))
            except OSError as error:
                yield (path, f"cannot list directory: {error.strerror or error}")
                return
            for child in children:
                yield from visit(child, root, False)
        elif resolved.is_file():
            if resolved not in seen_files:
                seen_files.add(resolved)
                yield path  # as reached from the user's path: a symlink keeps its own name

    for path in paths:
        start = Path(os.path.abspath(os.fspath(path)))
        yield from visit(start, start, True)


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
