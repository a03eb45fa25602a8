"""The storage engine of one index folder: SQLite store (documents, pages, metadata), the vector
file, the candidate index and its lifecycle, exact MaxSim search, write locking and crash recovery.

This package's names below are its only door (tests/test_layout.py refuses imports of its modules
from outside it): `IndexStorage` reads, writes and removes; `docqa.api.DocIndex` reads and removes
through it and its store's typed methods, the ingest pipelines write through it. Nothing else
reads or writes the folder's files (tests that check the on-disk format itself say so where they do).
"""

from .search import ScoredPage
from .storage import IndexOptions, IndexStorage
from .store import (
    DB_NAME,
    AliasRecord,
    DocumentRecord,
    NewAlias,
    NewPage,
    PageFilter,
    PageRecord,
    Store,
    check_metadata_key,
)
from .vectors import VectorFile, as_float32

__all__ = [
    "DB_NAME",
    "AliasRecord",
    "DocumentRecord",
    "IndexOptions",
    "IndexStorage",
    "NewAlias",
    "NewPage",
    "PageFilter",
    "PageRecord",
    "ScoredPage",
    "Store",
    "VectorFile",
    "as_float32",
    "check_metadata_key",
]
