"""Answer latency of the CPU default answer model at its real size (random weights).

Builds SmolVLM-500M-Instruct (the CPU default, ``--model-size 500m``) or -256M-Instruct (``256m``)
from its real architecture with random weights (tests/helpers/tiny_generators.py), then for k = 1 and 3
synthetic A4 page images at the generator's ``max_image_edge`` measures, in one run, each as a
median over repeats (TTFT and prefill interleaved, so background load hits both alike):

- TTFT: from calling ``Generator.stream`` to its first text piece (includes image preprocessing);
- prefill: one forward pass over the same processed inputs (``model(**inputs)``, keeping only the
  last position's logits as generate() does), the floor TTFT can reach;
- decode: generated tokens per second after the first one;
- preprocess: building the prompt and processor inputs (part of TTFT, not of prefill).

Random weights would mostly pick ids the toy tokenizer cannot print (the real vocab is 49280) and
could stop at once, so their output rows are zeroed: every token prints, and answers run full length.

    python benchmarks/answer_latency.py --model-size 500m
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # docqa, and the checkpoint factories of the tests

from helpers.tiny_generators import build_generator_checkpoint  # noqa: E402

from docqa.answer.prompt import Conversation, PageImage  # noqa: E402
from docqa.models.generator import DEFAULT_MAX_IMAGE_EDGE, Generator  # noqa: E402

SIZES = {"256m": "real", "500m": "real500m"}
QUESTION = "What is the total amount due on the invoice?"


def synthetic_page(edge: int, seed: int) -> Image.Image:
    """A white A4-proportioned page (longest edge ``edge``) with lines of text-like marks."""
    height, width = edge, round(edge / 2**0.5)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    margin, line = width // 12, max(height // 60, 6)
    for row, y in enumerate(range(margin, height - margin, line * 2)):
        words = f"Line {row} of page {seed}: quarterly revenue 4.2M, invoice 2041, total 1,250.00 EUR " * 2
        draw.text((margin, y), words, fill="black")
    return page


def printable_only(generator: Generator) -> None:
    """Zero the output rows of ids that would print nothing, so each greedy token prints a piece.

    Their logits become 0 while ~300 printable ids keep random ones, so greedy decoding (never
    picking end-of-utterance either) runs the full length, at no cost per step.
    """
    tokenizer = generator.processor.tokenizer
    special = set(tokenizer.all_special_ids)
    printable = [
        i
        for i in range(len(tokenizer))
        if i not in special
        and (text := tokenizer.decode([i], skip_special_tokens=True)).strip()
        and "\ufffd" not in text
    ]
    weight = generator.model.get_output_embeddings().weight
    keep = weight[printable].clone()
    with torch.no_grad():
        weight.zero_()
        weight[printable] = keep


def measure(generator: Generator, pages: list[PageImage], n_tokens: int) -> tuple[float, float]:
    """(TTFT s, decode tokens/s) of one streamed answer."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in generator.stream(Conversation(), QUESTION, pages, n_tokens)]
    if len(stamps) < 2:
        raise RuntimeError(f"expected {n_tokens} streamed pieces, got {len(stamps)}")
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def prefill(generator: Generator, pages: list[PageImage]) -> tuple[float, float, int]:
    """(preprocessing s, forward s, prompt tokens): the prompt built, then one forward pass over it."""
    start = time.perf_counter()
    inputs = generator.prepare(Conversation(), QUESTION, pages)
    prepared = time.perf_counter()
    with torch.inference_mode():
        generator.model(**inputs, logits_to_keep=1, use_cache=True)
    return prepared - start, time.perf_counter() - prepared, inputs["input_ids"].shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-size", choices=sorted(SIZES), default="500m", help="SmolVLM-256M or -500M-Instruct (the CPU default)"
    )
    parser.add_argument("--max-image-edge", type=int, default=DEFAULT_MAX_IMAGE_EDGE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=24, help="tokens generated per answer")
    parser.add_argument("--pages", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = build_generator_checkpoint("idefics3", Path(tmp) / "model", size=SIZES[args.model_size])
        generator = Generator.load(str(folder), device="cpu", max_image_edge=args.max_image_edge)
        params = sum(p.numel() for p in generator.model.parameters()) / 1e6
        print(
            f"SmolVLM-{args.model_size} (random weights, {params:.0f}M params, fp32, "
            f"{torch.get_num_threads()} threads), max_image_edge {args.max_image_edge}, "
            f"built+loaded in {time.perf_counter() - start:.0f}s",
            flush=True,
        )
    printable_only(generator)
    pages = [
        PageImage(f"doc{i}.pdf", i + 1, None, synthetic_page(args.max_image_edge, i)) for i in range(max(args.pages))
    ]
    measure(generator, pages[:1], args.tokens)  # warm-up

    print(
        f"{'k':>2} {'tokens':>7} {'TTFT s':>8} {'prefill s':>10} {'TTFT/prefill':>13} {'decode tok/s':>13} "
        f"{'preprocess s':>13}"
    )
    for k in args.pages:
        runs, fills = [], []
        for _ in range(args.repeats):
            runs.append(measure(generator, pages[:k], args.tokens))
            fills.append(prefill(generator, pages[:k]))
        ttft = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        prep = statistics.median(f[0] for f in fills)
        fill = statistics.median(f[1] for f in fills)
        print(
            f"{k:>2} {fills[0][2]:>7} {ttft:>8.2f} {fill:>10.2f} {ttft / fill:>13.2f} {rate:>13.1f} {prep:>13.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
