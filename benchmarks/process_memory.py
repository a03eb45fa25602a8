"""This process's memory as the kernel counts it (Linux /proc), for the benchmarks' tables.
Standard library only: fastplaid_runner.py imports it from fast-plaid's own virtualenv."""

from __future__ import annotations

from pathlib import Path


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_anon_bytes() -> int:
    """Anonymous resident memory (what is memory-mapped from files is not counted)."""
    return _status_bytes("RssAnon")


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    return _status_bytes("VmHWM")
