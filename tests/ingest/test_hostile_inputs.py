"""Hostile inputs: each bad file is a per-file failure naming the file and the reason, the run goes
on, good files beside it are indexed, and time and memory stay bounded.

Most scenarios share one real ingest (tiny ColModernVBert) of a folder holding all of them; the
ones that need their own set-up (a file changed mid-ingest, a hanging renderer) ingest on their
own, and the resource bounds are checked at the render level where a measurement is cleaner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers.documents import (
    make_encrypted_pdf,
    make_exif_rotated_jpeg,
    make_image,
    make_palette_alpha_png,
    make_pdf,
    make_png_bomb,
)
from helpers.paths import REPO
from helpers.stored import stored_pages

import docqa.inputs.render as render
from docqa import DocIndex
from docqa.errors import InputFileError
from docqa.ingest.report import IngestReport
from docqa.inputs.render import count_pages, render_pages
from docqa.inputs.sources import IMAGE, PDF, classify, printable

IMAGE_EDGE = 128  # the tiny ColModernVBert snaps this up to one 512-px tile
NON_UTF8 = b"caf\xe9"  # Latin-1 "café": not valid UTF-8
LONG_NAME = "n" * 246 + ".pdf"  # 250 bytes, near NAME_MAX

# name -> what the reason must contain (lowercase)
FAILS = {
    "truncated.pdf": "damaged or truncated",
    "user_password.pdf": "encrypted with a password",
    "empty.pdf": "the file is empty",
    "random.pdf": "not a pdf or a supported image",
    "html.pdf": "html",
    "bomb.png": "too large to decode safely",
    "truncated.jpg": "damaged or truncated",
    "broken_link.pdf": "broken symlink",
    "self_loop.pdf": "loop",
    os.fsdecode(NON_UTF8 + b" truncated.pdf"): "damaged or truncated",
}
# name -> kind it is indexed as (decided by content)
INDEXED = {
    "good.pdf": PDF,
    "good.png": IMAGE,
    "garbage_appended.pdf": PDF,
    "owner_password.pdf": PDF,
    "image_named.pdf": IMAGE,
    "pdf_named.png": PDF,
    "huge_page.pdf": PDF,
    "cmyk.jpg": IMAGE,
    "gray16.png": IMAGE,
    "palette_alpha.png": IMAGE,
    "exif_rotated.jpg": IMAGE,
    "inner.pdf": PDF,  # inside a directory named x.pdf
    os.fsdecode(NON_UTF8 + b".pdf"): PDF,
    LONG_NAME: PDF,
}


def _build_hostile_folder(root: Path) -> None:
    good = make_pdf(root / "good.pdf", 2, title="good")
    make_image(root / "good.png", text="good scan")
    data = good.read_bytes()
    (root / "truncated.pdf").write_bytes(data[: len(data) // 2])
    # Garbage after %%EOF: poppler reads the PDF regardless, so it indexes.
    (root / "garbage_appended.pdf").write_bytes(data + os.urandom(4096))
    make_encrypted_pdf(good, root / "user_password.pdf", user_password="secret", owner_password="owner")
    make_encrypted_pdf(good, root / "owner_password.pdf", user_password="", owner_password="owner")
    (root / "empty.pdf").write_bytes(b"")
    (root / "random.pdf").write_bytes(os.urandom(3000))
    (root / "html.pdf").write_text("<!DOCTYPE html><html><body>not a pdf</body></html>")
    make_image(root / "image_named.pdf", format="PNG")
    make_pdf(root / "pdf_named.png", 1, title="pdf in disguise")
    make_pdf(root / "huge_page.pdf", 1, title="huge", size=(14_400, 14_400))  # 200 x 200 inches
    make_png_bomb(root / "bomb.png")
    jpeg = make_image(root / "whole.jpg", size=(600, 800), format="JPEG").read_bytes()
    (root / "whole.jpg").unlink()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    make_image(root / "cmyk.jpg", format="JPEG", mode="CMYK")
    make_image(root / "gray16.png", format="PNG", mode="I;16")
    make_palette_alpha_png(root / "palette_alpha.png")
    make_exif_rotated_jpeg(root / "exif_rotated.jpg")
    make_pdf(root / "x.pdf" / "inner.pdf", 1, title="inner")
    os.symlink(root / "missing.pdf", root / "broken_link.pdf")
    os.symlink("self_loop.pdf", root / "self_loop.pdf")
    os.symlink(root, root / "x.pdf" / "back_to_root")  # directory loop
    os.symlink(good, root / "x.pdf" / "same_as_good.pdf")  # the same file twice
    raw_root = os.fsencode(root)
    make_pdf(Path(os.fsdecode(raw_root + b"/" + NON_UTF8 + b".pdf")), 1, title="cafe")
    (Path(os.fsdecode(raw_root + b"/" + NON_UTF8 + b" truncated.pdf"))).write_bytes(data[:500])
    make_pdf(root / LONG_NAME, 1, title="long name")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, retriever_checkpoints) -> tuple[DocIndex, IngestReport, Path]:
    """One ingest of a folder holding every scenario, good files beside bad ones."""
    root = tmp_path_factory.mktemp("hostile").resolve() / "docs"
    _build_hostile_folder(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        index = DocIndex.open(str(root.parent / "index"), create=True)
        started = time.monotonic()
        report = index.ingest([root], model=str(retriever_checkpoints["colmodernvbert"]), image_edge=IMAGE_EDGE)
        assert time.monotonic() - started < 60
    return index, report, root


def _failure(report: IngestReport, name: str):
    matches = [f for f in report.failures if Path(f.path).name == printable(name)]
    assert len(matches) == 1, f"{name}: {report.failures}"
    return matches[0]


def test_the_run_continues_and_counts_add_up(hostile):
    index, report, _ = hostile
    assert report.failed == len(FAILS) == len(report.failures), report.failures
    assert report.added == len(INDEXED)
    assert index.info().documents == len(INDEXED)


@pytest.mark.parametrize("name", sorted(FAILS))
def test_bad_file_fails_alone_with_its_path_and_reason(hostile, name):
    _, report, root = hostile
    failure = _failure(report, name)
    assert FAILS[name] in failure.error.lower()
    assert failure.path == printable(root / name)
    failure.path.encode("utf-8")  # printable, even for a non-UTF-8 file name
    failure.error.encode("utf-8")


@pytest.mark.parametrize("name", sorted(INDEXED))
def test_good_or_recoverable_file_is_indexed_by_content(hostile, name):
    index, _, root = hostile
    path = root / "x.pdf" / name if name == "inner.pdf" else root / name
    document = index.document(path)
    assert document is not None, name
    assert document.kind == INDEXED[name] and document.pages >= 1


def _page_sizes(index: DocIndex, path: Path) -> list[tuple[int, int]]:
    document = index.document(path)
    return [(page.width, page.height) for page in index.page_records(document.id)]


def test_pages_fit_the_image_edge_and_exif_rotation_is_applied(hostile):
    index, _, root = hostile
    edge = index.build.encoder.image_edge
    for name in INDEXED:
        path = root / "x.pdf" / name if name == "inner.pdf" else root / name
        assert all(max(size) <= edge for size in _page_sizes(index, path)), name
    assert _page_sizes(index, root / "huge_page.pdf") == [(edge, edge)]  # capped, not 40,000 px
    ((width, height),) = _page_sizes(index, root / "exif_rotated.jpg")
    assert height > width  # stored landscape, shown (and indexed) portrait


def test_same_file_through_a_symlink_and_loops_are_indexed_once(hostile):
    index, report, root = hostile
    paths = [document.path for document in index.documents()]
    assert paths.count(str(root / "good.pdf")) == 1
    assert not any("same_as_good" in path or "back_to_root" in path for path in paths)
    assert not any("x.pdf" == Path(f.path).name for f in report.failures)  # a folder, not a file


def test_non_utf8_and_long_names_round_trip(hostile):
    index, _, root = hostile
    raw = os.fsencode(root) + b"/" + NON_UTF8 + b".pdf"
    document = index.document(Path(os.fsdecode(raw)))
    assert document is not None and document.key == raw
    document.path.encode("utf-8")
    assert index.document(root / LONG_NAME).pages == 1


def test_unsupported_content_under_a_non_utf8_name_has_a_printable_failure(tmp_path, retriever_checkpoint):
    raw = os.fsencode(tmp_path / "docs") + b"/" + NON_UTF8
    os.makedirs(raw)
    Path(os.fsdecode(raw + b"/junk.pdf")).write_bytes(b"not a pdf at all")
    os.symlink(b"/nonexistent", raw + b"/gone.pdf")
    report = DocIndex.open("main", create=True).ingest(
        [tmp_path / "docs"], model=str(retriever_checkpoint), image_edge=IMAGE_EDGE
    )
    assert report.failed == 2
    for failure in report.failures:
        failure.path.encode("utf-8")


def test_file_rewritten_or_deleted_mid_ingest_keeps_the_old_version(tmp_path, retriever_checkpoint, monkeypatch):
    root = tmp_path / "docs"
    rewritten = make_pdf(root / "rewritten.pdf", 2, title="v1")
    deleted = make_pdf(root / "deleted.pdf", 1, title="v1")
    make_image(root / "bystander.png")
    index = DocIndex.open("main", create=True)
    assert index.ingest([root], model=str(retriever_checkpoint), image_edge=IMAGE_EDGE).added == 3
    before = {path: index.document(path) for path in (rewritten, deleted)}
    make_pdf(rewritten, 3, title="v2")
    make_pdf(deleted, 2, title="v2")
    make_image(root / "newcomer.png", text="new")

    real = render.convert_from_path

    def meddling(pdf_path, **kwargs):
        path = Path(pdf_path)
        if path == rewritten:  # a writer replaces the file while its pages are being rendered
            make_pdf(rewritten, 3, title="v3 written during the ingest")
            os.utime(rewritten, (time.time() + 5, time.time() + 5))
        images = real(pdf_path, **kwargs)
        if path == deleted and deleted.exists():
            deleted.unlink()
        return images

    monkeypatch.setattr(render, "convert_from_path", meddling)
    report = index.ingest([root])
    errors = {Path(f.path).name: f.error for f in report.failures}
    assert "changed while being ingested" in errors.pop("rewritten.pdf")
    assert "vanished while being ingested" in errors.pop("deleted.pdf")
    assert errors == {} and report.added == 1  # newcomer.png
    for path, old in before.items():
        now = index.document(path)
        assert (now.sha256, now.pages) == (old.sha256, old.pages)
        assert len(_page_sizes(index, path)) == old.pages


def test_a_checkpoint_of_other_content_or_with_a_gap_is_not_taken(tmp_path, retriever_checkpoint, monkeypatch):
    """Pages checkpointed for one version of a file are never taken for another: rewritten, the file
    is encoded whole and the stale checkpoint dropped. A checkpoint whose page numbers have a gap (a
    damaged table) is taken only up to the gap."""
    from pdf2image.exceptions import PDFPopplerTimeoutError

    root = tmp_path / "docs"
    pdf = make_pdf(root / "long.pdf", 8, title="v1")
    real, stalling = render.convert_from_path, [True]

    def stalls(pdf_path, **kwargs):
        if stalling[0] and kwargs["first_page"] >= 5:
            raise PDFPopplerTimeoutError("stalled")
        return real(pdf_path, **kwargs)

    monkeypatch.setattr(render, "convert_from_path", stalls)
    index = DocIndex.open("main", create=True)
    first = index.ingest([root], model=str(retriever_checkpoint), batch_size=2, chunk_pages=2)
    assert first.failed == 1 and index.checkpointed_pages(pdf) == 4

    index.store.db.execute("DELETE FROM checkpoint_pages WHERE number = 3")
    gapped = index.ingest([root], batch_size=2, chunk_pages=2)
    assert gapped.resumed == [(str(pdf), 2)] and index.checkpointed_pages(pdf) == 4  # 3 and 4 again

    make_pdf(pdf, 6, title="v2")
    stalling[0] = False
    rewritten = index.ingest([root], batch_size=2, chunk_pages=2)
    assert rewritten.resumed == [] and (rewritten.added, rewritten.pages_added, rewritten.pages_resumed) == (1, 6, 0)
    assert index.store.checkpoint_rows() == 0
    fresh = DocIndex.open("fresh", create=True)
    fresh.ingest([root], model=str(retriever_checkpoint), batch_size=2, chunk_pages=2)
    got, expected = stored_pages(index), stored_pages(fresh)
    assert got.keys() == expected.keys() and len(got) == 6
    for key, vectors in expected.items():
        np.testing.assert_allclose(got[key], vectors, atol=1e-4)


def _fake_pdftoppm(folder: Path, marker: str, action: str) -> str:
    """A pdftoppm that runs `action` for files whose name contains `marker`, else the real one."""
    real = shutil.which("pdftoppm")
    assert real, "poppler-utils is required"
    folder.mkdir(exist_ok=True)
    script = folder / "pdftoppm"
    script.write_text(f'#!/bin/sh\ncase "$*" in *{marker}*) {action} ;; esac\nexec "{real}" "$@"\n')
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_hanging_render_times_out_per_file_and_the_run_goes_on(tmp_path, retriever_checkpoint, monkeypatch):
    root = tmp_path / "docs"
    make_pdf(root / "STALLS_FOREVER.pdf", 2)
    make_pdf(root / "fine.pdf", 2)
    make_image(root / "scan.png")
    monkeypatch.setenv("PATH", _fake_pdftoppm(tmp_path / "bin", "STALLS_FOREVER", "exec sleep 600"))
    index = DocIndex.open("main", create=True)
    started = time.monotonic()
    report = index.ingest([root], model=str(retriever_checkpoint), image_edge=IMAGE_EDGE, render_timeout_s=2)
    assert time.monotonic() - started < 30
    ((failure),) = report.failures
    assert Path(failure.path).name == "STALLS_FOREVER.pdf"
    assert "took longer than 2 s" in failure.error and "DOCQA_RENDER_TIMEOUT" in failure.error
    assert report.added == 2


def test_render_timeout_covers_the_whole_file_not_each_chunk(tmp_path, monkeypatch):
    """Every chunk is under the limit; together they are over it."""
    pdf = make_pdf(tmp_path / "SLOW_PAGES.pdf", 8)
    monkeypatch.setenv("PATH", _fake_pdftoppm(tmp_path / "bin", "SLOW_PAGES", "sleep 0.4"))
    started = time.monotonic()
    pages = []
    with pytest.raises(InputFileError, match="took longer than 1.2 s"):
        for page in render_pages(pdf, PDF, 64, chunk_pages=1, timeout_s=1.2):
            pages.append(page)
    assert 1 <= len(pages) < 8
    assert time.monotonic() - started < 3


def test_render_timeout_does_not_count_the_consumers_time(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", 3)
    numbers = []
    for page in render_pages(pdf, PDF, 64, chunk_pages=1, timeout_s=1.0):
        numbers.append(page.number)
        time.sleep(0.5)  # e.g. the encoder's forward pass
    assert numbers == [1, 2, 3]


def _peak_rss_mb(code: str) -> tuple[float, float]:
    """Run `code` in a fresh interpreter; (its own, its children's) peak resident memory in MB.

    Its own peak is VmHWM, which starts afresh at exec (ru_maxrss would include the parent's).
    """
    script = textwrap.dedent(code) + textwrap.dedent("""
        import re, resource
        status = open("/proc/self/status").read()
        print(re.search(r"VmHWM:\\s+(\\d+) kB", status)[1],
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    )
    own, children = result.stdout.split()[-2:]
    return int(own) / 1024, int(children) / 1024  # both in KiB on Linux


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


@needs_proc
def test_huge_page_render_is_capped_and_poppler_stays_small(tmp_path):
    pdf = make_pdf(tmp_path / "huge_page.pdf", 1, size=(14_400, 14_400))
    started = time.monotonic()
    own, poppler = _peak_rss_mb(f"""
        from pathlib import Path
        from docqa.inputs.render import render_pages
        (page,) = render_pages(Path({str(pdf)!r}), "pdf", 256)
        assert page.image.size == (256, 256), page.image.size
    """)
    assert time.monotonic() - started < 20
    assert poppler < 150  # at pdftoppm's default 200 dpi the page would be 40,000 px square (4.8 GB)
    assert own < 200


@needs_proc
def test_png_bomb_is_refused_from_its_header(tmp_path):
    bomb = make_png_bomb(tmp_path / "bomb.png")
    assert classify(bomb).kind == IMAGE
    with pytest.raises(InputFileError, match="too large to decode safely") as raised:
        count_pages(bomb, IMAGE)
    assert raised.value.path == str(bomb)
    own, _ = _peak_rss_mb(f"""
        from pathlib import Path
        from docqa.errors import InputFileError
        from docqa.inputs.render import render_pages
        try:
            list(render_pages(Path({str(bomb)!r}), "image", 256))
        except InputFileError:
            pass
        else:
            raise AssertionError("the bomb was decoded")
    """)
    assert own < 200  # decoding 30,000 x 30,000 RGB would take 2.7 GB


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_under_pillows_hard_limit_is_refused_too(tmp_path):
    """Between Pillow's warning and error thresholds Pillow only warns; docqa refuses."""
    bomb = make_png_bomb(tmp_path / "bomb.png", 12_000, 12_000)  # 144 Mpx
    with pytest.raises(InputFileError, match="12000 x 12000"):
        count_pages(bomb, IMAGE)


def test_truncated_jpeg_is_an_error_not_half_a_page(tmp_path):
    jpeg = make_image(tmp_path / "whole.jpg", size=(600, 800), format="JPEG").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    assert count_pages(truncated, IMAGE) == 1  # the header is intact
    with pytest.raises(InputFileError, match="truncated"):
        list(render_pages(truncated, IMAGE, 256))


@pytest.fixture(scope="module")
def thousand_pages(tmp_path_factory) -> Path:
    return make_pdf(tmp_path_factory.mktemp("long") / "thousand.pdf", 1000, title="long")


def test_thousand_page_pdf_streams_its_first_page_before_rendering_the_rest(thousand_pages, monkeypatch):
    calls = []
    real = render.convert_from_path
    monkeypatch.setattr(
        render,
        "convert_from_path",
        lambda *a, **kw: calls.append((kw["first_page"], kw["last_page"])) or real(*a, **kw),
    )
    assert count_pages(thousand_pages, PDF) == 1000
    stream = render_pages(thousand_pages, PDF, 64)
    assert next(stream).number == 1
    assert calls == [(1, render.DEFAULT_CHUNK_PAGES)]
    stream.close()


def _render_all_measuring(path: Path, chunk_pages: int) -> tuple[list[int], int]:
    numbers = []
    tracemalloc.start()
    try:
        for page in render_pages(path, PDF, 100, chunk_pages=chunk_pages):
            numbers.append(page.number)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return numbers, peak


@pytest.mark.parametrize(
    "chunk_pages",
    [
        25,
        pytest.param(render.DEFAULT_CHUNK_PAGES, marks=pytest.mark.slow),  # ~15 s: 125 poppler runs
    ],
)
def test_thousand_page_pdf_renders_whole_in_bounded_memory(thousand_pages, chunk_pages):
    numbers, peak = _render_all_measuring(thousand_pages, chunk_pages)
    assert numbers == list(range(1, 1001))
    # The whole file's pixels at this edge are ~21 MB (1,000 x 100 x 71 x 3); one chunk's are
    # chunk_pages/1,000 of that.
    assert peak < 6 * 1024 * 1024
