"""The storage engine of one index folder: SQLite store (documents, pages, metadata), the vector
file, the candidate index and exact MaxSim search, write locking and crash recovery.

`docqa.api.DocIndex` is the facade over it; nothing else reaches into these modules' files.
"""
