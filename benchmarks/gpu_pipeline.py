"""GPU check of the whole pipeline at the GPU default retriever's real size (random weights).

Builds a ColQwen2 at the vidore/colqwen2-v1.0-hf architecture on the GPU, ingests synthetic
A4 page images with the device auto-detected (cuda, bf16, the GPU image edge), times ingest and
search, then answers a question with a tiny Qwen2-VL generator on the GPU. Random weights: speed
and memory are real, answers are noise. Prints one JSON object.

    python benchmarks/gpu_pipeline.py --pages 48 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from helpers.tiny_generators import build_generator_checkpoint  # noqa: E402
from helpers.tiny_retrievers import build_retriever_checkpoint  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from docqa.answer.ask import Asker  # noqa: E402
from docqa.api import DocIndex  # noqa: E402
from docqa.models.generator import Generator  # noqa: E402


def make_pages(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for number in range(count):
        image = Image.new("RGB", (1240, 1754), "white")  # A4 at 150 dpi
        draw = ImageDraw.Draw(image)
        for line in range(60):
            draw.text(
                (90, 90 + 26 * line), f"page {number} line {line}: revenue {number * line} by region", fill="black"
            )
        draw.rectangle([700, 1300, 1100, 1600], outline="black", width=4)
        image.save(folder / f"page{number:03d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--size", choices=["real", "tiny"], default="real", help="tiny: a quick dry run of this script (also on a CPU)"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available() and args.size == "real":
        raise SystemExit("no CUDA device: this check is for a GPU machine (--size tiny for a dry run)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="docqa-gpu-"))
    started = time.perf_counter()
    with torch.device(device):
        retriever_dir = build_retriever_checkpoint("colqwen2", work / "colqwen2", size=args.size)
    build_s = time.perf_counter() - started
    make_pages(work / "docs", args.pages)

    index = DocIndex.open(work / "index", create=True)
    report = index.ingest([work / "docs"], model=str(retriever_dir), batch_size=args.batch_size)
    encoder = index.build.encoder.to_json()
    search_s = []
    for query in ["revenue by region", "page 7 line 3", "a box in the lower right", "quarterly totals", "line 40"]:
        t0 = time.perf_counter()
        hits = index.search(query, k=5)
        search_s.append(time.perf_counter() - t0)

    generator = Generator.load(str(build_generator_checkpoint("qwen2_vl", work / "qwen2vl")))
    asks = [Asker(generator, index, k=3).ask("What is the revenue on page 7?").run() for _ in range(2)]
    result = asks[-1]  # the first call also pays for CUDA kernel warm-up
    tokens = len(generator.processor.tokenizer(result.answer.text)["input_ids"])
    # Where generation time goes: the same 64 new tokens with and without docqa's streaming.
    pages, _ = Asker(generator, index, k=3).retrieve("What is the revenue on page 7?")
    inputs = generator.prepare(None, "What is the revenue on page 7?", pages)
    t0 = time.perf_counter()
    generator.model.generate(
        **inputs,
        max_new_tokens=64,
        min_new_tokens=64,
        do_sample=False,
        pad_token_id=generator.processor.tokenizer.pad_token_id,
    )
    plain_s = time.perf_counter() - t0
    from docqa.answer.prompt import Conversation  # noqa: E402

    t0 = time.perf_counter()
    streamed = list(generator.stream(Conversation(), "What is the revenue on page 7?", pages, max_new_tokens=64))
    stream_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "retriever": {
                    "family": encoder["family"],
                    "dtype": encoder["dtype"],
                    "image_edge": encoder["image_edge"],
                    "build_and_save_s": round(build_s, 1),
                },
                "ingest": {
                    "pages": report.pages_added,
                    "failed": report.failed,
                    "seconds": round(report.seconds, 2),
                    "pages_per_s": round(report.pages_added / report.seconds, 2),
                    "vectors_per_page": index.vectors.rows / max(report.pages_added, 1),
                    "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
                },
                "search_s": {"median": round(statistics.median(search_s), 4), "first": round(search_s[0], 4)},
                "top_hit": {"path": Path(hits[0].path).name, "page": hits[0].page, "score": hits[0].score},
                "ask": {
                    "generator_device": str(generator.model.device),
                    "citations": len(result.answer.citations),
                    "answer_tokens": tokens,
                    "generate_s_first_call": round(asks[0].answer.generate_s, 2),
                    "timings": result.to_json()["timings"],
                    "plain_generate_64_tokens_s": round(plain_s, 2),
                    "stream_up_to_64_tokens_s": round(stream_s, 2),
                    "stream_pieces": len(streamed),
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
