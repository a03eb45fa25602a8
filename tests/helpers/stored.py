"""What an index holds, read from its page records and vector file (for tests that compare two
indexes or check what was stored)."""

from __future__ import annotations

import numpy as np


def stored_pages(index) -> dict[tuple[str, int], np.ndarray]:
    """Every committed page's vectors, by (path, page number); no page may be there twice."""
    paths = {document.id: document.path for document in index.documents()}
    records = index.page_records()
    pages = {
        (paths[page.document_id], page.number): index.vectors.read([page.vec_offset], [page.vec_count])[0]
        for page in records
    }
    assert len(pages) == len(records), "a page was committed twice"
    return pages
