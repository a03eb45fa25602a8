#!/usr/bin/env python3
"""Thin shim so `python cli.py ...` works from a checkout; the CLI lives in docqa/cli/."""

from docqa.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
