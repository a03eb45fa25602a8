#!/usr/bin/env python3
"""Build the API reference (HTML) from docqa's docstrings with pdoc.

    python3 scripts/api_reference.py build/api

Every module of docqa is imported first: one that needs an optional extra which is not installed
(the serve extra's fastapi, Ray, pyarrow) is left out with a note; any other import error fails
the build (exit 1), so a broken import cannot hide behind a missing page. Needs `pip install pdoc`.
The output is generated: do not commit it.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Top-level packages that only optional extras install (pyproject.toml's [project.optional-dependencies]).
OPTIONAL = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "ray", "pyarrow"}
# Scripts that docqa starts under another interpreter and never imports: the LibreOffice worker runs
# under the system Python, whose `uno` (python3-uno) the project's Python does not have.
OTHER_INTERPRETER = {"docqa.inputs.uno_worker"}


def modules(package: str = "docqa") -> tuple[list[str], list[str]]:
    """(module specs for pdoc, notes on the modules left out for a missing optional extra)."""
    sys.path.insert(0, str(ROOT))
    root = importlib.import_module(package)
    walked = [info.name for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}.")]
    names = [package] + [name for name in walked if not name.endswith(".__main__")]  # runs the CLI
    found, notes = [], []
    for name in sorted(OTHER_INTERPRETER.intersection(names)):
        notes.append(f"{name}: left out (a script run under another interpreter, never imported)")
        names.remove(name)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            missing = (error.name or "").split(".")[0]
            if missing not in OPTIONAL:
                raise
            notes.append(f"{name}: left out ({missing} is not installed: an optional extra)")
            continue
        found.append(name)
    # pdoc walks a package's submodules itself, except those its __all__ leaves out: name only those.
    specs = []
    for name in found:
        parent, _, leaf = name.rpartition(".")
        listed = getattr(sys.modules[parent], "__all__", None) if parent else None
        if not parent or (listed is not None and leaf not in listed):
            specs.append(name)
    # ...and it would walk into the other interpreter's scripts too: "!name" excludes one (pdoc
    # still tries the import while walking and warns; that failure is the expected one).
    for name in sorted(OTHER_INTERPRETER):
        specs.append(f"!{name}")
        warnings.filterwarnings("ignore", message=f"Couldn't import {re.escape(name)}:")
    # docqa's public names are imported lazily (module __getattr__); pdoc reads a module's __dict__,
    # so resolve them once here for the package page to document them.
    for export in getattr(root, "__all__", []):
        setattr(root, export, getattr(root, export))
    return specs, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build docqa's API reference with pdoc.")
    parser.add_argument(
        "output",
        type=Path,
        nargs="?",
        default=ROOT / "build" / "api",
        help="folder to write the HTML into (default build/api)",
    )
    args = parser.parse_args(argv)
    try:
        import pdoc
    except ImportError:
        print("api_reference: pdoc is not installed: pip install pdoc", file=sys.stderr)
        return 1
    try:
        names, notes = modules()
    except ImportError as error:
        print(f"api_reference: importing docqa failed: {error}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"api_reference: {note}", file=sys.stderr)
    pdoc.render.configure(docformat="markdown", search=True, show_source=False)
    pdoc.pdoc(*names, output_directory=args.output)
    print(f"api_reference: {len(names)} modules -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
