"""The storage engine of one index folder: SQLite store (documents, pages, metadata), the vector
file, the candidate index and its lifecycle, exact MaxSim search, write locking and crash recovery.

`IndexStorage` (storage.py) is the door: `docqa.api.DocIndex` reads and removes through it and
its store's typed methods, the ingest pipelines write through it. Nothing else reads or writes the
folder's files (tests that check the on-disk format itself say so where they do).
"""
