"""Grounding: per-patch MaxSim contributions mapped onto each family's real patch layout.

The layouts come from the real processors of the tiny checkpoints (same geometry as the real
models); the embeddings are constructed so that exactly one image patch matches the query, and the
box must land on that patch's region of the page.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.documents import make_image, make_pdf
from PIL import Image

from docqa.answer.grounding import (
    EncodedPage,
    PatchGrid,
    contributions,
    encode_page,
    ground_encoded,
    patch_grids,
    strongest_region,
)
from docqa.cli.main import main
from docqa.inputs.render import fit_within
from docqa.models.retriever import Retriever

DIM = 8


def _layout(checkpoint, family: str, size: tuple[int, int]):
    """The real processor's token layout for a blank page of ``size`` (no model forward)."""
    retriever = Retriever.load(str(checkpoint), device="cpu")
    image = fit_within(Image.new("RGB", size, "white"), retriever.stamp.image_edge)
    inputs = retriever.processor.process_images([image])
    return image, len(inputs["input_ids"][0]), patch_grids(family, inputs, retriever.processor)


def _one_matching_patch(n_tokens: int, token: int) -> tuple[np.ndarray, EncodedPage]:
    """Page vectors all along e1 except ``token`` along e0; the query's tokens are all e0 or e2."""
    vectors = np.zeros((n_tokens, DIM), dtype=np.float32)
    vectors[:, 1] = 1.0
    vectors[token] = np.eye(DIM, dtype=np.float32)[0]
    query = np.stack([np.eye(DIM)[0], np.eye(DIM)[0], np.eye(DIM)[2]]).astype(np.float32)
    return query, vectors


def _expected_box(grid, row: int, col: int, image: Image.Image) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = grid.area
    width, height = image.size
    fx0 = x0 + (x1 - x0) * col / grid.cols
    fx1 = x0 + (x1 - x0) * (col + 1) / grid.cols
    fy0 = y0 + (y1 - y0) * row / grid.rows
    fy1 = y0 + (y1 - y0) * (row + 1) / grid.rows
    return round(fx0 * width), round(fy0 * height), round(fx1 * width), round(fy1 * height)


# (family, page size, which grid, cell row, cell col)
CASES = [
    ("colmodernvbert", (850, 1100), 0, 2, 5),  # top-left tile of 2x2 tiles
    ("colmodernvbert", (850, 1100), 3, 7, 0),  # bottom-right tile
    ("colmodernvbert", (2000, 600), 1, 4, 6),  # a 1x2 tile row, right tile
    ("colmodernvbert", (850, 1100), 4, 1, 6),  # the global view (coarser: its cell spans 2x2 canvas cells)
    ("colqwen2", (850, 1100), 0, 17, 3),  # merged dynamic grid, portrait
    ("colqwen2", (2000, 600), 0, 2, 20),  # merged dynamic grid, landscape
    ("colpali", (850, 1100), 0, 6, 1),  # fixed square stretched over the page
]


@pytest.mark.parametrize("family,size,grid_index,row,col", CASES)
def test_box_lands_on_the_only_matching_patch(retriever_checkpoints, family, size, grid_index, row, col):
    image, n_tokens, grids = _layout(retriever_checkpoints[family], family, size)
    grid = grids[grid_index]
    query, vectors = _one_matching_patch(n_tokens, grid.start + row * grid.cols + col)
    grounding = ground_encoded(query, EncodedPage(vectors, grids), image)
    expected = _expected_box(grid, row, col, image)
    assert grounding.box is not None
    assert all(abs(got - want) <= 1 for got, want in zip(grounding.box, expected)), (grounding.box, expected)
    assert grounding.heat.max() == pytest.approx(1.0)
    overlay = grounding.overlay()
    assert overlay.size == image.size


