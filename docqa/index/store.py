"""The index's SQLite database (via sqlite-utils): documents, pages, aliases, meta, schema migrations.

The SQLite transaction is the index's one commit point: a document and all its pages become
visible together, or not at all. An alias is another path whose file has a document's content
(sha256): it is kept beside the document, which is encoded once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ..errors import IndexCorruptError
from ..inputs.sources import printable

if TYPE_CHECKING:
    from sqlite_utils import Database


def _import_sqlite_utils() -> ModuleType:
    """sqlite-utils imports pandas when it is installed (about 1 s with pyarrow, for DataFrame column
    types docqa never stores); keep it from doing so, unless something imported pandas already."""
    import sys

    blocked = "pandas" not in sys.modules
    if blocked:
        # None in sys.modules makes `import pandas` raise ImportError (typeshed allows modules only)
        sys.modules["pandas"] = None  # type: ignore[assignment]
    try:
        import sqlite_utils
    finally:
        if blocked:
            del sys.modules["pandas"]
    return sqlite_utils


sqlite_utils = _import_sqlite_utils()

DB_NAME = "docqa.db"
SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 30_000


def path_key(path: Path | str) -> bytes:
    """The exact bytes of a file name (non-UTF-8 names included): the documents' unique key."""
    return os.fsencode(path)


@dataclass(frozen=True)
class DocumentRecord:
    id: int
    path: str
    key: bytes
    sha256: str
    size: int
    mtime: float
    kind: str
    pages: int

    @property
    def file(self) -> Path:
        """The file itself (`path` is for display: undecodable bytes in it are escaped)."""
        return Path(os.fsdecode(self.key))


@dataclass(frozen=True)
class AliasRecord:
    """Another path of a document: a file found with the document's content (sha256), its size and
    mtime as they were then."""

    path: str
    key: bytes
    document_id: int
    sha256: str  # the document's content
    size: int
    mtime: float

    @property
    def file(self) -> Path:
        return Path(os.fsdecode(self.key))


@dataclass(frozen=True)
class PageRecord:
    """One committed page: which document and page it is, its size as rendered (0 x 0 for given
    embeddings; None in indexes from before sizes were kept) and its rows in the vector file."""

    id: int
    document_id: int
    number: int
    width: int | None
    height: int | None
    vec_offset: int
    vec_count: int


@dataclass(frozen=True)
class ListedDocument:
    """A document as `docqa list` shows it: its fields, its tags and when it was indexed."""

    path: str
    pages: int
    size: int
    kind: str
    sha256: str
    tags: dict
    indexed_at: float | None
    also_at: list[str] = field(default_factory=list)  # its aliases' paths

    def to_json(self) -> dict:
        """Its fields, `indexed_at` as "added" (UTC, ISO 8601; None in indexes from before it was kept)."""
        added = None if self.indexed_at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.indexed_at))
        fields = {"path": self.path, "pages": self.pages, "size": self.size, "kind": self.kind, "sha256": self.sha256}
        return {**fields, "tags": self.tags, "added": added, "also_at": self.also_at}


@dataclass(frozen=True)
class NewAlias:
    """A file found with the content of the document it is committed with: its path, size and mtime."""

    path: Path
    size: int
    mtime: float


@dataclass(frozen=True)
class NewPage:
    number: int
    width: int
    height: int
    vec_offset: int
    vec_count: int


@dataclass(frozen=True)
class PageTable:
    """Committed pages in vector-file order, as arrays (what search needs, fetched in one query)."""

    page_ids: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.page_ids)

    def subset(self, keep: np.ndarray) -> PageTable:
        """The pages where the boolean mask `keep` is set, in the same order."""
        return PageTable(self.page_ids[keep], self.offsets[keep], self.counts[keep])


@dataclass(frozen=True)
class PageFilter:
    """Which documents a search may return: every `where` tag must hold and the path must match `path`
    (a glob, as SQLite's GLOB: `*`, `?`, `[...]`, case-sensitive). Empty means everything."""

    where: dict[str, object] = field(default_factory=dict)
    path: str | None = None  # matched against a document's own path and its aliases'

    def __post_init__(self) -> None:
        for key in self.where:
            check_metadata_key(key)

    def __bool__(self) -> bool:
        return bool(self.where) or self.path is not None

    def sql(self) -> tuple[str, list]:
        """A WHERE clause over `documents` and its parameters."""
        clauses, params = [], []
        for key, value in self.where.items():
            clauses.append("CAST(json_extract(documents.metadata, ?) AS TEXT) = CAST(? AS TEXT)")
            params += [_json_path(key), value]
        if self.path is not None:
            clauses.append(
                "(documents.path GLOB ? OR EXISTS (SELECT 1 FROM aliases"
                " WHERE aliases.document_id = documents.id AND aliases.path GLOB ?))"
            )
            params += [self.path, self.path]
        return " AND ".join(clauses) or "1", params


