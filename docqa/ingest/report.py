"""What an ingest reports: documents added, updated, unchanged, removed, failed or skipped, files
kept as other paths of a document with the same content, the failures and skipped files by name,
and where the time went per stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..inputs import sources
from . import skipped as skips


@dataclass(frozen=True)
class Failure:
    path: str
    error: str


@dataclass(frozen=True)
class Duplicate:
    path: str
    same_as: str  # the path of the document (or of this run's file) with the same content


@dataclass
class IngestReport:
    index: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    moved: int = 0  # --sync: documents whose file is gone, kept at an alias that has their content
    failed: int = 0
    skipped: int = 0
    duplicates: int = 0  # files with the content of another path: kept as its alias, not encoded
    pages_added: int = 0
    pages_resumed: int = 0  # of pages_added, taken from checkpoints of earlier, stopped ingests
    failures: list[Failure] = field(default_factory=list)
    resumed: list[tuple[str, int]] = field(default_factory=list)  # (path, pages) resumed from a checkpoint
    duplicate_files: list[Duplicate] = field(default_factory=list)
    skipped_files: list[skips.SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    timings: Timings = field(default_factory=lambda: Timings())

    def fail(self, path: Path | str, error: str) -> None:
        """Record a file that could not be indexed (its name made printable, whatever its bytes)."""
        self.failed += 1
        self.failures.append(Failure(sources.printable(path), error))

    def duplicate(self, path: Path | str, same_as: str) -> None:
        """Record a file kept as another path of the document (or this run's file) `same_as`, whose
        content it has."""
        self.duplicates += 1
        self.duplicate_files.append(Duplicate(sources.printable(path), same_as))

    def resume(self, path: Path | str, pages: int) -> None:
        """Record a document that goes on from `pages` pages checkpointed by an earlier ingest."""
        self.resumed.append((sources.printable(path), pages))

    def skip(self, path: Path | str, reason: str, group: str) -> None:
        """Record a file left out on purpose (hidden, excluded, unsupported, too large, no LibreOffice)."""
        self.skipped += 1
        self.skipped_files.append(skips.SkippedFile(sources.printable(path), reason, group))

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "documents": {
                "added": self.added,
                "updated": self.updated,
                "unchanged": self.unchanged,
                "removed": self.removed,
                "moved": self.moved,
                "failed": self.failed,
                "skipped": self.skipped,
                "duplicates": self.duplicates,
            },
            "pages_added": self.pages_added,
            "pages_resumed": self.pages_resumed,
            "resumed": [{"path": path, "pages": pages} for path, pages in self.resumed],
            "duplicates": [asdict(duplicate) for duplicate in self.duplicate_files],
            "failures": [{"path": f.path, "error": f.error} for f in self.failures],
            "skipped": [
                item.to_json()
                for item in skips.all_skipped(self.skipped_files, [(f.path, f.error) for f in self.failures])
            ],
            "seconds": round(self.seconds, 3),
            "timings": self.timings.to_json(),
        }


@dataclass
class Timings:
    """Where an ingest's time went, per stage (seconds of work; render and preprocess run in their
    own threads and overlap encode, so the stages add up to more than the wall time)."""

    render_s: float = 0.0  # poppler / image decoding (render thread)
    preprocess_s: float = 0.0  # the processor: resizing, tiling, tokenizing (preprocess thread)
    encode_s: float = 0.0  # the model's forward passes (main thread)
    store_s: float = 0.0  # vector appends and commits (main thread)

    def to_json(self) -> dict:
        return {name: round(value, 3) for name, value in asdict(self).items()}
