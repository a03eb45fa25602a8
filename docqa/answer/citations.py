"""Which shown pages an answer cites: page references ("page 4", "pp. 3-4") bound to the file
named next to them, by full name or stem. Pure text matching."""

from __future__ import annotations

import re
from pathlib import Path

from .prompt import Citation, PageImage

_PAGE_REF = re.compile(
    r"\b(?:pages?|pgs?\.?|pp\.|p\.)\s*(\d+(?:\s*(?:,|and|&|-|–|to)\s*\d+)*)|\bp(\d+)\b", re.IGNORECASE
)
_BIND_BEFORE = re.compile(r"[\s,:;(\[]*\Z")  # "report.pdf, page 4", "report.pdf (p. 4)"
_BIND_AFTER = re.compile(r"\A[\s,(\[]*(of|in|from|on)?[\s,(\[]*\Z", re.IGNORECASE)  # "page 4 of report.pdf"


def _page_numbers(group: str) -> set[int]:
    numbers: set[int] = set()
    for part in re.split(r"\s*(?:,|and|&)\s*", group):
        bounds = [int(n) for n in re.findall(r"\d+", part)]
        if len(bounds) == 2 and bounds[0] <= bounds[1] <= bounds[0] + 50:
            numbers.update(range(bounds[0], bounds[1] + 1))
        else:
            numbers.update(bounds)
    return numbers


def _file_mentions(text: str, names: set[str]) -> list[tuple[int, int, str, bool]]:
    """(start, end, file name, by full name?) of each mention of a shown file, by full name or stem."""
    found = []
    for name in names:
        stem = Path(name).stem
        for alias in {name, stem} if len(stem) >= 2 else {name}:
            pattern = r"(?<![\w.])" + re.escape(alias) + r"(?![\w]|\.\w)"
            found += [(m.start(), m.end(), name, alias == name) for m in re.finditer(pattern, text, re.IGNORECASE)]
    return sorted(found)


def find_citations(text: str, pages: list[PageImage]) -> list[Citation]:
    """One Citation per shown page (same order); ``cited`` where the answer refers to that page.

    A reference is a page number ("page 4", "p. 4", "pp. 3-4", "pages 2 and 5") bound to a file
    named right before it ("[report.pdf, page 4]") or right after it ("page 4 of report.pdf"), by
    full name or stem. A page number with no file next to it counts only when exactly one shown
    page has that number; a bare file name (full name, not stem) counts only when exactly one page
    of that file was shown.
    """
    names = {Path(p.path).name for p in pages}
    mentions = _file_mentions(text, names)
    cited: set[tuple[str, int]] = set()
    bound_mentions: set[int] = set()
    for ref in _PAGE_REF.finditer(text):
        numbers = _page_numbers(ref.group(1)) if ref.group(1) else {int(ref.group(2))}
        before = [m for m in mentions if m[1] <= ref.start() and _BIND_BEFORE.search(text[m[1] : ref.start()])]
        after = [
            (m, bind.group(1))
            for m in mentions
            if m[0] >= ref.end() and (bind := _BIND_AFTER.match(text[ref.end() : m[0]]))
        ]
        # "page 4 of report.pdf" beats "memo.pdf, page 2", which beats "page 4 (report.pdf)"
        owner = next((m for m, word in after if word), before[-1] if before else after[0][0] if after else None)
        if owner is not None:
            bound_mentions.add(owner[0])
            cited.update((owner[2], n) for n in numbers)
            continue
        for n in numbers:
            matching = [p for p in pages if p.page == n]
            if len({Path(p.path).name for p in matching}) == 1:
                cited.add((Path(matching[0].path).name, n))
    for start, _, name, full in mentions:
        same_file = {p.page for p in pages if Path(p.path).name == name}
        if full and start not in bound_mentions and len(same_file) == 1:
            cited.add((name, next(iter(same_file))))
    return [Citation(p.path, p.page, p.score, (Path(p.path).name, p.page) in cited) for p in pages]
