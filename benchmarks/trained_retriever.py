"""A tiny ColModernVBert trained here, so ranking fidelity can be checked on weights that discriminate.

Random-weight retrievers score every page nearly alike (README, "Ranking fidelity"), so whether an
engine keeps fp32's top-10 cannot be told from them. This script trains the tiny checkpoint of
``tests/helpers/tiny_retrievers.py`` (the real ColModernVBertForRetrieval class) for a few hundred steps on
one CPU thread, ColPali style: the MaxSim score of every query against every page of a batch, and
cross-entropy on the diagonal (in-batch negatives). The embeddings are the model's own output (its
projection and L2 normalisation, exactly what ``Retriever.encode_pages/encode_queries`` return).

The pages are learnable by a model that small: each synthetic A4 page carries four of sixteen words,
each printed on a block of that word's own colour (hue, shade and size jittered per page) over lines
of small document text, and a page's query is its four words. The tiny vision encoder (one layer,
32 px patches) learns them mostly by colour; it cannot read the small text. Every page's word set is
distinct, so each query has exactly one relevant page.

    python benchmarks/trained_retriever.py OUT_FOLDER          # trains, prints loss and accuracy

The saved folder (``save_pretrained`` of model and processor) loads with ``Retriever.load`` like
any checkpoint; ``benchmarks/cpu_engines.py --only topk --topk-size trained`` trains it once and
keeps it in the docqa cache.
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers.tiny_retrievers import build_retriever_checkpoint  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from docqa.models.retriever import Retriever  # noqa: E402

# one token each in the tiny checkpoint's tokenizer (after a space), so a query token is a word
WORDS = (
    "chart",
    "costs",
    "dollars",
    "pump",
    "report",
    "region",
    "year",
    "pages",
    "question",
    "answer",
    "shows",
    "which",
    "using",
    "describe",
    "compares",
    "contain",
)
WORDS_PER_PAGE = 4
EDGE = 512  # training and evaluation edge: one 512 px tile per page (64 vectors) at the tiny size
_FILLER = "revenue invoice total amount due payment terms net income signature date summary address".split()
_TRAIN_SEEDS, _HELD_OUT_SEEDS = 1_000_000, 500_000  # page numbers apart from the benchmark corpus (0, 1, ...)


def page_words(number: int) -> list[str]:
    """The words page ``number`` carries, in reading order (seeded by the page number)."""
    rng = np.random.default_rng(number)
    return [WORDS[i] for i in rng.choice(len(WORDS), size=WORDS_PER_PAGE, replace=False)]


def labelled_page(number: int, edge: int = EDGE) -> Image.Image:
    """Synthetic A4 page ``number``: small document text, and :func:`page_words` on coloured blocks."""
    rng = np.random.default_rng([number, 1])
    width, height = round(edge / 2**0.5), edge
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    margin, line = width // 12, max(height // 50, 6)
    for y in range(margin, height - margin, line * 2):
        draw.text((margin, y), " ".join(rng.choice(_FILLER, size=7)), fill=(90, 90, 90))
    font = ImageFont.load_default(size=max(edge // 28, 8))
    slots = rng.choice(8, size=WORDS_PER_PAGE, replace=False)  # a 2 x 4 grid of places for the blocks
    cell_w, cell_h = (width - 2 * margin) // 2, (height - 2 * margin) // 4
    for word, slot in zip(page_words(number), sorted(slots)):
        hue = WORDS.index(word) / len(WORDS) + rng.uniform(-0.02, 0.02)
        colour = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 1.0), rng.uniform(0.65, 1.0))
        w, h = int(cell_w * rng.uniform(0.7, 0.95)), int(cell_h * rng.uniform(0.6, 0.9))
        x, y = margin + (slot % 2) * cell_w, margin + (slot // 2) * cell_h
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(255 * c) for c in colour))
        draw.text((x + w // 10, y + h // 3), word, fill="black", font=font)
    return page


def query(words: list[str]) -> str:
    """The query for a page carrying ``words``."""
    return "find " + " ".join(words)


def corpus(n: int, edge: int = EDGE) -> tuple[list[Image.Image], list[list[str]]]:
    """``n`` pages with pairwise distinct word sets (page numbers from 0, duplicates skipped)."""
    images, words, seen = [], [], set()
    number = 0
    while len(images) < n:
        carried = page_words(number)
        if frozenset(carried) not in seen:
            seen.add(frozenset(carried))
            images.append(labelled_page(number, edge))
            words.append(carried)
        number += 1
    return images, words


def maxsim(queries: torch.Tensor, pages: torch.Tensor) -> torch.Tensor:
    """ColBERT late interaction: ``scores[q, p]`` = sum over q's tokens of the best dot product on p.
    Padding rows are zero vectors (the model masks them), so they add nothing."""
    return torch.einsum("qtd,pvd->qptv", queries, pages).amax(dim=3).sum(dim=2)


def _batch(retriever: Retriever, numbers: list[int], edge: int) -> tuple[dict, dict]:
    pages = retriever.preprocess_pages([labelled_page(n, edge) for n in numbers])
    queries = dict(retriever.processor.process_queries([query(page_words(n)) for n in numbers]))
    return pages, queries


def _in_batch_accuracy(retriever: Retriever, numbers: list[int], edge: int) -> float:
    """Share of queries whose own page scores highest among the pages of ``numbers``."""
    pages, queries = _batch(retriever, numbers, edge)
    with torch.no_grad():
        scores = maxsim(retriever.model(**queries).embeddings, retriever.model(**pages).embeddings)
    return float((scores.argmax(dim=1) == torch.arange(len(numbers))).float().mean())


def train(out_dir: Path, steps: int = 600, batch: int = 16, lr: float = 3e-3, edge: int = EDGE, seed: int = 0) -> Path:
    """Train the tiny ColModernVBert (built in ``out_dir``) and save it back there; returns ``out_dir``."""
    torch.set_num_threads(1)
    folder = build_retriever_checkpoint("colmodernvbert", Path(out_dir), size="tiny")
    retriever = Retriever.load(str(folder), device="cpu", engine="torch", image_edge=edge)
    model = retriever.model
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    held_out = list(range(_HELD_OUT_SEEDS, _HELD_OUT_SEEDS + 64))
    print(
        f"step 0: held-out in-batch accuracy (64 pages) {_in_batch_accuracy(retriever, held_out, edge):.2f}", flush=True
    )
    started = time.perf_counter()
    for step in range(1, steps + 1):
        numbers = list(range(_TRAIN_SEEDS + (step - 1) * batch, _TRAIN_SEEDS + step * batch))
        pages, queries = _batch(retriever, numbers, edge)
        model.train()
        scores = maxsim(model(**queries).embeddings, model(**pages).embeddings)
        loss = torch.nn.functional.cross_entropy(scores, torch.arange(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        model.eval()
        if step % 50 == 0 or step == steps:
            accuracy = _in_batch_accuracy(retriever, held_out, edge)
            print(
                f"step {step}: loss {loss.item():.3f}, held-out in-batch accuracy (64 pages) {accuracy:.2f}, "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    model.save_pretrained(folder)
    retriever.processor.save_pretrained(folder)
    return folder


def trained_checkpoint(cache: Path) -> Path:
    """The trained checkpoint, trained once per version of this file and kept under ``cache``."""
    version = hashlib.sha256(
        Path(__file__).read_bytes() + (ROOT / "tests" / "helpers" / "tiny_retrievers.py").read_bytes()
    )
    folder = cache / f"trained-tiny-colmodernvbert-{version.hexdigest()[:16]}"
    if not (folder / "config.json").exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            train(Path(tmp) / "model")
            os.replace(Path(tmp) / "model", folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to save the trained checkpoint into")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    train(args.out, steps=args.steps, batch=args.batch, lr=args.lr)


if __name__ == "__main__":
    main()
