"""Files an ingest did not index, each with its reason, grouped for the summary and for --json.

Nothing is skipped in silence: hidden files, excluded ones, unsupported types, files too large,
files that need LibreOffice, and failures are all named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

UNSUPPORTED = "unsupported type"
HIDDEN = "hidden"
EXCLUDED = "excluded"
TOO_LARGE = "too large"
NEEDS_LIBREOFFICE = "needs LibreOffice"
FAILED = "failed"
GROUPS = (UNSUPPORTED, HIDDEN, EXCLUDED, TOO_LARGE, NEEDS_LIBREOFFICE, FAILED)
SHOWN_PER_GROUP = 10  # names printed per group in the human summary (--json has them all)


@dataclass(frozen=True)
class SkippedFile:
    path: str  # printable
    reason: str
    group: str  # one of GROUPS

    def to_json(self) -> dict:
        return {"path": self.path, "reason": self.reason, "group": self.group}


def all_skipped(skipped: Sequence[SkippedFile], failures: Sequence[tuple[str, str]]) -> list[SkippedFile]:
    """Every file an ingest did not index: the skipped ones, then the (path, error) failures."""
    return [*skipped, *(SkippedFile(path, error, FAILED) for path, error in failures)]


def summary_lines(skipped: Sequence[SkippedFile], shown: int = SHOWN_PER_GROUP) -> list[str]:
    """Lines for the human summary (stderr): one heading per group, then up to `shown` names."""
    from ..inputs.converters import INSTALL_HINT

    lines: list[str] = []
    for group in GROUPS[:-1]:
        members = [item for item in skipped if item.group == group]
        if not members:
            continue
        if group == NEEDS_LIBREOFFICE:
            noun = "file needs" if len(members) == 1 else "files need"
            lines.append(f"  {len(members)} {noun} LibreOffice to be indexed: {INSTALL_HINT}")
        else:
            lines.append(f"  skipped ({group}): {len(members)}")
        lines.extend(_names(members, shown, show_reason=group not in (NEEDS_LIBREOFFICE,)))
    return lines


def _names(members: Sequence[SkippedFile], shown: int, show_reason: bool) -> list[str]:
    lines = [f"    {item.path}: {item.reason}" if show_reason else f"    {item.path}" for item in members[:shown]]
    if len(members) > shown:
        lines.append(f"    ... and {len(members) - shown} more (--json lists them all)")
    return lines
