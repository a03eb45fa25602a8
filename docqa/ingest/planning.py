"""Whether a sniffed file goes on to be indexed, or is reported (skipped or failed) with its reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..inputs import sources
from . import skipped as skips

if TYPE_CHECKING:
    from .report import IngestReport


def plan_source(source: sources.SourceFile, report: IngestReport) -> bool:
    """True when `source` can be indexed; otherwise it is reported and False returned.

    A file named as a supported type whose content is not one fails (the user meant it); a file of
    no supported type is skipped as unsupported; a converted type without LibreOffice is skipped
    as needing it (the summary says how to install it). Raises OSError when the file cannot be read.
    """
    path = source.path
    if source.problem is not None:
        report.fail(path, source.problem)
        return False
    if source.kind is None:
        if source.claimed:
            report.fail(path, sources.describe_content(sources.read_head(path)))
        else:
            report.skip(path, _unsupported(path), skips.UNSUPPORTED)
        return False
    if source.kind == sources.EPUB:
        report.skip(path, "EPUB: LibreOffice cannot read it (it only writes EPUB)", skips.UNSUPPORTED)
        return False
    if source.kind in sources.CONVERTED:
        size = path.stat().st_size
        if size > sources.MAX_CONVERTED_BYTES:
            report.skip(
                path,
                f"{size / 2**20:,.0f} MiB, over the limit of {sources.MAX_CONVERTED_BYTES >> 20:,} MiB"
                " for a file converted by LibreOffice (DOCQA_MAX_CONVERT_MB)",
                skips.TOO_LARGE,
            )
            return False
        from ..inputs.converters import INSTALL_HINT, default_converter

        if not default_converter().available():
            report.skip(
                path, f"a {source.kind} file: converting it needs LibreOffice ({INSTALL_HINT})", skips.NEEDS_LIBREOFFICE
            )
            return False
    return True


def _unsupported(path) -> str:
    suffix = path.suffix.lower()
    head = sources.read_head(path)
    if not head:
        return "empty file"
    if sources.text_encoding(head) is not None:
        return f"a text file named {suffix or '(no extension)'} (only .txt, .md and .html text is indexed)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive that is not an office document"
    return f"not a document type docqa reads ({suffix or 'no extension'})"
