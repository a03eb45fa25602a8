"""Walking, sniffing by content, and rendering pages in bounded chunks."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from helpers.documents import make_image, make_pdf, make_tiff
from PIL import Image

from docqa.errors import InputFileError
from docqa.inputs.render import count_pages, render_pages
from docqa.inputs.sources import IMAGE, PDF, classify, sniff, walk


def _pdfinfo_pages(path) -> int:
    output = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[-1] for line in output.splitlines() if line.startswith("Pages:")))


def test_sniff_decides_by_content_not_extension(tmp_path):
    pdf = make_pdf(tmp_path / "looks_like.png", 1)
    png = make_image(tmp_path / "looks_like.pdf", format="PNG")
    html = tmp_path / "page.pdf"
    html.write_text("<!DOCTYPE html><html><body>hi</body></html>")
    assert classify(pdf).kind == PDF
    assert classify(png).kind == IMAGE
    assert classify(html).kind is None and classify(html).claimed
    notes = tmp_path / "notes.log"  # text, but of no type docqa indexes (.txt is converted: test_formats)
    notes.write_text("plain text")
    assert classify(notes).kind is None and not classify(notes).claimed
    for fmt, ext in [("JPEG", "jpg"), ("TIFF", "tif"), ("BMP", "bmp"), ("WEBP", "webp")]:
        assert classify(make_image(tmp_path / f"x.{ext}", format=fmt)).kind == IMAGE
    assert sniff(b"") is None


def test_walk_recurses_dedupes_symlinks_and_reports_broken_ones(tmp_path):
    root = tmp_path / "root"
    make_pdf(root / "a" / "one.pdf", 1)
    make_image(root / "b" / "two.png")
    os.symlink(root / "a" / "one.pdf", root / "link.pdf")  # same file twice
    os.symlink(root, root / "b" / "loop")  # directory loop
    os.symlink(tmp_path / "missing.pdf", root / "broken.pdf")
    found = list(walk([root]))
    files = [item for item in found if not isinstance(item, tuple)]
    problems = [item for item in found if isinstance(item, tuple)]
    assert sorted(p.name for p in files) == ["one.pdf", "two.png"]
    assert [p.name for p, _ in problems] == ["broken.pdf"]
    assert "broken symlink" in problems[0][1]


def test_pdf_pages_match_pdfinfo_and_fit_the_edge(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", 11)
    assert count_pages(pdf, PDF) == _pdfinfo_pages(pdf) == 11
    pages = list(render_pages(pdf, PDF, image_edge=200, chunk_pages=4))
    assert [p.number for p in pages] == list(range(1, 12))
    assert all(max(p.image.size) <= 200 and p.image.mode == "RGB" for p in pages)
    assert not np.array_equal(np.asarray(pages[0].image), np.asarray(pages[1].image))


def test_render_is_lazy_per_chunk(tmp_path, monkeypatch):
    """Only one chunk of a long PDF is rendered before the first page comes out."""
    import docqa.inputs.render as render

    calls = []
    real = render.convert_from_path
    monkeypatch.setattr(render, "convert_from_path", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    pdf = make_pdf(tmp_path / "long.pdf", 20)
    stream = render_pages(pdf, PDF, image_edge=100, chunk_pages=5)
    next(stream)
    assert [(c["first_page"], c["last_page"]) for c in calls] == [(1, 5)]


def test_multipage_tiff_and_image_modes(tmp_path):
    tiff = make_tiff(tmp_path / "scan.tiff", 3)
    assert count_pages(tiff, IMAGE) == Image.open(tiff).n_frames == 3
    assert [p.number for p in render_pages(tiff, IMAGE, 512)] == [1, 2, 3]
    for mode, fmt in [("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("L", "BMP")]:
        path = make_image(tmp_path / f"{mode.replace(';', '')}.{fmt.lower()}", format=fmt, mode=mode)
        (page,) = render_pages(path, IMAGE, 128)
        assert page.image.mode == "RGB" and max(page.image.size) <= 128


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (400, 200), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    image.save(path, exif=exif)
    (page,) = render_pages(path, IMAGE, 1000)
    assert page.image.size == (200, 400)


@pytest.mark.parametrize("content", [b"", b"%PDF-1.4\ngarbage", os.urandom(2000)])
def test_unreadable_pdf_raises_with_path(tmp_path, content):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + content if content[:4] != b"%PDF" else content)
    with pytest.raises(InputFileError) as raised:
        list(render_pages(bad, PDF, 100))
    assert str(bad) in str(raised.value)


def test_truncated_pdf_is_an_input_error(tmp_path):
    good = make_pdf(tmp_path / "good.pdf", 3).read_bytes()
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(good[: len(good) // 3])
    with pytest.raises(InputFileError):
        list(render_pages(truncated, PDF, 100))
