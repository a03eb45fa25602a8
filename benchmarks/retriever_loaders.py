"""Retriever loaders side by side: the native transformers class against sentence-transformers'
MultiVectorEncoder, for the same real-size architecture (random weights), under torch and openvino.

Both loaders load the same checkpoint folder (``Retriever.load(..., loader=...)``); every pass
encodes the same pages end to end (resize, processor, forward) through ``Retriever.encode_pages``.
Timed runs are interleaved, the order reversed every other round (A B C D, D C B A, ...), so no
option always runs first after a reload, and the minimum is reported, so load from other users hits
every option alike; the process CPU seconds of each pass are reported beside its wall time (on
shared cores the wall time moves with other users' load, the CPU time much less). The checkpoint's
write is flushed to disk before the first pass, so its writeback does not run under a timed pass.
Each pass's wall and CPU seconds also go to stderr, so a pattern by position in the round shows.
The openvino rows share one conversion (the same weights and recipe). On torch in float32 both
loaders map the checkpoint's safetensors file (copy-on-write) rather than copy it, so the weights
live in the page cache and each pass after a reload faults them in (the untimed warm-up page does
that). `--one-loaded` keeps one model in memory at a time (ColQwen2 and ColPali at real size are
9-12 GB each in float32): every timed pass then loads its option and warms it up on one page first,
outside the timing. Run under the shared lock:

    flock /tmp/docqa-cpu.lock python benchmarks/retriever_loaders.py --pages 2 --rounds 2
    flock /tmp/docqa-cpu.lock python benchmarks/retriever_loaders.py --family colpali --engines torch --one-loaded \
        --pages 1 --rounds 4
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cpu_engines import pages as make_pages  # noqa: E402
from helpers.tiny_retrievers import build_retriever_checkpoint  # noqa: E402

from docqa.models.retriever import SENTENCE_TRANSFORMERS, TRANSFORMERS, Retriever  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="colmodernvbert")
    parser.add_argument("--size", default="real", choices=["real", "tiny"])
    parser.add_argument("--edge", type=int, default=1024, help="page edge in px (default 1024: the CPU default)")
    parser.add_argument("--pages", type=int, default=2, help="pages per timed pass (one batch)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["torch", "openvino"])
    parser.add_argument("--one-loaded", action="store_true", help="one model in memory at a time (big families)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("DOCQA_CACHE", str(Path(scratch) / "cache"))
        checkpoint = build_retriever_checkpoint(args.family, Path(scratch) / args.family, size=args.size)
        os.sync()  # the checkpoint's writeback must not run under the first timed pass
        pages = make_pages(args.pages, args.edge)
        keys = [(loader, engine) for engine in args.engines for loader in (TRANSFORMERS, SENTENCE_TRANSFORMERS)]

        def load(key: tuple[str, str]) -> Retriever:
            started = time.monotonic()
            loaded = Retriever.load(str(checkpoint), device="cpu", image_edge=args.edge, engine=key[1], loader=key[0])
            print(f"loaded {key[0]} on {key[1]} in {time.monotonic() - started:.1f} s", file=sys.stderr)
            return loaded

        options: dict[tuple[str, str], Retriever] = {}
        stamps: dict[tuple[str, str], tuple[str, str]] = {}  # (engine, precision) as each option ran
        reference: dict[tuple[str, str], np.ndarray] = {}
        times: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
        cpu: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
        for round_ in range(args.rounds):
            for key in keys if round_ % 2 == 0 else keys[::-1]:
                retriever = options.get(key)
                if retriever is None:  # loaded (again, with --one-loaded): warmed up untimed
                    retriever = load(key)
                    warm = retriever.encode_pages(pages[:1])[0]
                    reference.setdefault(key, warm)  # the vectors compared across loaders
                    stamps[key] = (retriever.stamp.engine, retriever.stamp.precision)
                started, cpu_started = time.perf_counter(), time.process_time()
                retriever.encode_pages(pages)
                times[key].append(time.perf_counter() - started)
                cpu[key].append(time.process_time() - cpu_started)
                print(
                    f"round {round_ + 1} {key[0]} on {key[1]}: {times[key][-1]:.2f} s, CPU {cpu[key][-1]:.2f} s",
                    file=sys.stderr,
                )
                if args.one_loaded:
                    del retriever
                    gc.collect()
                else:
                    options[key] = retriever

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} UTC, commit {commit.strip()}, {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.family} ({args.size} size, random weights), {args.pages} A4 pages at {args.edge} px per pass, "
        f"min of {args.rounds} interleaved passes\n"
    )
    print(
        "| loader | engine | precision | s per pass | CPU s per pass | pages/s | vs native same engine"
        " | max abs diff vs native |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for loader, engine in keys:
        best = min(times[(loader, engine)])
        native = min(times[(TRANSFORMERS, engine)])
        diff = (
            float(np.abs(reference[(loader, engine)] - reference[(TRANSFORMERS, engine)]).max())
            if reference[(loader, engine)].shape == reference[(TRANSFORMERS, engine)].shape
            else float("nan")
        )
        print(
            f"| {loader} | {stamps[(loader, engine)][0]} | {stamps[(loader, engine)][1]} | {best:.2f} | "
            f"{min(cpu[(loader, engine)]):.2f} | {args.pages / best:.3f} | {native / best:.2f}x | {diff:.2e} |"
        )


if __name__ == "__main__":
    main()
