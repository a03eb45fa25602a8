"""The inference engines: the OpenVINO int8 engine against fp32 torch, the index's engine stamp, and
the converted-model cache (reuse, a concurrent second process, a killed conversion)."""

from __future__ import annotations

import colorsys
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.documents import make_pdf
from helpers.paths import REPO

from docqa.answer.prompt import Conversation, PageImage
from docqa.api import DocIndex
from docqa.cli.main import main
from docqa.errors import IndexMismatchError, ModelLoadError
from docqa.models.engines import OPENVINO, TORCH, openvino_missing
from docqa.models.engines.cache import converted
from docqa.models.generator import Generator
from docqa.models.retriever import Retriever

needs_openvino = pytest.mark.skipif(openvino_missing() is not None, reason=str(openvino_missing()))


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory) -> Path:
    """One conversion cache for the session: each tiny model is converted once."""
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture()
def fast_default(engine_cache, monkeypatch) -> Path:
    """The user's environment: no engine named, conversions cached in the session's cache."""
    monkeypatch.delenv("DOCQA_ENGINE", raising=False)
    monkeypatch.setenv("DOCQA_CACHE", str(engine_cache))
    return engine_cache


def _pages() -> list:
    from docqa.models.engines.openvino import calibration_pages

    portrait, landscape = calibration_pages(900)[:2]
    return [portrait.rotate(180), landscape.transpose(0)]  # not the calibration pages themselves


def _min_cosine(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    assert [e.shape for e in expected] == [g.shape for g in got]
    return min(float(np.sum(e * g, axis=1).min()) for e, g in zip(expected, got))


@needs_openvino
def test_openvino_is_the_cpu_default_and_matches_fp32_torch(retriever_checkpoint, fast_default, caplog, capfd):
    reference = Retriever.load(str(retriever_checkpoint), device="cpu", engine=TORCH)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="docqa"):
        fast = Retriever.load(str(retriever_checkpoint), device="cpu")
    assert capfd.readouterr().out == ""  # conversion chatter never reaches stdout (--json)
    assert (fast.stamp.engine, reference.stamp.engine) == (OPENVINO, TORCH)
    assert "int8" in fast.stamp.precision and reference.stamp.precision == "float32"
    pages = _pages()
    assert _min_cosine(reference.encode_pages(pages), fast.encode_pages(pages)) >= 0.99
    queries = ["total amount due", "revenue by region in 2041", "x"]
    assert _min_cosine(reference.encode_queries(queries), fast.encode_queries(queries)) >= 0.99
    assert any("converting" in record.message for record in caplog.records) or any((fast_default / "engines").iterdir())

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="docqa"):
        again = Retriever.load(str(retriever_checkpoint), device="cpu")
    assert not [r for r in caplog.records if "converting" in r.message]  # the cache was reused
    assert _min_cosine(fast.encode_queries(queries), again.encode_queries(queries)) >= 0.9999