def test_layouts_match_each_family_geometry(retriever_checkpoints):
    _, _, tiles = _layout(retriever_checkpoints["colmodernvbert"], "colmodernvbert", (850, 1100))
    assert [(g.rows, g.cols) for g in tiles] == [(8, 8)] * 5  # 2x2 tiles of 64 tokens + the global view
    assert tiles[-1].area == (0.0, 0.0, 1.0, 1.0) and tiles[0].area == (0.0, 0.0, 0.5, 0.5)
    _, _, (merged,) = _layout(retriever_checkpoints["colqwen2"], "colqwen2", (850, 1100))
    assert (merged.rows, merged.cols) == (24, 19)  # 672 px edge: one token per 28 px square
    _, _, (square,) = _layout(retriever_checkpoints["colpali"], "colpali", (2000, 600))
    assert (square.rows, square.cols) == (8, 8) and square.start == 0  # tiny: 448 px / 56 px patches


def test_contributions_sum_to_maxsim_over_image_patches():
    rng = np.random.default_rng(0)
    query = rng.normal(size=(5, DIM)).astype(np.float32)
    page = rng.normal(size=(40, DIM)).astype(np.float32)
    grids = [PatchGrid(3, 4, 4), PatchGrid(22, 3, 3)]  # tokens 3..18 and 22..30 are patches
    patches = np.r_[3:19, 22:31]
    credit = contributions(query, EncodedPage(page, grids))
    assert credit.sum() == pytest.approx(float((query @ page[patches].T).max(axis=1).sum()), rel=1e-5)
    assert not credit[np.setdiff1d(np.arange(40), patches)].any()


def test_no_positive_contribution_gives_no_box():
    assert strongest_region(np.zeros((4, 4), dtype=np.float32)) is None


def test_encoded_page_vectors_are_the_model_output(retriever_checkpoints):
    """The grounding encoder keeps every token, so it agrees with encode_pages on a one-page batch."""
    retriever = Retriever.load(str(retriever_checkpoints["colqwen2"]), device="cpu")
    image = Image.new("RGB", (400, 500), "white")
    page = encode_page(retriever, image)
    assert np.allclose(page.vectors, retriever.encode_pages([image])[0], atol=1e-5)


def test_search_heatmaps_writes_one_png_per_result(tmp_path, retriever_checkpoint, capsys):
    docs = tmp_path / "docs"
    make_pdf(docs / "report.pdf", 2, title="report")
    make_image(docs / "scan.png", text="scan")
    index = str(tmp_path / "idx")
    assert main(["ingest", str(docs), "--index", index, "--model", str(retriever_checkpoint), "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "maps"
    assert main(["search", "revenue", "--index", index, "-k", "3", "--heatmaps", str(out), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 3 and len(list(out.glob("*.png"))) == 3
    for result in results:
        with Image.open(result["heatmap"]) as png:
            assert png.size == (result["width"], result["height"])
        if result["box"] is not None:
            x0, y0, x1, y1 = result["box"]
            assert 0 <= x0 < x1 <= result["width"] and 0 <= y0 < y1 <= result["height"]
    # a changed source is refused for its own result only (exit 1), the others still get heatmaps
    make_image(docs / "scan.png", text="changed")
    code = main(["search", "revenue", "--index", index, "-k", "3", "--heatmaps", str(out), "--json"])
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert code == 1 and "changed since it was indexed" in captured.err
    assert [r["heatmap"] is None for r in results].count(True) == 1


def test_ask_heatmaps_box_each_page_shown(tmp_path, retriever_checkpoint, generator_checkpoints, capsys):
    docs = tmp_path / "docs"
    make_pdf(docs / "invoice.pdf", 2, title="invoice")
    index = str(tmp_path / "idx")
    assert main(["ingest", str(docs), "--index", index, "--model", str(retriever_checkpoint), "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "maps"
    code = main(
        [
            "ask",
            "total amount due",
            "--index",
            index,
            "-k",
            "2",
            "--max-new-tokens",
            "4",
            "--answer-model",
            str(generator_checkpoints["idefics3"]),
            "--heatmaps",
            str(out),
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and len(result["citations"]) == 2
    for citation in result["citations"]:
        assert set(citation) >= {"heatmap", "box", "box_fraction"}
        with Image.open(citation["heatmap"]) as png:
            assert png.size == (citation["width"], citation["height"])
    assert main(["ask", "q", "--image", str(docs / "invoice.pdf"), "--heatmaps", str(out)]) == 2
