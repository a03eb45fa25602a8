"""Where things are, for tests that run the checkout as a user would (subprocesses, scripts)."""

from __future__ import annotations

from pathlib import Path

HELPERS = Path(__file__).resolve().parent
TESTS = HELPERS.parent
REPO = TESTS.parent