def _colour_page():
    """An A4 page of text under coloured blocks of every hue (not the calibration pages' colour chart)."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (636, 900), "white")
    draw = ImageDraw.Draw(page)
    for row in range(20):
        draw.text((40, 20 + row * 14), f"row {row}: colour figure legend, cost 4.2M", fill="black")
    for block in range(12):
        rgb = colorsys.hsv_to_rgb((block + 0.5) / 12, 0.6 + 0.04 * (block % 4), 0.7 + 0.1 * (block % 3))
        x, y = 40 + (block % 3) * 190, 320 + (block // 3) * 140
        draw.rectangle([x, y, x + 170, y + 120], fill=tuple(round(255 * c) for c in rgb))
    return page


@needs_openvino
def test_static_int8_is_calibrated_on_colour_pages_too(retriever_checkpoint, tmp_path, monkeypatch):
    """Calibrated on black-and-white pages alone, static int8 clips what colour pages activate (so a
    colour page's vectors drift from fp32); the calibration pages' colour figures keep them close."""
    from docqa.models.engines import openvino

    reference = Retriever.load(str(retriever_checkpoint), device="cpu", engine=TORCH)
    pages = [_colour_page()]
    expected = reference.encode_pages(pages)
    cosines, calibration_pages = {}, openvino.calibration_pages
    for name, calibration in {"plain": lambda edge: calibration_pages(edge)[:2], "docqa": calibration_pages}.items():
        monkeypatch.setenv("DOCQA_CACHE", str(tmp_path / name))
        monkeypatch.setattr(openvino, "calibration_pages", calibration)
        fast = Retriever.load(str(retriever_checkpoint), device="cpu", engine=OPENVINO)
        cosines[name] = _min_cosine(expected, fast.encode_pages(pages))
    assert cosines["plain"] < 0.99 <= cosines["docqa"]


@needs_openvino
def test_an_unsupported_family_stays_on_torch_with_one_line(retriever_checkpoints, fast_default, caplog):
    with caplog.at_level(logging.WARNING, logger="docqa"):
        retriever = Retriever.load(str(retriever_checkpoints["colqwen2"]), device="cpu")
    assert retriever.stamp.engine == TORCH
    assert [r.message for r in caplog.records if "torch engine" in r.message] == [
        "docqa: using the slower torch engine: the openvino engine does not run colqwen2 retrievers yet"
    ]
    with pytest.raises(ModelLoadError, match="does not run colqwen2"):
        Retriever.load(str(retriever_checkpoints["colqwen2"]), device="cpu", engine=OPENVINO)


@needs_openvino
def test_the_benchmarks_comparison_recipes_are_their_own_cache_entries(retriever_checkpoint, fast_default):
    """The benchmarks' comparison recipes (every vision operation int8, as in conversion recipe 2; vision
    int8 weights with f32 compute) are converted apart from the default, and the default, which keeps
    the most sensitive operations in f32, stays at least as close to fp32 as all-int8 (README's top-10
    table compares the three)."""
    from docqa.models.engines.openvino import OpenVINOEngine

    reference = Retriever.load(str(retriever_checkpoint), device="cpu", engine=TORCH)
    default = Retriever.load(str(retriever_checkpoint), device="cpu", engine=OPENVINO)
    pages = _pages()
    expected = reference.encode_pages(pages)
    cosine = {"static": _min_cosine(expected, default.encode_pages(pages))}
    for recipe, precision in {
        "static-all": "int8 (vision w8a8 static, text f32)",
        "weights": "int8 weights (vision w8 f32, text f32)",
    }.items():
        other = Retriever.load(str(retriever_checkpoint), device="cpu", engine=TORCH)
        engine = OpenVINOEngine(retriever_vision=recipe)
        assert (
            engine.prepare_retriever(
                other._model, "colmodernvbert", other.processor, str(retriever_checkpoint), other.stamp.image_edge
            )
            == precision
        )
        cosine[recipe] = _min_cosine(expected, other.encode_pages(pages))
    assert cosine["static"] >= cosine["static-all"] and min(cosine.values()) >= 0.99
    assert cosine["weights"] >= 0.999


@needs_openvino
def test_the_retriever_runs_its_sensitive_operations_in_f32(retriever_checkpoint, fast_default):
    """What the CPU plugin actually runs: the vision MLPs in int8, the operations of
    ``RETRIEVER_VISION_F32`` (patch embedding, attention projections) and the whole text encoder in f32."""
    import re

    from docqa.models.engines.openvino import RETRIEVER_VISION_F32

    vlm = Retriever.load(str(retriever_checkpoint), device="cpu", engine=OPENVINO)._model.vlm

    def precisions(part: torch.nn.Module) -> dict[str, str]:
        """Runtime precision of every matrix product (fully connected or convolution) by its node name."""
        out = {}
        for op in part.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in ("FullyConnected", "Convolution"):
                out[info["originalLayersNames"].astype(str).split(",")[0]] = info["runtimePrecision"].astype(str)
        return out

    vision = precisions(vlm.vision_model)
    kept = {
        name: p for name, p in vision.items() if any(re.fullmatch(pattern, name) for pattern in RETRIEVER_VISION_F32)
    }
    mlp = {name: p for name, p in vision.items() if re.fullmatch(r".*\.mlp\.fc[12][/.].*", name)}
    assert len(kept) == 4 * len(mlp) // 2 + 1  # per layer q, k, v, out_proj (and fc1, fc2); one patch embedding
    assert set(kept.values()) == {"f32"}
    assert mlp and set(mlp.values()) <= {"u8", "i8"}
    assert set(precisions(vlm.text_model).values()) == {"f32"}


@needs_openvino
def test_openvino_answers_start_with_the_same_tokens(generator_checkpoints, fast_default):
    folder = str(generator_checkpoints["idefics3"])
    reference = Generator.load(folder, device="cpu", engine=TORCH)
    fast = Generator.load(folder, device="cpu")
    assert (fast.engine, reference.engine) == (OPENVINO, TORCH)
    pages = [PageImage("a.pdf", 1, None, _pages()[0])]
    inputs = reference.prepare(Conversation(), "What is the total?", pages)
    prompt = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        greedy = reference.model.generate(**inputs, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        steps = dict(inputs, input_ids=greedy, attention_mask=torch.ones_like(greedy))
        expected = reference.model(**steps).logits[0, prompt - 1 : -1].argmax(-1)
        got = fast.model(**steps).logits[0, prompt - 1 : -1].argmax(-1)
    assert got[0] == expected[0]  # the first token of the answer
    # the bar: top-1 agreement >= 0.95 over greedy steps (teacher-forced on the fp32 answer)
    assert (got == expected).float().mean().item() >= 0.95


def test_index_records_its_engine_and_refuses_another(retriever_checkpoint, tmp_path, capsys):
    pdf = make_pdf(tmp_path / "docs" / "a.pdf", 1, title="engines")
    index = DocIndex.open("e", create=True)
    index.ingest([pdf], model=str(retriever_checkpoint), engine=TORCH, image_edge=512)
    assert index.build.encoder.engine == TORCH
    assert index.build.encoder.precision == "float32"
    index.close()
    reopened = DocIndex.open("e")
    with pytest.raises(IndexMismatchError, match="built with the torch engine"):
        reopened.search("engines", engine=OPENVINO)
    assert reopened.search("engines")[0].page == 1  # no --engine: the index's own
    assert reopened.retriever().stamp.engine == TORCH
    capsys.readouterr()
    assert main(["search", "engines", "--index", "e", "--engine", "openvino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch engine" in err[0]


def test_index_refuses_the_same_engine_with_another_conversion(retriever_checkpoint, fast_default, tmp_path, capsys):
    """An index built by an earlier openvino conversion recipe (another precision in its stamp) takes
    neither queries nor pages from the current one."""
    index = DocIndex.open("ov", create=True)
    index.ingest(
        [make_pdf(tmp_path / "docs" / "a.pdf", 1, title="recipe")], model=str(retriever_checkpoint), image_edge=512
    )
    build = index.build.to_json()
    assert build["encoder"]["engine"] == OPENVINO
    build["encoder"]["precision"] = "int8 (an earlier recipe)"
    with index.store.transaction():  # the stamp an earlier docqa stored: writing it raw is the point
        index.store.set_meta("build", json.dumps(build))
    index.close()
    with pytest.raises(IndexMismatchError, match="its conversion changed"):
        DocIndex.open("ov").search("recipe")
    with pytest.raises(IndexMismatchError, match="its conversion changed"):
        DocIndex.open("ov").ingest([make_pdf(tmp_path / "docs" / "b.pdf", 1, title="more")], image_edge=512)
    capsys.readouterr()
    assert main(["search", "recipe", "--index", "ov"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an earlier recipe" in err[0]


def test_indexes_stamped_before_engines_count_as_torch(retriever_checkpoint, tmp_path):
    pdf = make_pdf(tmp_path / "docs" / "a.pdf", 1, title="old")
    index = DocIndex.open("old", create=True)
    index.ingest([pdf], model=str(retriever_checkpoint), image_edge=512)
    build = index.build.to_json()
    del build["encoder"]["engine"], build["encoder"]["precision"]
    with index.store.transaction():  # the stamp an earlier docqa stored: writing it raw is the point
        index.store.set_meta("build", json.dumps(build))
    index.close()
    with pytest.raises(IndexMismatchError):
        DocIndex.open("old").search("old", engine=OPENVINO)


# --- the conversion cache, with a conversion that only writes files (the cache is engine-agnostic) ---

_CONVERTER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from docqa.models.engines.cache import converted

    def convert(folder):
        (folder / "half").write_text("written")
        Path(sys.argv[2]).open("a").write(f"{os.getpid()}\\n")  # one line per conversion that ran
        time.sleep(float(sys.argv[3]))
        (folder / "model").write_text("complete")

    print(converted(sys.argv[1], convert))
""")


