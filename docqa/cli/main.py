"""The command line's entry: parse, run the command, map errors and Ctrl-C to exit statuses.

The commands live one group a module (indexing, searching, asking, serving), the parser in
parser.py; each only parses, calls the library and prints (human text or --json).

Exit status: 0 all good; 1 finished but some inputs failed; 2 nothing done (bad usage, model or
index problem), with a one-line error on stderr.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import DocQAError
from .common import EXIT_ERROR, EXIT_INTERRUPTED
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        if getattr(args, "device", None) is not None:  # a bad --device is refused before any work
            from ..models.checkpoints import check_device

            check_device(args.device)
        return args.handler(args)
    except DocQAError as error:
        print(f"docqa: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        _interrupted(getattr(args, "interrupted", "interrupted"))


def _interrupted(message: str) -> NoReturn:
    """Ctrl-C: say so and end the process at once with status 130.

    A prefill under way cannot be cut short, Python's own shutdown would wait for it (and a
    second Ctrl-C would then abort torch mid-operation), and even with no model running, tearing
    down torch and transformers takes seconds on a busy machine. So after flushing, the process
    ends with os._exit: what is worth keeping is committed already, and a later writer recovers
    anything written past the last commit.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the exit short
    print(f"docqa: {message}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_INTERRUPTED)
