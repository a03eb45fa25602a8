"""The CLI reference (docs/cli.md), rendered from the argparse parser itself.

`python3 -m docqa.cli.reference` rewrites docs/cli.md; `--check` exits 1 when the file on disk is
not what the parser renders (tests/test_docs.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

WIDTH = 100  # help text is wrapped at a fixed width, never at the terminal's
REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
GENERATE = "python3 -m docqa.cli.reference"


def _parser() -> argparse.ArgumentParser:
    """The CLI's parser, wherever the CLI package keeps its builder."""
    try:
        from .parser import build_parser  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from .main import build_parser
    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, nested groups included, in parser order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub
                for child, text, grandchild in _subcommands(sub):
                    yield f"{name} {child}", text, grandchild


def command_names() -> list[str]:
    """Every subcommand of `docqa`, as typed after it ("ingest", "search", ...)."""
    return [name for name, _, _ in _subcommands(_parser())]


def _help(parser: argparse.ArgumentParser) -> str:
    """The parser's --help text at a fixed width, without colour."""
    formatter_class = parser.formatter_class
    parser.formatter_class = functools.partial(formatter_class, width=WIDTH)  # type: ignore[call-arg]
    if hasattr(parser, "color"):  # Python 3.14 colours help on a terminal
        parser.color = False
    try:
        return parser.format_help().rstrip() + "\n"
    finally:
        parser.formatter_class = formatter_class


def render() -> str:
    """docs/cli.md as the current parser renders it."""
    parser = _parser()
    commands = list(_subcommands(parser))
    lines = [
        "# CLI reference",
        "",
        f"<!-- Generated from the argparse parser by `{GENERATE}`; do not edit by hand. -->",
        "",
        "Every command's `--help`, as printed. Exit status: 0 all good; 1 finished but some inputs",
        "failed; 2 nothing done (bad usage, model or index problem); 130 stopped by Ctrl-C.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`docqa {name}`](#docqa-{name.replace(' ', '-')}) | {text} |" for name, text, _ in commands]
    lines += ["", "## docqa", "", "```text", _help(parser).rstrip(), "```"]
    for name, _, sub in commands:
        lines += ["", f"## docqa {name}", "", "```text", _help(sub).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(prog=GENERATE, description="Write docs/cli.md from the CLI's parser.")
    options.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is stale; write nothing")
    options.add_argument("--output", type=Path, default=REFERENCE, help="where to write (default docs/cli.md)")
    args = options.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run {GENERATE}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