def _under(path: Path, column: str) -> tuple[str, list]:
    """A WHERE clause for rows whose `column` (a path key) is `path` or lies below it."""
    key = path_key(path)
    prefix = key.rstrip(b"/") + b"/"
    return f"WHERE {column} = ? OR substr({column}, 1, ?) = ?", [key, len(prefix), prefix]


def _json_path(key: str) -> str:
    """The SQLite JSON path of a top-level key, quoted so dots and spaces in it are taken literally."""
    check_metadata_key(key)
    return f'$."{key}"'


def check_metadata_key(key: str) -> None:
    """Metadata keys are non-empty and free of double quotes (which SQLite JSON paths cannot escape)."""
    if not isinstance(key, str) or not key or '"' in key:
        raise ValueError(f"metadata key {key!r} must be a non-empty string without double quotes")


def _migration_1(db: Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("documents").create(
        {
            "id": int,
            "path_key": bytes,
            "path": str,
            "sha256": str,
            "size": int,
            "mtime": float,
            "kind": str,
            "pages": int,
            "metadata": str,
            "indexed_at": float,
        },
        pk="id",
        not_null=["path_key", "path", "sha256", "kind", "pages"],
    )
    db.table("documents").create_index(["path_key"], unique=True)
    db.table("documents").create_index(["sha256"])
    db.table("pages").create(
        {
            "id": int,
            "document_id": int,
            "number": int,
            "width": int,
            "height": int,
            "vec_offset": int,
            "vec_count": int,
        },
        pk="id",
        foreign_keys=[("document_id", "documents", "id")],
        not_null=["document_id", "number", "vec_offset", "vec_count"],
    )
    db.table("pages").create_index(["document_id", "number"], unique=True)
    db.table("pages").create_index(["vec_offset"])


def _migration_2(db: Database) -> None:
    """Page ids are never reused (AUTOINCREMENT): the candidate index keys pages by id."""
    db.execute("ALTER TABLE pages RENAME TO pages_v1")
    db.execute(
        "CREATE TABLE pages (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " document_id INTEGER NOT NULL REFERENCES documents(id), number INTEGER NOT NULL,"
        " width INTEGER, height INTEGER, vec_offset INTEGER NOT NULL, vec_count INTEGER NOT NULL)"
    )
    db.execute(
        "INSERT INTO pages (id, document_id, number, width, height, vec_offset, vec_count)"
        " SELECT id, document_id, number, width, height, vec_offset, vec_count FROM pages_v1"
    )
    db.execute("DROP TABLE pages_v1")
    db.execute("CREATE UNIQUE INDEX idx_pages_document_id_number ON pages (document_id, number)")
    db.execute("CREATE INDEX idx_pages_vec_offset ON pages (vec_offset)")


def _migration_3(db: Database) -> None:
    """Checkpoints: encoded pages of a document not yet committed (a long ingest that stopped), kept
    so that the next ingest of the same content resumes from them. Never seen by search."""
    db.execute(
        "CREATE TABLE checkpoint_pages (id INTEGER PRIMARY KEY, path_key BLOB NOT NULL, sha256 TEXT NOT NULL,"
        " number INTEGER NOT NULL, width INTEGER, height INTEGER, vec_offset INTEGER NOT NULL,"
        " vec_count INTEGER NOT NULL)"
    )
    db.execute("CREATE UNIQUE INDEX idx_checkpoint_pages_path_number ON checkpoint_pages (path_key, number)")


def _migration_4(db: Database) -> None:
    """Aliases: other paths of a document, files found with its content (sha256), which are not
    encoded again. An index of an older schema gets the empty table when it is opened."""
    db.execute(
        "CREATE TABLE aliases (path_key BLOB PRIMARY KEY, path TEXT NOT NULL,"
        " document_id INTEGER NOT NULL REFERENCES documents(id), size INTEGER, mtime REAL, indexed_at REAL)"
    )
    db.execute("CREATE INDEX idx_aliases_document_id ON aliases (document_id)")


MIGRATIONS: list[Callable[[Database], None]] = [_migration_1, _migration_2, _migration_3, _migration_4]


class Store:
    """Documents, pages and metadata of one index."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / DB_NAME
        self._commits = 0  # this connection's commits (PRAGMA data_version counts only other connections')
        self._snapshot: tuple | None = None  # (version, page table, vector epoch, vector file) last read
        try:
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            self.db = sqlite_utils.Database(connection)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.db.execute("PRAGMA foreign_keys = ON")
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.enable_wal()
        except sqlite3.DatabaseError as error:
            raise IndexCorruptError(f"{self.path}: not a readable docqa database ({error})") from error

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply pending numbered migrations, each in its own transaction."""
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise IndexCorruptError(
                f"{self.path}: made by a newer docqa (schema {version} > {SCHEMA_VERSION}); upgrade docqa"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                MIGRATIONS[number - 1](self.db)
                self.db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write (BEGIN IMMEDIATE, so writers queue instead of failing later)."""
        connection = self.db.conn
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        self._commits += 1

    # --- meta -----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Set one meta value; call inside a transaction."""
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])

    def get_json(self, key: str) -> dict | None:
        value = self.get_meta(key)
        return None if value is None else json.loads(value)

    # --- documents --------------------------------------------------------------------------
    def document(self, path: Path) -> DocumentRecord | None:
        rows = self._documents("WHERE path_key = ?", [path_key(path)])
        return rows[0] if rows else None

    def documents_under(self, paths: Iterable[Path]) -> list[DocumentRecord]:
        """Documents whose file is one of `paths` or lies below one of them."""
        found: dict[bytes, DocumentRecord] = {}
        for path in paths:
            found.update((record.key, record) for record in self._documents(*_under(path, "path_key")))
        return sorted(found.values(), key=lambda record: record.key)

    def document_with_content(self, sha256: str) -> DocumentRecord | None:
        """A document whose content is `sha256` (the first by path), or None."""
        rows = self._documents("WHERE sha256 = ?", [sha256])
        return rows[0] if rows else None

    # --- aliases: other paths of a document -----------------------------------------------------
    def alias(self, path: Path) -> AliasRecord | None:
        rows = self._aliases("WHERE aliases.path_key = ?", [path_key(path)])
        return rows[0] if rows else None

    def aliases_under(self, paths: Iterable[Path]) -> list[AliasRecord]:
        """Aliases whose file is one of `paths` or lies below one of them."""
        found: dict[bytes, AliasRecord] = {}
        for path in paths:
            found.update((record.key, record) for record in self._aliases(*_under(path, "aliases.path_key")))
        return sorted(found.values(), key=lambda record: record.key)

    def aliases_of(self, document_ids: Iterable[int] | None = None) -> dict[int, list[AliasRecord]]:
        """The aliases of these documents (None: of every document), in path order, by document id."""
        if document_ids is None:
            rows = self._aliases("", [])
        else:
            ids = list(dict.fromkeys(document_ids))
            rows = self._aliases(f"WHERE aliases.document_id IN ({','.join('?' * len(ids))})", ids) if ids else []
        found: dict[int, list[AliasRecord]] = {}
        for record in rows:
            found.setdefault(record.document_id, []).append(record)
        return found

    def _aliases(self, where: str, params: list) -> list[AliasRecord]:
        sql = (
            "SELECT aliases.path, aliases.path_key, aliases.document_id, documents.sha256, aliases.size, aliases.mtime"
            f" FROM aliases JOIN documents ON documents.id = aliases.document_id {where} ORDER BY aliases.path_key"
        )
        return [AliasRecord(*row) for row in self.db.execute(sql, params).fetchall()]

    def put_alias(self, path: Path, document_id: int, *, size: int, mtime: float) -> None:
        """Record `path` as another path of a document (inside a transaction; no document may be at
        `path`: the caller moves or deletes it first)."""
        key = path_key(path)
        self.db.execute(
            "INSERT OR REPLACE INTO aliases (path_key, path, document_id, size, mtime, indexed_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [key, printable(key), document_id, size, mtime, time.time()],
        )

    def delete_aliases(self, keys: Iterable[bytes]) -> None:
        """Drop these paths' aliases (inside a transaction)."""
        self.db.conn.executemany("DELETE FROM aliases WHERE path_key = ?", [(key,) for key in keys])

    def promote(self, alias: AliasRecord) -> None:
        """Make an alias its document's own path, in place of the one it had (inside a transaction):
        pages and vectors stay as they are."""
        self.db.execute("DELETE FROM aliases WHERE path_key = ?", [alias.key])
        self.db.execute(
            "UPDATE documents SET path_key = ?, path = ?, size = ?, mtime = ? WHERE id = ?",
            [alias.key, alias.path, alias.size, alias.mtime, alias.document_id],
        )

    def all_documents(self) -> list[DocumentRecord]:
        return self._documents("", [])

    def listed_documents(self, page_filter: PageFilter) -> list[ListedDocument]:
        """The documents `page_filter` lets through, with their tags and aliases, in path order."""
        clause, params = page_filter.sql()
        rows = self.db.execute(
            "SELECT id, path, pages, size, kind, sha256, metadata, indexed_at FROM documents"
            f" WHERE {clause} ORDER BY path_key",
            params,
        ).fetchall()
        aliases = self.aliases_of()
        return [
            ListedDocument(
                path,
                pages,
                size,
                kind,
                sha256,
                tags=json.loads(metadata or "{}"),
                indexed_at=indexed_at,
                also_at=[alias.path for alias in aliases.get(document_id, [])],
            )
            for document_id, path, pages, size, kind, sha256, metadata, indexed_at in rows
        ]

    def _documents(self, where: str, params: list) -> list[DocumentRecord]:
        sql = f"SELECT id, path, path_key, sha256, size, mtime, kind, pages FROM documents {where} ORDER BY path_key"
        return [DocumentRecord(*row) for row in self.db.execute(sql, params).fetchall()]

    def put_document(
        self,
        path: Path,
        *,
        sha256: str,
        size: int,
        mtime: float,
        kind: str,
        pages: list[NewPage],
        metadata: dict | None = None,
    ) -> tuple[int, list[tuple[int, int]]]:
        """Insert a document with its pages, replacing any document at the same path.

        Call inside a transaction. Returns the new document id and the (offset, count) vector
        ranges of the replaced pages, which the caller drops from the candidate index.
        """
        key = path_key(path)
        old = self.db.execute("SELECT id FROM documents WHERE path_key = ?", [key]).fetchone()
        replaced = self.delete_documents([old[0]]) if old else []
        self.delete_aliases([key])  # the path is a document's own now
        cursor = self.db.execute(
            "INSERT INTO documents (path_key, path, sha256, size, mtime, kind, pages, metadata, indexed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                key,
                printable(key),
                sha256,
                size,
                mtime,
                kind,
                len(pages),
                json.dumps(metadata or {}, ensure_ascii=False),
                time.time(),
            ],
        )
        document_id = int(cursor.lastrowid)
        self.db.conn.executemany(
            "INSERT INTO pages (document_id, number, width, height, vec_offset, vec_count) VALUES (?, ?, ?, ?, ?, ?)",
            [(document_id, p.number, p.width, p.height, p.vec_offset, p.vec_count) for p in pages],
        )
        return document_id, replaced

    def delete_documents(self, document_ids: list[int]) -> list[tuple[int, int]]:
        """Delete documents with their pages and aliases (inside a transaction); returns their vector ranges."""
        if not document_ids:
            return []
        marks = ",".join("?" * len(document_ids))
        ranges = self.db.execute(
            f"SELECT vec_offset, vec_count FROM pages WHERE document_id IN ({marks})", document_ids
        ).fetchall()
        self.db.execute(f"DELETE FROM pages WHERE document_id IN ({marks})", document_ids)
        self.db.execute(f"DELETE FROM aliases WHERE document_id IN ({marks})", document_ids)
        self.db.execute(f"DELETE FROM documents WHERE id IN ({marks})", document_ids)
        return [(int(offset), int(count)) for offset, count in ranges]

    def others_commits(self) -> int:
        """A number that changes whenever another connection (another process's writer, or this
        process's other handle) has committed to the index since this one last asked."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # --- pages ------------------------------------------------------------------------------
    def snapshot(self, page_filter: PageFilter | None = None) -> tuple[PageTable, int, str, np.ndarray | None]:
        """The page table with the vector epoch and file name it refers to, read consistently, and
        (with a filter) the ids of the pages it allows."""
        self.db.execute("BEGIN")
        try:
            allowed = self.page_ids_where(page_filter) if page_filter else None
            # Reading 100k page rows costs ~60 ms: reuse them while nothing was committed since.
            version = (self.db.execute("PRAGMA data_version").fetchone()[0], self._commits)
            if self._snapshot is None or self._snapshot[0] != version:
                self._snapshot = (version, self.page_table(), self.vector_epoch(), self.vector_file())
            _, table, epoch, name = self._snapshot
            return table, epoch, name, allowed
        finally:
            self.db.execute("COMMIT")

    def page_ids_where(self, page_filter: PageFilter) -> np.ndarray:
        """Ids of the pages whose document passes `page_filter`."""
        where, params = page_filter.sql()
        rows = self.db.execute(
            f"SELECT pages.id FROM pages JOIN documents ON documents.id = pages.document_id WHERE {where}", params
        ).fetchall()
        return np.array([row[0] for row in rows], dtype=np.int64)

    def metadata(self, document_id: int) -> dict:
        row = self.db.execute("SELECT metadata FROM documents WHERE id = ?", [document_id]).fetchone()
        return json.loads(row[0] or "{}") if row else {}

    def merge_metadata(self, document_id: int, tags: dict[str, object]) -> bool:
        """Add `tags` to a document's metadata (inside a transaction); False when nothing changed."""
        current = self.metadata(document_id)
        merged = {**current, **tags}
        if merged == current:
            return False
        self.db.execute(
            "UPDATE documents SET metadata = ? WHERE id = ?", [json.dumps(merged, ensure_ascii=False), document_id]
        )
        return True

    def documents_past_row(self, rows: int) -> list[int]:
        """Ids of documents with a page whose vectors reach past the first `rows` rows."""
        return [
            row[0]
            for row in self.db.execute(
                "SELECT DISTINCT document_id FROM pages WHERE vec_offset + vec_count > ?", [rows]
            ).fetchall()
        ]

    def set_synchronous(self, durable: bool) -> None:
        """FULL: each commit is on disk when it returns; NORMAL (WAL): commits are atomic and survive
        the process being killed, and reach the disk at the next checkpoint."""
        self.db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        if durable:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def pages_of(self, document_id: int) -> list[tuple[int, int, int]]:
        """(page id, vector offset, vector count) of a document's pages, in page order."""
        return [
            tuple(row)
            for row in self.db.execute(
                "SELECT id, vec_offset, vec_count FROM pages WHERE document_id = ? ORDER BY number", [document_id]
            ).fetchall()
        ]

    def page_records(self, document_id: int | None = None) -> list[PageRecord]:
        """The committed pages of one document (or of every document), by document id and page number."""
        where, params = ("WHERE document_id = ?", [document_id]) if document_id is not None else ("", [])
        sql = (
            "SELECT id, document_id, number, width, height, vec_offset, vec_count FROM pages"
            f" {where} ORDER BY document_id, number"
        )
        return [PageRecord(*row) for row in self.db.execute(sql, params).fetchall()]

    def vector_epoch(self) -> int:
        """Bumped whenever vector row numbers change meaning (rows dropped, or the file compacted)."""
        return int(self.get_meta("vector_epoch") or 0)

    def vector_file(self) -> str:
        """The vector file's name since the last compaction ("" before any: the first file)."""
        return self.get_meta("vector_file") or ""

    def set_offsets(self, moves: list[tuple[int, int]]) -> None:
        """Point pages (page id, new offset) at their rows in a new vector file (in a transaction)."""
        self.db.conn.executemany("UPDATE pages SET vec_offset = ? WHERE id = ?", [(o, i) for i, o in moves])

    def page_table(self) -> PageTable:
        rows = self.db.execute("SELECT id, vec_offset, vec_count FROM pages ORDER BY vec_offset").fetchall()
        array = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return PageTable(page_ids=array[:, 0], offsets=array[:, 1], counts=array[:, 2])

    def vector_rows(self) -> int:
        """How many vector rows committed pages use."""
        return int(self.db.execute("SELECT COALESCE(SUM(vec_count), 0) FROM pages").fetchone()[0])

    def vector_end(self) -> int:
        """One past the last vector row any committed page uses."""
        row = self.db.execute("SELECT MAX(vec_offset + vec_count) FROM pages").fetchone()
        return int(row[0] or 0)

    def pages_with_documents(self, page_ids: list[int]) -> dict[int, dict]:
        """Page and document fields for many pages in one query, keyed by page id."""
        if not page_ids:
            return {}
        marks = ",".join("?" * len(page_ids))
        sql = (
            "SELECT pages.id, pages.number, pages.document_id, documents.path, documents.path_key,"
            " documents.sha256, documents.kind FROM pages JOIN documents ON documents.id = pages.document_id"
            f" WHERE pages.id IN ({marks})"
        )
        fields = ("page_id", "page", "document_id", "path", "path_key", "sha256", "kind")
        return {row[0]: dict(zip(fields, row)) for row in self.db.execute(sql, page_ids).fetchall()}

    def counts(self) -> tuple[int, int]:
        documents = self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        pages = self.db.execute("SELECT COUNT(*) FROM pages").fetchone()[0]
        return int(documents), int(pages)

    # --- checkpoints (pages of documents not yet committed) -----------------------------------
    def put_checkpoint(self, path: Path, sha256: str, pages: list[NewPage]) -> None:
        """Add encoded pages of `path`'s content `sha256` to its checkpoint (inside a transaction);
        rows of other content at that path are dropped first."""
        key = path_key(path)
        self.db.execute("DELETE FROM checkpoint_pages WHERE path_key = ? AND sha256 != ?", [key, sha256])
        self.db.conn.executemany(
            "INSERT OR REPLACE INTO checkpoint_pages (path_key, sha256, number, width, height, vec_offset, vec_count)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(key, sha256, p.number, p.width, p.height, p.vec_offset, p.vec_count) for p in pages],
        )

    def checkpoint_of(self, path: Path) -> list[tuple[str, NewPage]]:
        """(sha256, page) of every checkpointed page of `path`, in page order."""
        rows = self.db.execute(
            "SELECT sha256, number, width, height, vec_offset, vec_count FROM checkpoint_pages"
            " WHERE path_key = ? ORDER BY number",
            [path_key(path)],
        ).fetchall()
        return [(sha256, NewPage(*page)) for sha256, *page in rows]

    def checkpoint_files(self) -> list[tuple[bytes, str]]:
        """(path key, sha256) of every checkpoint."""
        return [tuple(row) for row in self.db.execute("SELECT DISTINCT path_key, sha256 FROM checkpoint_pages")]

    def delete_checkpoints(self, keys: Iterable[bytes], *, numbers_over: int | None = None) -> int:
        """Drop the checkpoints of these path keys (inside a transaction), or only their pages numbered
        over `numbers_over`; returns the pages dropped."""
        dropped = 0
        for key in keys:
            if numbers_over is None:
                cursor = self.db.execute("DELETE FROM checkpoint_pages WHERE path_key = ?", [key])
            else:
                cursor = self.db.execute(
                    "DELETE FROM checkpoint_pages WHERE path_key = ? AND number > ?", [key, numbers_over]
                )
            dropped += cursor.rowcount
        return dropped

    def path_keys_of(self, document_ids: list[int]) -> list[bytes]:
        """The path keys of these documents."""
        if not document_ids:
            return []
        marks = ",".join("?" * len(document_ids))
        sql = f"SELECT path_key FROM documents WHERE id IN ({marks})"
        return [row[0] for row in self.db.execute(sql, document_ids).fetchall()]

    def delete_checkpoints_past_row(self, rows: int) -> None:
        """Drop checkpointed pages whose vectors reach past the first `rows` rows (inside a transaction)."""
        self.db.execute("DELETE FROM checkpoint_pages WHERE vec_offset + vec_count > ?", [rows])

    def checkpoint_table(self) -> PageTable:
        """Checkpointed pages in vector-file order (page_ids are their checkpoint row ids)."""
        rows = self.db.execute("SELECT id, vec_offset, vec_count FROM checkpoint_pages ORDER BY vec_offset").fetchall()
        array = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return PageTable(page_ids=array[:, 0], offsets=array[:, 1], counts=array[:, 2])

    def set_checkpoint_offsets(self, moves: list[tuple[int, int]]) -> None:
        """Point checkpointed pages (row id, new offset) at a new vector file (in a transaction)."""
        self.db.conn.executemany("UPDATE checkpoint_pages SET vec_offset = ? WHERE id = ?", [(o, i) for i, o in moves])

    def checkpoint_rows(self) -> int:
        """How many vector rows checkpointed pages use."""
        return int(self.db.execute("SELECT COALESCE(SUM(vec_count), 0) FROM checkpoint_pages").fetchone()[0])

    def checkpoint_end(self) -> int:
        """One past the last vector row any checkpointed page uses."""
        row = self.db.execute("SELECT MAX(vec_offset + vec_count) FROM checkpoint_pages").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        self.db.conn.close()
