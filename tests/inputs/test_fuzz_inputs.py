"""Fuzz the sniff → count → render path with mutated PDFs and images (bit flips, truncation,
inserted bytes, splices of other files): the only error allowed is InputFileError, and no file
takes longer than the render timeout."""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path

import pytest
from helpers.documents import make_image, make_palette_alpha_png, make_pdf, make_tiff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docqa.errors import InputFileError
from docqa.inputs.render import count_pages, render_pages
from docqa.inputs.sources import classify

TIMEOUT_S = 10.0
IMAGE_EDGE = 48

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning",  # Pillow warns about corrupt EXIF/TIFF tags it skips
    "ignore::PIL.Image.DecompressionBombWarning",
)


@functools.cache
def _seeds() -> tuple[bytes, ...]:
    """Small valid files of every supported kind (built once, kept as bytes)."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        paths = [
            make_pdf(folder / "two.pdf", 2),
            make_image(folder / "rgb.png", size=(60, 80), format="PNG"),
            make_image(folder / "gray16.png", size=(60, 80), format="PNG", mode="I;16"),
            make_palette_alpha_png(folder / "palette.png", size=(60, 80)),
            make_image(folder / "rgb.jpg", size=(60, 80), format="JPEG"),
            make_image(folder / "cmyk.jpg", size=(60, 80), format="JPEG", mode="CMYK"),
            make_image(folder / "rgb.bmp", size=(60, 80), format="BMP"),
            make_image(folder / "rgb.webp", size=(60, 80), format="WEBP"),
            make_tiff(folder / "three.tiff", 3),
        ]
        return tuple(path.read_bytes() for path in paths)


# One edit: (kind, position, payload); positions are fractions of the current length.
_edits = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.none()),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("splice"), st.floats(0, 1), st.tuples(st.integers(0, 100), st.floats(0, 1), st.integers(1, 512))),
)


def _mutate(data: bytes, edits: list[tuple], seeds: tuple[bytes, ...]) -> bytes:
    out = bytearray(data)
    for kind, where, payload in edits:
        position = min(int(where * len(out)), max(len(out) - 1, 0))
        if kind == "flip" and out:
            out[position] ^= 1 << payload
        elif kind == "truncate":
            del out[position:]
        elif kind == "insert":
            out[position:position] = payload
        elif kind == "splice":
            which, start, length = payload
            other = seeds[which % len(seeds)]
            begin = int(start * len(other))
            out[position:position] = other[begin : begin + length]
    return bytes(out)


def _read_like_ingest(path: Path) -> None:
    source = classify(path)
    if source.kind is None:
        return
    count_pages(path, source.kind, TIMEOUT_S)
    for page in render_pages(path, source.kind, IMAGE_EDGE, chunk_pages=2, timeout_s=TIMEOUT_S):
        assert page.image.mode == "RGB" and max(page.image.size) <= IMAGE_EDGE


def _check(which: int, edits: list[tuple]) -> None:
    seeds = _seeds()
    data = _mutate(seeds[which % len(seeds)], edits, seeds)
    handle, name = tempfile.mkstemp(suffix=".bin")
    os.close(handle)
    path = Path(name)
    try:
        path.write_bytes(data)
        started = time.monotonic()
        try:
            _read_like_ingest(path)
        except InputFileError as error:
            assert error.path == str(path) and error.reason
        # count_pages and render_pages each get TIMEOUT_S; a little slack for Python's own work
        assert time.monotonic() - started < 2 * TIMEOUT_S + 5
    finally:
        path.unlink()


_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=100, derandomize=True, **_COMMON)
@given(which=st.integers(0, 100), edits=st.lists(_edits, min_size=1, max_size=4))
def test_mutated_inputs_raise_only_input_file_errors(which, edits):
    _check(which, edits)


@pytest.mark.slow
@settings(max_examples=2000, **_COMMON)
@given(which=st.integers(0, 100), edits=st.lists(_edits, min_size=1, max_size=6))
def test_mutated_inputs_raise_only_input_file_errors_at_length(which, edits):
    _check(which, edits)
