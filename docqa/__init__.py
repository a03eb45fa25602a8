"""docqa: OCR-free document retrieval and question answering over PDFs and page images.

The public API is imported lazily so that `import docqa.index.store` (or `docqa --help`) does not pay
for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DocIndex": "api",
    "Hit": "api",
    "IndexInfo": "api",
    "RemoveReport": "api",
    "IngestSettings": "config",
    "DocQAError": "errors",
    "IngestReport": "ingest.report",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'docqa' has no attribute {name!r}")
