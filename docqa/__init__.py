"""docqa: OCR-free document retrieval and question answering over PDFs and page images.

The public API is imported lazily so that `import docqa.index.store` (or `docqa --help`) does not pay
for importing torch and transformers.

One room per stage; imports run one way, each layer importing only its own and the ones below it
(tests/test_layout.py enforces this, lazy and type-only imports included, and no cycles):

    cli/        parse, call, print                                  (layer 9)
    serve/      HTTP API and web page                               (8)
    eval, cluster/shards, watch   evaluation; shards as one; live folders (7)
    answer/     ask, grounding: hits -> grounded answers            (6)
    api         DocIndex (the facade), Hit, Searchable              (5)
    ingest/     plan, local and Ray pipelines, report -> index/     (4)
    index/      the storage engine of one index folder              (3)
    models/     checkpoints, retriever, generator, engines/;
                cluster/ray_runtime (connecting to Ray)             (2)
    inputs/     sources, render: files -> page images               (1)
    errors, config, files, build; answer/prompt, answer/citations (pure)   (0)
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
