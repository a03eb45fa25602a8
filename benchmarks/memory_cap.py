"""Run a command inside a cgroup v1 memory group that counts page cache (issue 16's capped search).

`memory.limit_in_bytes` of a v1 memory cgroup charges the page cache a member faults in, so a search
whose working set does not fit the limit reads its files from disk again and again. Pages cached
earlier by another group are not charged, so the files are evicted first (posix_fadvise DONTNEED).
Needs root and a cgroup v1 memory hierarchy at /sys/fs/cgroup/memory; `why_not()` says what is missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")


def why_not() -> str | None:
    """None when a capped run can be made here, else the reason it cannot."""
    if not (ROOT / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory hierarchy at {ROOT}"
    if os.geteuid() != 0:
        return "making a memory cgroup needs root"
    if not os.access(ROOT, os.W_OK):
        return f"{ROOT} is not writable"
    return None


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (so the capped process reads them itself)."""
    for path in paths:
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd) if os.access(path, os.W_OK) else None
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_capped(command: list[str], limit_bytes: int, name: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run `command` as the only member of a new memory cgroup of `limit_bytes` (memory + page
    cache), then remove the group. Output is captured as text."""
    group = ROOT / f"{name}-{os.getpid()}"
    group.mkdir(exist_ok=True)
    try:
        (group / "memory.limit_in_bytes").write_text(str(int(limit_bytes)))
        tasks = str(group / "tasks")

        def join() -> None:  # in the child, before exec: everything it maps is charged to the group
            with open(tasks, "w") as handle:
                handle.write(str(os.getpid()))

        return subprocess.run(command, preexec_fn=join, capture_output=True, text=True, timeout=timeout)
    finally:
        try:
            group.rmdir()
        except OSError:
            pass
