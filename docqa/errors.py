"""Typed errors. Each carries a message a user can act on; the CLI prints it on one line."""

from __future__ import annotations


class DocQAError(Exception):
    """Base class for every error docqa raises on purpose."""


class ModelLoadError(DocQAError):
    """A model checkpoint could not be found, downloaded or loaded."""


class DeviceError(DocQAError):
    """The requested --device is unknown, unsupported, or not present on this machine."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint loads, but its architecture is not one docqa can use for this role."""


class DocIndexError(DocQAError):
    """Base class for problems with an index on disk."""


class IndexNotFoundError(DocIndexError):
    """The named index does not exist."""


class IndexMismatchError(DocIndexError):
    """The index was built with another model or settings than the ones requested."""


class ModelRequiredError(DocIndexError):
    """A text query or ingest was asked of an index built from given embeddings (no model built it)."""


class IndexLockedError(DocIndexError):
    """Another process is writing to the index."""


class IndexCorruptError(DocIndexError):
    """The index on disk cannot be read and cannot be repaired automatically."""


class InputFileError(DocQAError):
    """One input file cannot be read or rendered. The message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class QueryError(DocQAError, ValueError):
    """A search or question that cannot be run as given (empty query, wrong shape, bad filter, no
    room left in the answer model's context)."""


class OptionsError(DocIndexError, ValueError):
    """Index options that are not valid (see docqa.index.storage.IndexOptions)."""


class NoResultsError(DocQAError):
    """A question found nothing to answer from (empty index, or no page matched)."""


class SourceChangedError(DocQAError):
    """A cited page's source file changed or vanished since it was indexed."""


class StorageFullError(DocIndexError):
    """The disk (or a file-size limit) ran out while writing; the index is intact at its last commit."""


class QrelsError(DocQAError):
    """A relevance-judgment file (qrels) cannot be read; the message names the file and line."""


class MissingDependencyError(DocQAError):
    """An optional dependency is not installed; the message says how to install it."""


class ClusterError(DocQAError):
    """A Ray cluster is unreachable, or a distributed run or sharded search cannot go ahead."""


class PopplerMissingError(DocQAError):
    """pdftoppm/pdfinfo are not installed, so no PDF can be rendered."""


class UploadRejected(DocQAError):
    """An upload that is not a PDF or a supported image (the message says what it is)."""


class UploadTooLarge(DocQAError):
    """An upload over the size limit."""


class NotFound(DocQAError):
    """No page, document or job with that id."""


class QuotaExceeded(DocQAError):
    """The stored uploads would go over the server's disk quota."""


class JobConflict(DocQAError):
    """The job cannot do that in its state (e.g. deleting the file of a document that is indexed)."""


class RemoteCodeError(ModelLoadError):
    """The checkpoint ships code of its own to run, and --trust-remote-code was not given."""


class LibreOfficeMissingError(DocQAError):
    """LibreOffice (or its Python bridge) is not installed, so office files cannot be converted
    (the message says how to install it)."""


class ConversionError(InputFileError):
    """One document could not be converted to PDF (the message names the file and the reason)."""


class Busy(DocQAError):
    """Too much of this kind of work is running or waiting; try again after ``retry_after`` s."""

    def __init__(self, message: str, *, status: int = 429, retry_after: int = 5) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class JobsFileError(DocQAError):
    """jobs.json exists but cannot be read as the server's job list."""


class TokenError(DocQAError):
    """A token that is too short, or a token file that cannot be read."""
