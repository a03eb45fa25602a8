"""What an index holds, read straight from its SQLite store and vector file (for tests that compare
two indexes or check what was stored)."""

from __future__ import annotations

import numpy as np


def stored_pages(index) -> dict[tuple[str, int], np.ndarray]:
    """Every committed page's vectors, by (path, page number); no page may be there twice."""
    rows = index.store.db.execute(
        "SELECT documents.path, pages.number, pages.vec_offset, pages.vec_count FROM pages"
        " JOIN documents ON documents.id = pages.document_id"
    ).fetchall()
    pages = {(path, number): index.vectors.read([offset], [count])[0] for path, number, offset, count in rows}
    assert len(pages) == len(rows), "a page was committed twice"
    return pages
