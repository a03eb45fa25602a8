"""Grounding: where on a page a query matches, as a heatmap and the box of the strongest region.

A late-interaction score is MaxSim = sum over query tokens of the best dot product with any page
token. Grounding asks where on the image: each query token's best dot product over the image
patches is credited to the patch that gives it; summed per patch, these are the patch's
*contributions* (they add up to MaxSim over the image patches; the page's prompt tokens, which
carry no position, are left out). The patches are laid out the way each family's
processor cut the page:

- colmodernvbert (Idefics3-style): a grid of 512 px tiles, each ``n x n`` tokens, plus a global
  view of the whole page (``n x n``); the tiles partition the page uniformly (the processor
  stretches the page to whole tiles), so tile (r, c) covers rows r/R..(r+1)/R, columns c/C..(c+1)/C.
- colqwen2: one dynamic grid of 28 px squares (14 px patches merged 2x2), ``image_grid_thw`` / merge.
- colpali: a fixed square (448 px, 32 x 32 patches at the real size) stretched over the page.

Every grid is painted onto one page-level canvas at the finest grid's resolution (tiles and the
global view add up where they overlap). The strongest region is the 8-connected set of canvas
cells scoring at least half the maximum that contains the maximum; its bounding box is returned in
page pixels. The stored index vectors are not used (they may be pooled or compressed): the page is
re-rendered from its source (sha256-checked) and re-encoded with the index's retriever.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import DocQAError, SourceChangedError, UnsupportedModelError
from ..inputs.render import fit_within
from ..inputs.sources import sha256_of
from .prompt import Answer, Citation

_ROW_COL = re.compile(r"<row_(\d+)_col_(\d+)>")
REGION_FRACTION = 0.5  # canvas cells at least this fraction of the maximum belong to the strongest region


@dataclass(frozen=True)
class PatchGrid:
    """``rows x cols`` consecutive page tokens starting at ``start`` (row-major), covering the page
    rectangle ``area`` = (x0, y0, x1, y1) in fractions of the page's width and height."""

    start: int
    rows: int
    cols: int
    area: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    @property
    def stop(self) -> int:
        return self.start + self.rows * self.cols


@dataclass(frozen=True)
class EncodedPage:
    """A page's vectors (one per token, prompt tokens included) and where its image patches lie."""

    vectors: np.ndarray  # (n_tokens, dim)
    grids: list[PatchGrid]