def _converter(tmp_path: Path, key: str, log: Path, sleep_s: float) -> subprocess.Popen:
    script = tmp_path / "convert.py"
    script.write_text(_CONVERTER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), key, str(log), str(sleep_s)], env=env, stdout=subprocess.PIPE, text=True
    )


def test_cache_converts_once_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCQA_CACHE", str(tmp_path / "cache"))
    runs = []

    def convert(folder: Path) -> None:
        runs.append(folder)
        (folder / "model").write_text("complete")

    first = converted("k1", convert)
    assert converted("k1", convert) == first and len(runs) == 1
    assert (first / "model").read_text() == "complete"
    assert converted("k2", convert) != first and len(runs) == 2


def test_cache_is_safe_against_a_concurrent_second_process(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCQA_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "conversions.log"
    first = _converter(tmp_path, "shared", log, 1.5)
    second = _converter(tmp_path, "shared", log, 1.5)
    outputs = [process.communicate(timeout=60)[0].strip() for process in (first, second)]
    assert first.returncode == second.returncode == 0
    assert outputs[0] == outputs[1] and (Path(outputs[0]) / "model").read_text() == "complete"
    assert len(log.read_text().splitlines()) == 1  # the second waited, then reused the first's


def test_cache_recovers_from_a_killed_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCQA_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "conversions.log"
    victim = _converter(tmp_path, "killed", log, 60)
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    engines = tmp_path / "cache" / "engines"
    assert not (engines / "killed").exists() and list(engines.glob("killed.partial-*"))

    folder = converted("killed", lambda out: (out / "model").write_text("complete"))
    assert (folder / "model").read_text() == "complete" and not (folder / "half").exists()
    assert not list(engines.glob("killed.partial-*"))
