"""Fault injection for the Ray tests, importable by Ray workers (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os

from docqa.ingest.ray import PageEncoder


class DyingEncoder(PageEncoder):
    """A PageEncoder whose process dies (os._exit, like a crash or an OOM kill) on its first batch
    while the file named by $DOCQA_TEST_DIE_ONCE exists; the one that removes the file dies."""

    def __call__(self, batch):
        try:
            os.unlink(os.environ["DOCQA_TEST_DIE_ONCE"])
        except FileNotFoundError:
            return super().__call__(batch)
        os._exit(1)
