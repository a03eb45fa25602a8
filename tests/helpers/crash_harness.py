"""Run index operations in forked children, optionally SIGKILLing them at a chosen call.

Forking (instead of starting a new interpreter) keeps each run to about a second: torch and
transformers are imported once by the parent, which itself never runs a model, FAISS or torch
op, so no thread pool exists when it forks. Everything that touches the index runs in children,
whose results come back pickled over a pipe.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KillPoint:
    """SIGKILL the process at the `call`-th call of `module.attribute` (`Class.method` allowed),
    `when` = "before" or "after" the real call runs."""

    module: str
    attribute: str
    call: int
    when: str
    stage: str

    def __str__(self) -> str:
        return f"{self.stage}:{self.attribute}#{self.call}:{self.when}"

    def arm(self) -> None:
        owner: Any = importlib.import_module(self.module)
        *parents, name = self.attribute.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        real = getattr(owner, name)
        calls = [0]

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == self.call and self.when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if calls[0] == self.call and self.when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, wrapper)


@dataclass(frozen=True)
class ChildResult:
    killed: bool
    exit_code: int | None
    value: Any


@dataclass
class Child:
    """A forked child running a function; `wait()` returns how it ended."""

    pid: int
    read_end: int

    def wait(self) -> ChildResult:
        with os.fdopen(self.read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(status):
            return ChildResult(killed=os.WTERMSIG(status) == signal.SIGKILL, exit_code=None, value=None)
        kind, value = pickle.loads(data)
        if kind == "error":
            raise AssertionError(f"child failed: {value}")
        return ChildResult(killed=False, exit_code=os.WEXITSTATUS(status), value=value)


def spawn(
    function: Callable[[], Any], kill: KillPoint | None = None, before: Callable[[], None] | None = None
) -> Child:
    """Start `function` in a forked child (after `before`, with `kill` armed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        code = 0
        try:
            if before is not None:
                before()
            if kill is not None:
                kill.arm()
            payload = ("ok", function())
        except BaseException as error:  # reported to the parent, which fails the test
            payload = ("error", f"{type(error).__name__}: {error}")
            code = 3
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump(payload, pipe)
        os._exit(code)
    os.close(write_end)
    return Child(pid, read_end)


def in_child(
    function: Callable[[], Any], kill: KillPoint | None = None, before: Callable[[], None] | None = None
) -> ChildResult:
    """Run `function` in a forked child and wait for it."""
    return spawn(function, kill, before).wait()


def single_threaded() -> None:
    """Children run torch and FAISS on one thread: thread pools don't survive fork()."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
