"""Run `docqa` commands in real child processes, each held at one stage, for the Ctrl-C tests.

torch and transformers take seconds to import, so this process imports them once, then forks one
child per request; the child runs the real CLI (`raise SystemExit(main(argv))`, as `python -m docqa`
does) with one stage made slow by a stand-in, and announces `STAGE <name>` on its stderr when it
gets there. The stand-ins slow a stage down without replacing it:

- render: the page renderer first waits on a child process (as it waits on pdftoppm), then renders.
- prefill: a forward pre-hook on the answer model's vision encoder runs torch operations for a
  minute, inside the real `generate()` in its real thread.
- decode: a forward pre-hook on the output head adds 0.25 s of torch work to every token after
  the first (and the answer is not allowed to end early).
- ingest: from its second batch on, the retriever runs torch operations for a minute before
  encoding (in the main thread, like the real forward pass).

Protocol (one JSON object per line): stdin gets {"stage", "argv", "stdin", "out", "err"}; stdout
answers {"pid"} once the child runs, then {"pid", "status"} when it has exited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import torch  # noqa: F401  (imported once, before any fork)
from transformers import Idefics3ForConditionalGeneration, Idefics3Processor  # noqa: F401

import docqa.answer.ask
import docqa.models.generator
import docqa.models.retriever
from docqa.cli import main as docqa_main

SLOW_S = 60.0


def announce(stage: str) -> None:
    print(f"STAGE {stage}", file=sys.stderr, flush=True)


def torch_work(seconds: float) -> None:
    """Real torch operations, one after another, for `seconds`."""
    matrix = torch.randn(192, 192)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        matrix = torch.tanh(matrix @ matrix)


def slow_render() -> None:
    original = docqa.answer.ask.render_pages

    def render_pages(*args, **kwargs):
        announce("render")
        subprocess.run(["sleep", str(SLOW_S)], check=False)
        yield from original(*args, **kwargs)

    docqa.answer.ask.render_pages = render_pages


def slow_generation(stage: str) -> None:
    original_load = docqa.models.generator.Generator.load.__func__
    original_config = docqa.models.generator.Generator._generation_config
    decoding, announced = threading.Event(), threading.Event()

    def prefill_hook(module, args):
        announce("prefill")
        torch_work(SLOW_S)

    def decode_hook(module, args):
        if not decoding.is_set():  # the first call ends the prefill
            decoding.set()
            return
        if not announced.is_set():
            announced.set()
            announce("decode")
        torch_work(0.25)

    def load(cls, *args, **kwargs):
        generator = original_load(cls, *args, **kwargs)
        if stage == "prefill":  # the vision encoder runs only in the prefill
            vision = next(module for name, module in generator.model.named_modules() if name.endswith("vision_model"))
            vision.register_forward_pre_hook(prefill_hook)
        else:  # the output head runs once per token
            generator.model.get_output_embeddings().register_forward_pre_hook(decode_hook)
        return generator

    def generation_config(self, max_new_tokens):
        config = original_config(self, max_new_tokens)
        config.min_new_tokens = max_new_tokens  # the answer keeps going until it is interrupted
        return config

    docqa.models.generator.Generator.load = classmethod(load)
    docqa.models.generator.Generator._generation_config = generation_config


def slow_ingest() -> None:
    original = docqa.models.retriever.Retriever.encode_batch  # what ingest calls per batch of pages
    calls = []

    def encode_batch(self, batch):
        calls.append(len(batch["input_ids"]))
        if len(calls) > 1:
            announce("ingest")
            torch_work(SLOW_S)
        return original(self, batch)

    docqa.models.retriever.Retriever.encode_batch = encode_batch


def child(request: dict) -> None:
    """In the forked child: wire up stdio, slow the stage down, run the CLI (never returns)."""
    stdin_path = request["err"] + ".stdin"
    with open(stdin_path, "w") as handle:
        handle.write(request.get("stdin", ""))
    for fd, path, mode in (
        (0, stdin_path, os.O_RDONLY),
        (1, request["out"], os.O_WRONLY | os.O_CREAT),
        (2, request["err"], os.O_WRONLY | os.O_CREAT),
    ):
        os.dup2(os.open(path, mode, 0o600), fd)
    sys.stdin = open(0, closefd=False)  # the request's stdin, not the protocol pipe
    os.environ.update(request.get("env", {}))
    stage = request["stage"]
    if stage == "render":
        slow_render()
    elif stage in ("prefill", "decode"):
        slow_generation(stage)
    elif stage == "ingest":
        slow_ingest()
    raise SystemExit(docqa_main(request["argv"]))


def serve() -> None:
    assert threading.active_count() == 1, "fork needs a single-threaded parent"
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
