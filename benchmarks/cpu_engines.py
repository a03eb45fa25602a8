"""CPU engines side by side: fp32 eager torch vs each engine option, at real size (random weights).

Sections (pick with --only): ``retriever`` (ColModernVBert, pages/s and per-vector cosine vs fp32
at the same edge and batch), ``vision`` (the vision encoder alone, every OpenVINO recipe), ``topk``
(--topk-size checkpoint, top-10 overlap with fp32 over --corpus labelled pages for --queries queries
made from their words, with noise controls), ``answer``
(SmolVLM TTFT and decode tokens/s), ``agreement`` (tiny SmolVLM, top-1 agreement over greedy
steps, teacher-forced on the fp32 sequence). Timed runs are interleaved (A B C A B C ...) and the
minimum is reported, so load from other users hits every option alike. Ingest against the pure
forward pass: benchmarks/ingest_speed.py; ingest memory: benchmarks/ingest_memory.py.

    python benchmarks/cpu_engines.py --only retriever answer
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers.tiny_generators import build_generator_checkpoint  # noqa: E402
from helpers.tiny_retrievers import build_retriever_checkpoint  # noqa: E402
from trained_retriever import EDGE as TRAINED_EDGE  # noqa: E402
from trained_retriever import corpus as labelled_corpus  # noqa: E402
from trained_retriever import query, trained_checkpoint  # noqa: E402

from docqa.answer.prompt import Conversation, PageImage  # noqa: E402
from docqa.models.engines.openvino import calibration_pages  # noqa: E402
from docqa.models.generator import Generator  # noqa: E402
from docqa.models.retriever import Retriever  # noqa: E402


def pages(n: int, edge: int) -> list:
    """Distinct synthetic A4 document pages (own words, table and bar chart per page, seeded)."""
    from PIL import Image, ImageDraw

    words = (
        "revenue invoice total amount due payment terms region quarter net income signature date "
        "contents figure table summary contact address budget forecast audit report tax"
    ).split()
    out = []
    for number in range(n):
        rng = np.random.default_rng(number)
        width, height = round(edge / 2**0.5), edge
        page = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(page)
        margin, line = width // 12, max(height // 50, 6)
        for row, y in enumerate(range(margin, int(height * rng.uniform(0.3, 0.7)), line * 2)):
            text = " ".join(rng.choice(words, size=8)) + f" {rng.integers(10, 99999)}"
            draw.text((margin, y), f"{number}.{row} {text}", fill="black")
        top = int(height * 0.72)
        for bar in range(int(rng.integers(3, 9))):
            x = margin + bar * (width - 2 * margin) // 9
            bar_height = int(rng.integers(margin // 2, height - top - margin))
            draw.rectangle(
                [x, height - margin - bar_height, x + margin // 2, height - margin],
                fill=tuple(int(c) for c in rng.integers(0, 200, size=3)),
            )
        out.append(page)
    return out


def torch_dynamic_int8(retriever: Retriever) -> Retriever:
    vlm = retriever.model.vlm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for part in (vlm.vision_model, vlm.text_model):
            torch.ao.quantization.quantize_dynamic(part, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return retriever


def min_cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return min(float(np.sum(x * y, axis=1).min()) for x, y in zip(a, b))


def interleaved(options: dict, run, repeats: int) -> dict[str, float]:
    best = {name: float("inf") for name in options}
    for _ in range(repeats):
        for name, subject in options.items():
            started = time.perf_counter()
            run(subject)
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def retriever_section(work: Path, args) -> None:
    folder = (
        Path(args.retriever)
        if args.retriever
        else build_retriever_checkpoint("colmodernvbert", work / "retriever", size="real")
    )
    load = lambda engine: Retriever.load(str(folder), device="cpu", engine=engine, image_edge=args.edge)  # noqa: E731
    options = {
        "torch fp32 eager": load("torch"),
        "torch dynamic int8 (Linear)": torch_dynamic_int8(load("torch")),
        "openvino (docqa engine)": load("openvino"),
        "openvino, every vision op int8 (recipe 2)": openvino_retriever(folder, args.edge, "static-all"),
    }
    batch = pages(args.batch, args.edge)
    reference = options["torch fp32 eager"].encode_pages(batch)
    fidelity = {name: min_cosine(reference, r.encode_pages(batch)) for name, r in options.items()}
    best = interleaved(options, lambda r: r.encode_pages(batch), args.repeats)
    base = best["torch fp32 eager"]
    print(
        f"\nretriever: ColModernVBert real size, edge {args.edge}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, min of {args.repeats} interleaved"
    )
    print("| option | s/page | pages/s | speed-up | min per-vector cosine vs fp32 |\n|---|---|---|---|---|")
    for name, seconds in best.items():
        print(
            f"| {name} | {seconds / args.batch:.2f} | {args.batch / seconds:.3f} | {base / seconds:.2f}x | "
            f"{fidelity[name]:.4f} |",
            flush=True,
        )


def vision_section(work: Path, args) -> None:
    """The retriever's vision encoder alone (~90% of a page's FLOPs), every OpenVINO recipe tried."""
    import nncf
    import openvino as ov

    from docqa.models.engines.openvino import VisionGraph, capture_inputs, one_by_one, quiet, tensors

    folder = (
        Path(args.retriever)
        if args.retriever
        else build_retriever_checkpoint("colmodernvbert", work / "retriever", size="real")
    )
    retriever = Retriever.load(str(folder), device="cpu", engine="torch", image_edge=args.edge)
    model, processor = retriever.model, retriever.processor
    vision = model.vlm.vision_model
    sample = capture_inputs(
        vision, VisionGraph, lambda: model(**tensors(processor.process_images(pages(1, args.edge))))
    )
    calibration = capture_inputs(
        vision, VisionGraph, lambda: model(**tensors(processor.process_images(calibration_pages(args.edge)[:1])))
    )
    graph = VisionGraph(vision).eval()
    with quiet():
        converted = ov.convert_model(graph, example_input=sample)
        recipes = {
            "openvino f32 (default hint = bf16 here)": (converted, {}),
            "openvino f32": (converted, {"INFERENCE_PRECISION_HINT": "f32"}),
            "openvino f32 + nncf int8 weights": (
                nncf.compress_weights(converted.clone()),
                {"INFERENCE_PRECISION_HINT": "f32"},
            ),
            "openvino nncf static int8 (docqa engine)": (
                nncf.quantize(
                    converted.clone(),
                    nncf.Dataset([tuple(t.numpy() for t in item) for item in one_by_one(calibration)]),
                    model_type=nncf.ModelType.TRANSFORMER,
                ),
                {"INFERENCE_PRECISION_HINT": "f32"},
            ),
        }
    core = ov.Core()
    compiled = {
        name: core.compile_model(m, "CPU", {**config, "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        for name, (m, config) in recipes.items()
    }
    inputs = [t.numpy() for t in sample]
    with torch.no_grad():
        reference = graph(*sample).numpy()
    options = {"torch fp32 eager": None, **compiled}

    def run(subject) -> np.ndarray:
        if subject is None:
            with torch.no_grad():
                return graph(*sample).numpy()
        return subject(inputs)[0]

    def unit(rows: np.ndarray) -> list[np.ndarray]:
        flat = rows.reshape(-1, rows.shape[-1])
        return [flat / np.linalg.norm(flat, axis=1, keepdims=True)]

    fidelity = {name: min_cosine(unit(reference), unit(run(c))) for name, c in options.items()}
    best = interleaved(options, run, args.repeats)
    base = best["torch fp32 eager"]
    tiles = sample[0].shape[0]
    print(
        f"\nvision encoder alone (SigLIP of ColModernVBert, {tiles} tiles = one A4 page at {args.edge} px), "
        f"min of {args.repeats} interleaved"
    )
    print("| option | s | speed-up | min cosine of hidden states vs fp32 |\n|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {base / seconds:.2f}x | {fidelity[name]:.4f} |", flush=True)


def openvino_retriever(folder: Path, edge: int, vision: str) -> Retriever:
    """The retriever on the openvino engine with its vision encoder quantized as ``vision``
    ("static": the docqa engine; "static-all": every vision operation int8, the engine's recipe 2;
    "weights": int8 weights only, f32 compute)."""
    from docqa.models.engines.openvino import OpenVINOEngine

    retriever = Retriever.load(str(folder), device="cpu", engine="torch", image_edge=edge)
    OpenVINOEngine(retriever_vision=vision).prepare_retriever(
        retriever.model, "colmodernvbert", retriever.processor, str(folder), edge
    )
    return retriever


def topk_section(work: Path, args) -> None:
    """Same top-10 pages as fp32? Over the labelled corpus of ``trained_retriever.py``, each query made
    from one corpus page's words (so exactly one page is relevant). With two controls that separate
    quantization damage from near-tied scores: how far apart the 10th and 11th pages' fp32 scores are
    against how much the engine moves a score, and the same check for fp32 vectors with random noise
    of the engine's own cosine."""
    edge = args.edge
    if args.retriever:
        folder = Path(args.retriever)
    elif args.topk_size == "trained":
        cache = Path(os.environ["DOCQA_CACHE"])
        cache.mkdir(parents=True, exist_ok=True)
        folder, edge = trained_checkpoint(cache), TRAINED_EDGE  # evaluated at the edge it was trained at
    else:
        folder = build_retriever_checkpoint("colmodernvbert", work / f"topk-{args.topk_size}", size=args.topk_size)
    fp32 = Retriever.load(str(folder), device="cpu", engine="torch", image_edge=edge)
    options = {
        "openvino engine (vision MLP static int8)": openvino_retriever(folder, edge, "static"),
        "openvino, every vision op static int8 (recipe 2)": openvino_retriever(folder, edge, "static-all"),
        "openvino vision int8 weights only": openvino_retriever(folder, edge, "weights"),
    }
    corpus, carried = labelled_corpus(args.corpus, edge)
    relevant = np.linspace(0, len(corpus) - 1, args.queries).round().astype(int)
    texts = [query(carried[page]) for page in relevant]
    reference = [v for start in range(0, len(corpus), 8) for v in fp32.encode_pages(corpus[start : start + 8])]
    queries = fp32.encode_queries(texts)

    def scores(qs: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
        return np.array([[float((q @ d.T).max(axis=1).sum()) for d in docs] for q in qs])

    def top10(table: np.ndarray) -> list[set[int]]:
        return [set(np.argsort(row)[::-1][:10].tolist()) for row in table]

    def agreement(expected: np.ndarray, got: np.ndarray) -> str:
        """Table cells: queries with the same top-10 set, mean share of the expected top-10 found,
        queries whose relevant page is first, and fp32's ranks of the pages that entered the top-10."""
        pairs = list(zip(top10(expected), top10(got)))
        same = sum(a == b for a, b in pairs)
        recall = float(np.mean([len(a & b) / 10 for a, b in pairs]))
        first = int(np.sum(got.argmax(axis=1) == relevant))
        fp32_rank = np.argsort(np.argsort(-expected, axis=1), axis=1) + 1
        entered = sorted(int(fp32_rank[q, page]) for q, (a, b) in enumerate(pairs) for page in b - a)
        return f"{same}/{len(texts)} | {recall:.3f} | {first}/{len(texts)} | {', '.join(map(str, entered)) or '-'}"

    base = scores(queries, reference)
    ordered = np.sort(base, axis=1)[:, ::-1]
    gap = ordered[:, 9] - ordered[:, 10]
    relevant_margin = base[np.arange(len(texts)), relevant] - np.where(
        np.arange(len(corpus)) == relevant[:, None], -np.inf, base
    ).max(axis=1)
    name = args.retriever or f"{args.topk_size} ColModernVBert"
    print(
        f"\ntop-10 ({name}, {len(corpus)} distinct labelled pages at {edge} px, {len(texts)} queries "
        f"each made from one page's words, exact MaxSim); fp32: relevant page first for "
        f"{int(np.sum(base.argmax(axis=1) == relevant))}/{len(texts)} queries (median margin over the next "
        f"page {np.median(relevant_margin):.4f}), median score spread (max - min) per query "
        f"{np.median(ordered[:, 0] - ordered[:, -1]):.4f}, median gap between the 10th and 11th page "
        f"{np.median(gap):.5f} (smallest {gap.min():.5f})"
    )
    print(
        "| vectors | same top-10 (queries) | recall@10 of fp32's top-10 | relevant page first | fp32 ranks of "
        "pages entering the top-10 | min / mean per-vector cosine vs fp32 | median abs score change |\n"
        "|---|---|---|---|---|---|---|"
    )
    rng = np.random.default_rng(0)
    for name, retriever in options.items():
        got = [v for start in range(0, len(corpus), 8) for v in retriever.encode_pages(corpus[start : start + 8])]
        table = scores(retriever.encode_queries(texts), got)
        cosines = np.concatenate([np.sum(a * b, axis=1) for a, b in zip(reference, got)])
        print(
            f"| {name} | {agreement(base, table)} | {cosines.min():.4f} / {cosines.mean():.4f} | "
            f"{np.median(np.abs(table - base)):.5f} |",
            flush=True,
        )
        # control: fp32 vectors with isotropic noise giving the same mean cosine (no quantization at all)
        spread = np.sqrt(1 / cosines.mean() ** 2 - 1)
        noisy = []
        for page in reference:
            moved = page + rng.standard_normal(page.shape).astype(np.float32) * spread / np.sqrt(page.shape[1])
            noisy.append(moved / np.linalg.norm(moved, axis=1, keepdims=True))
        table = scores(queries, noisy)
        cosines = np.concatenate([np.sum(a * b, axis=1) for a, b in zip(reference, noisy)])
        print(
            f"| control: fp32 + random noise of that mean cosine | {agreement(base, table)} | "
            f"{cosines.min():.4f} / {cosines.mean():.4f} | {np.median(np.abs(table - base)):.5f} |",
            flush=True,
        )


def answer_section(work: Path, args) -> None:
    folder = build_generator_checkpoint("idefics3", work / "answer", size=args.answer_size)
    options = {
        "torch fp32 eager": Generator.load(str(folder), device="cpu", engine="torch"),
        "openvino (docqa engine)": Generator.load(str(folder), device="cpu", engine="openvino"),
    }
    shown = [PageImage("a.pdf", 1, None, pages(1, 1024)[0])]
    question = "What is the total amount due?"
    ttft: dict[str, float] = {name: float("inf") for name in options}
    decode: dict[str, float] = {name: float("inf") for name in options}
    state: dict[str, tuple] = {}  # per option: (cache, last token, attention mask) after its prefill
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, generator in options.items():
                inputs = generator.prepare(Conversation(), question, shown)
                started = time.perf_counter()
                out = generator.model(**inputs, use_cache=True, logits_to_keep=1)
                ttft[name] = min(ttft[name], time.perf_counter() - started)
                state[name] = (out.past_key_values, out.logits[:, -1:].argmax(-1), inputs["attention_mask"])
        # decoding in short blocks, the options taking turns, so load from other users hits both alike
        for _ in range(args.repeats * 4):
            for name, generator in options.items():
                cache, token, mask = state[name]
                started = time.perf_counter()
                for _ in range(args.tokens):
                    mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                    out = generator.model(
                        input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1
                    )
                    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                decode[name] = min(decode[name], (time.perf_counter() - started) / args.tokens)
                state[name] = (cache, token, mask)
    base = "torch fp32 eager"
    print(
        f"\nanswer model: SmolVLM {args.answer_size} (random weights), 1 page at 1024 px, prefill min of "
        f"{args.repeats} interleaved, decode min of {args.repeats * 4} interleaved blocks of {args.tokens} tokens"
    )
    print("| option | prefill (TTFT) s | speed-up | decode tok/s | speed-up |\n|---|---|---|---|---|")
    for name in options:
        print(
            f"| {name} | {ttft[name]:.2f} | {ttft[base] / ttft[name]:.2f}x | {1 / decode[name]:.1f} | "
            f"{decode[base] / decode[name]:.2f}x |",
            flush=True,
        )


def agreement_section(work: Path, args) -> None:
    folder = build_generator_checkpoint("idefics3", work / "tiny-answer")
    fp32 = Generator.load(str(folder), device="cpu", engine="torch")
    fast = Generator.load(str(folder), device="cpu", engine="openvino")
    shown = [PageImage("a.pdf", 1, None, pages(1, 1024)[0])]
    inputs = fp32.prepare(Conversation(), "What is the total?", shown)
    n = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        generated = fp32.model.generate(**inputs, max_new_tokens=args.steps, min_new_tokens=args.steps, do_sample=False)
        full = dict(inputs, input_ids=generated, attention_mask=torch.ones_like(generated))
        a = fp32.model(**full).logits[0, n - 1 : -1].argmax(-1)
        b = fast.model(**full).logits[0, n - 1 : -1].argmax(-1)
    print(
        f"\nanswer top-1 agreement (tiny SmolVLM, {args.steps} greedy steps, teacher-forced on the fp32 "
        f"sequence): {(a == b).float().mean().item():.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=["retriever", "topk", "answer", "agreement"])
    parser.add_argument("--edge", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--corpus", type=int, default=200)
    parser.add_argument("--queries", type=int, default=20, help="topk queries, each made from one corpus page")
    parser.add_argument(
        "--topk-size",
        default="trained",
        choices=["trained", "tiny", "real"],
        help="retriever of the topk section: the tiny one trained by benchmarks/trained_retriever.py "
        "(trained once and cached; evaluated at its training edge, 512 px, whatever --edge) "
        "or random weights",
    )
    parser.add_argument("--tokens", type=int, default=8, help="decode tokens per timed block")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--answer-size", default="real", choices=["real", "real500m"])
    parser.add_argument(
        "--retriever", help="a checkpoint folder for the retriever, vision and topk sections (else built here)"
    )
    args = parser.parse_args()
    os.environ.setdefault("DOCQA_CACHE", str(Path(tempfile.gettempdir()) / "docqa-bench-cache"))
    with tempfile.TemporaryDirectory() as tmp:
        for section in args.only:
            globals()[f"{section}_section"](Path(tmp), args)


if __name__ == "__main__":
    main()