@dataclass
class Grounding:
    """A query grounded on one page: the heat canvas (0..1) and the strongest region's box."""

    image: Image.Image  # the page as rendered
    heat: np.ndarray  # (canvas_rows, canvas_cols), max 1 (all zeros when no patch contributes)
    box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1) in pixels of `image`; None when heat is 0

    def to_json(self) -> dict:
        """The box in pixels of the rendered page and as fractions of the page (for any display size)."""
        width, height = self.image.size
        if self.box is None:
            return {"box": None, "box_fraction": None, "width": width, "height": height}
        x0, y0, x1, y1 = self.box
        fraction = [round(x0 / width, 4), round(y0 / height, 4), round(x1 / width, 4), round(y1 / height, 4)]
        return {"box": list(self.box), "box_fraction": fraction, "width": width, "height": height}

    def overlay(self) -> Image.Image:
        """The page with the heatmap blended over it and the box outlined."""
        page = self.image.convert("RGB")
        heat = Image.fromarray(np.uint8(np.clip(self.heat, 0, 1) * 255), mode="L")
        heat = heat.resize(page.size, Image.Resampling.BILINEAR)
        blur = max(1, min(page.size) // 100)
        level = np.asarray(heat.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) / 255.0
        level = level / level.max() if level.max() > 0 else level
        colour = np.stack([np.clip(3 * level, 0, 1), np.clip(3 * level - 1, 0, 1), np.clip(3 * level - 2, 0, 1)], -1)
        alpha = (0.65 * level)[..., None]
        blended = np.asarray(page, dtype=np.float32) / 255.0 * (1 - alpha) + colour * alpha
        result = Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255))
        if self.box is not None:
            width = max(2, min(page.size) // 150)
            ImageDraw.Draw(result).rectangle(self.box, outline=(0, 120, 255), width=width)
        return result


# --- layouts ---------------------------------------------------------------------------------
_LAYOUTS = {"colmodernvbert": "tiles", "colqwen2": "grid", "colpali": "square"}


def patch_grids(family: str, inputs: dict, processor: Any, layout: str = "") -> list[PatchGrid]:
    """Where the image patches of one processed page sit: ``layout`` ("tiles" | "grid" | "square",
    found from the retriever's processor, see docqa.models.retriever.page_layout), else the layout of
    ``family``. A family with neither gets an UnsupportedModelError that says it cannot be drawn."""
    layout = layout or _LAYOUTS.get(family, "")
    if not layout:
        raise UnsupportedModelError(
            f"retriever family {family!r}: docqa cannot tell where its image patches lie on the page"
            " (its processor is none of the tiled, grid or fixed-square kinds), so it cannot draw heatmaps"
            " or boxes for it; search and answers still work"
        )
    ids = [int(i) for i in inputs["input_ids"][0].tolist()]
    image_id = int(processor.image_token_id)
    runs = _runs(ids, image_id)
    if not runs:
        raise ValueError("the processed page has no image tokens")
    if layout == "tiles":
        return _tile_grids(ids, runs, processor)
    if layout == "grid":
        _, height, width = (int(v) for v in inputs["image_grid_thw"][0].tolist())
        merge = int(processor.image_processor.merge_size)
        start, length = runs[0]
        rows, cols = height // merge, width // merge
        if len(runs) != 1 or rows * cols != length:
            raise ValueError(f"unexpected ColQwen2 layout: runs {runs}, grid {rows}x{cols}")
        return [PatchGrid(start, rows, cols)]
    if layout == "square":
        start, length = runs[0]
        return [PatchGrid(start, *_square(length))]
    raise ValueError(f"no patch layout {layout!r} for retriever family {family!r}")


def _runs(ids: list[int], token: int) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive ``token``s."""
    runs: list[tuple[int, int]] = []
    for position, value in enumerate(ids):
        if value != token:
            continue
        if runs and runs[-1][0] + runs[-1][1] == position:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((position, 1))
    return runs


def _square(length: int) -> tuple[int, int]:
    side = int(round(length**0.5))
    if side * side != length:
        raise ValueError(f"{length} image tokens do not form a square grid")
    return side, side


def _tile_grids(ids: list[int], runs: list[tuple[int, int]], processor: Any) -> list[PatchGrid]:
    """Idefics3-style: each run is a tile named by the ``<row_r_col_c>`` token before it, or the global view."""
    tokens = processor.tokenizer.convert_ids_to_tokens([ids[start - 1] if start else ids[0] for start, _ in runs])
    tiles = [(_ROW_COL.fullmatch(str(token)), run) for token, run in zip(tokens, runs)]
    n_rows = max((int(m.group(1)) for m, _ in tiles if m), default=1)
    n_cols = max((int(m.group(2)) for m, _ in tiles if m), default=1)
    grids = []
    for match, (start, length) in tiles:
        side = _square(length)
        if match is None:  # the global view (or the page itself when it fits one tile)
            grids.append(PatchGrid(start, *side))
            continue
        row, col = int(match.group(1)) - 1, int(match.group(2)) - 1
        area = (col / n_cols, row / n_rows, (col + 1) / n_cols, (row + 1) / n_rows)
        grids.append(PatchGrid(start, *side, area=area))
    return grids


# --- scores to a heat canvas and a box --------------------------------------------------------
def contributions(query: np.ndarray, page: EncodedPage) -> np.ndarray:
    """Per page token, the part of the image's MaxSim it wins: each query token's best dot product
    over the image patches, credited to the patch that gives it (``result.sum()`` is MaxSim over the
    image patches; prompt tokens of the page get 0, since grounding asks where on the image)."""
    patches = np.zeros(len(page.vectors), dtype=bool)
    for grid in page.grids:
        patches[grid.start : grid.stop] = True
    similarity = query.astype(np.float32) @ page.vectors.astype(np.float32).T
    similarity[:, ~patches] = -np.inf
    best = similarity.argmax(axis=1)
    credit = np.zeros(len(page.vectors), dtype=np.float32)
    np.add.at(credit, best, similarity[np.arange(len(query)), best])
    return credit


def heat_canvas(credit: np.ndarray, grids: list[PatchGrid]) -> np.ndarray:
    """Paint every grid's positive per-patch credit onto one page canvas (finest grid resolution),
    normalised to max 1."""
    rows = max(round(g.rows / (g.area[3] - g.area[1])) for g in grids)
    cols = max(round(g.cols / (g.area[2] - g.area[0])) for g in grids)
    centre_y = (np.arange(rows) + 0.5) / rows
    centre_x = (np.arange(cols) + 0.5) / cols
    canvas = np.zeros((rows, cols), dtype=np.float32)
    for grid in grids:
        x0, y0, x1, y1 = grid.area
        cell = np.clip(credit[grid.start : grid.stop], 0, None).reshape(grid.rows, grid.cols)
        inside_y = (centre_y >= y0) & (centre_y < y1)
        inside_x = (centre_x >= x0) & (centre_x < x1)
        grid_y = ((centre_y[inside_y] - y0) / (y1 - y0) * grid.rows).astype(int).clip(0, grid.rows - 1)
        grid_x = ((centre_x[inside_x] - x0) / (x1 - x0) * grid.cols).astype(int).clip(0, grid.cols - 1)
        canvas[np.ix_(inside_y, inside_x)] += cell[np.ix_(grid_y, grid_x)]
    peak = canvas.max()
    return canvas / peak if peak > 0 else canvas


def strongest_region(heat: np.ndarray, fraction: float = REGION_FRACTION) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) in page fractions: the bounding box of the 8-connected cells at ``fraction``
    of the maximum or more that contain the maximum; None when nothing scores above 0."""
    if heat.size == 0 or heat.max() <= 0:
        return None
    rows, cols = heat.shape
    strong = heat >= fraction * heat.max()
    seed = np.unravel_index(int(heat.argmax()), heat.shape)
    seen = {seed}
    stack = [seed]
    while stack:
        y, x = stack.pop()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if 0 <= ny < rows and 0 <= nx < cols and strong[ny, nx] and (ny, nx) not in seen:
                    seen.add((ny, nx))
                    stack.append((ny, nx))
    ys = [y for y, _ in seen]
    xs = [x for _, x in seen]
    return min(xs) / cols, min(ys) / rows, (max(xs) + 1) / cols, (max(ys) + 1) / rows


def ground_encoded(query: np.ndarray, page: EncodedPage, image: Image.Image) -> Grounding:
    """Ground query vectors on an already encoded page (pure: no model involved)."""
    heat = heat_canvas(contributions(query, page), page.grids)
    region = strongest_region(heat)
    box = None
    if region is not None:
        width, height = image.size
        box = (round(region[0] * width), round(region[1] * height), round(region[2] * width), round(region[3] * height))
    return Grounding(image=image, heat=heat, box=box)


# --- with a model ----------------------------------------------------------------------------
def encode_page(retriever, image: Image.Image) -> EncodedPage:
    """Encode one page image with ``retriever``, keeping each token's vector and the patch layout."""
    vectors, inputs = retriever.encode_page_with_inputs(image)
    return EncodedPage(
        vectors,
        patch_grids(retriever.stamp.family, inputs, retriever.processor, getattr(retriever.stamp, "layout", "")),
    )


def ground(retriever, query: str, image: Image.Image) -> Grounding:
    """Where ``query`` matches on ``image`` (a page as rendered), by ``retriever``'s own scores."""
    query_vectors = retriever.encode_queries([query])[0]
    page = encode_page(retriever, image)
    return ground_encoded(query_vectors, page, fit_within(image, retriever.stamp.image_edge))


def render_indexed_page(file: Path, page: int, sha256: str, kind: str, edge: int, shown_as: str) -> Image.Image:
    """Re-render an indexed page from its source file, refusing a file that changed since indexing."""
    from .ask import load_page  # ask imports the index facade; keep this module light to import

    try:
        digest = sha256_of(file)
    except OSError:
        digest = None
    if digest != sha256:
        state = "is gone" if digest is None else "changed"
        raise SourceChangedError(f"{shown_as} {state} since it was indexed; run `docqa ingest` again")
    return load_page(file, page, edge, kind=kind)


def ground_hit(retriever, query: str, hit) -> Grounding:
    """Ground ``query`` on a search hit's page (re-rendered from its source at the retriever's edge)."""
    image = render_indexed_page(hit.file, hit.page, hit.sha256, hit.kind, retriever.stamp.image_edge, hit.path)
    return ground(retriever, query, image)


def ground_hits(retriever, query: str, hits: Sequence) -> list[Grounding | DocQAError]:
    """Ground ``query`` on each hit's page; where a page cannot be re-rendered (its source changed
    or is gone), the error in its place."""
    grounded: list[Grounding | DocQAError] = []
    for hit in hits:
        try:
            grounded.append(ground_hit(retriever, query, hit))
        except DocQAError as error:
            grounded.append(error)
    return grounded


def ground_answer(retriever, question: str, answer: str, pages: list) -> list[Grounding]:
    """Ground question and answer together (grounding_query) on each page shown (``PageImage``s)."""
    query = grounding_query(question, answer)
    return [ground(retriever, query, page.image) for page in pages]


def boxed_citations(retriever, question: str, answer: Answer, pages: list) -> list[tuple[Any, Citation, Any]]:
    """(page shown, its citation, the box as fractions of the page or None) for each page shown:
    what the server's and MCP's answers list, grounded by ground_answer."""
    groundings = ground_answer(retriever, question, answer.text, pages)
    return [
        (page, citation, grounding.to_json()["box_fraction"])
        for page, citation, grounding in zip(pages, answer.citations, groundings)
    ]


def save_heatmap(folder: Path, rank: int, path: str, page: int, grounding: Grounding) -> Path:
    """Write one result's heatmap PNG into ``folder`` (named by heatmap_name); returns its path."""
    target = folder / heatmap_name(rank, path, page)
    grounding.overlay().save(target)
    return target


def heatmap_name(rank: int, path: str, page: int) -> str:
    """A file name for one result's heatmap PNG: rank, file stem (safe characters only) and page."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "page"
    return f"{rank:02d}-{stem}-p{page}.png"


def grounding_query(question: str, answer: str) -> str:
    """What an answer is grounded with: the question together with the answer's text."""
    return f"{question}\n{answer}".strip()
