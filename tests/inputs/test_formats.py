"""Office, OpenDocument, web and text files: sniffed by content, converted by LibreOffice (pooled,
sandboxed, cached by content hash), indexed under their original names; hostile files named with
their reason; nothing skipped in silence. LibreOffice tests share one converter (session fixture)
and are skipped, with the reason, where soffice or python3-uno is absent."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers.documents import make_pdf
from helpers.office_files import (
    encrypt_ooxml,
    libreoffice_convert,
    make_corrupt_zip,
    make_docx,
    make_html,
    make_long_text,
    make_macro_odt,
    make_markdown,
    make_png,
    make_pptx,
    make_xlsx,
    make_zip_bomb_docx,
)
from helpers.paths import HELPERS

from docqa import DocIndex
from docqa.answer.grounding import render_indexed_page
from docqa.cli import main
from docqa.inputs import converters, sources, webpages
from docqa.inputs.converters import Converter, libreoffice_available, set_default_converter

needs_libreoffice = pytest.mark.skipif(
    not libreoffice_available(),
    reason=f"LibreOffice is not installed (soffice + python3-uno): {converters.INSTALL_HINT}",
)


def pdf_pages(path: Path) -> int:
    output = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[-1] for line in output.splitlines() if line.startswith("Pages:")))


def pdf_images(path: Path) -> int:
    output = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in output.splitlines()[2:] if line.split() and line.split()[2] == "image")


@pytest.fixture(scope="session")
def conversion_cache(tmp_path_factory) -> Path:
    """Converted PDFs of the whole session go to one folder of their own."""
    cache = tmp_path_factory.mktemp("conversion-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCQA_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def converter(conversion_cache):
    """One LibreOffice pool (one worker) for every test that converts, installed as docqa's default."""
    if not libreoffice_available():
        pytest.skip(f"LibreOffice is not installed (soffice + python3-uno): {converters.INSTALL_HINT}")
    pool = Converter(workers=1, timeout_s=120)
    previous = set_default_converter(pool)
    yield pool
    set_default_converter(previous)
    pool.close()


@pytest.fixture()
def own_converter(tmp_path, monkeypatch):
    """Install a converter for one test (with its own cache), restoring the session's after it."""
    monkeypatch.setenv("DOCQA_CACHE", str(tmp_path / "cache"))
    installed: list[Converter] = []
    previous = converters._default

    def install(pool: Converter) -> Converter:
        installed.append(pool)
        set_default_converter(pool)
        return pool

    yield install
    set_default_converter(previous)
    for pool in installed:
        pool.close()


@pytest.fixture(scope="session")
def office_folder(tmp_path_factory, converter) -> tuple[Path, dict[str, int]]:
    """A folder of every converted format, and each file's page count in LibreOffice's own PDF export."""
    root = tmp_path_factory.mktemp("office")
    docs = root / "docs"
    report = make_docx(docs / "report.docx", pages=2)
    deck = make_pptx(docs / "deck.pptx", slides=3)
    book = make_xlsx(docs / "book.xlsx", sheets=2)
    profile = root / "lo-profile"
    made = root / "made"
    odt = libreoffice_convert([make_docx(made / "memo.docx", pages=3, title="Memo")], "odt", docs / "open", profile)[0]
    odp = libreoffice_convert([make_pptx(made / "slides.pptx", slides=2)], "odp", docs / "open", profile)[0]
    ods = libreoffice_convert([make_xlsx(made / "sheet.xlsx", sheets=1)], "ods", docs / "open", profile)[0]
    # The binary Office formats and RTF, saved by LibreOffice itself (Word 97, PowerPoint 97, Excel 97)
    doc = libreoffice_convert(
        [make_docx(made / "old-memo.docx", pages=2, title="Old memo")], "doc", docs / "old", profile
    )[0]
    ppt = libreoffice_convert([make_pptx(made / "old-deck.pptx", slides=2)], "ppt", docs / "old", profile)[0]
    xls = libreoffice_convert([make_xlsx(made / "old-book.xlsx", sheets=2)], "xls", docs / "old", profile)[0]
    rtf = libreoffice_convert([make_docx(made / "letter.docx", pages=1, title="Letter")], "rtf", docs / "old", profile)[
        0
    ]
    page = make_html(docs / "web")
    notes = make_markdown(docs / "notes.md")
    log = make_long_text(docs / "log.txt", lines=400)
    originals = [report, deck, book, odt, odp, ods, doc, ppt, xls, rtf, log]
    exported = libreoffice_convert(originals, "pdf", root / "reference", profile)
    expected = {original.name: pdf_pages(pdf) for original, pdf in zip(originals, exported)}
    expected[page.name] = expected[notes.name] = None  # checked against the converted PDF (see the test)
    expected["chart.png"] = 1  # the page's image is a page image of its own too
    return docs, expected


# -- sniffing and HTML rewriting (no LibreOffice needed) -------------------------------------------


def test_sniff_decides_office_and_text_types_by_content(tmp_path):
    pytest.importorskip("docx")
    assert sources.classify(make_docx(tmp_path / "report.bin")).kind == sources.DOCX
    assert sources.classify(make_pptx(tmp_path / "deck")).kind == sources.PPTX
    assert sources.classify(make_xlsx(tmp_path / "book.dat")).kind == sources.XLSX
    rtf = tmp_path / "letter.doc"
    rtf.write_bytes(b"{\\rtf1\\ansi Hello}")
    assert sources.classify(rtf).kind == sources.RTF  # named .doc, but RTF inside
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("Grüße aus Köln\n" * 20, encoding="utf-16")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café crème\n".encode("cp1252"))
    assert sources.classify(utf16).kind == sources.TEXT and sources.classify(utf16).encoding == "utf-16"
    assert sources.classify(latin).encoding == "cp1252"
    page = tmp_path / "saved"
    page.write_text("<!DOCTYPE html><html><body>hi</body></html>")
    assert sources.classify(page).kind == sources.HTML
    assert sources.classify(make_markdown(tmp_path / "n.md")).kind == sources.MARKDOWN
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02binary")
    assert sources.classify(binary).kind is None
    script = tmp_path / "tool.py"
    script.write_text("print('hi')\n")
    assert sources.classify(script).kind is None and not sources.classify(script).claimed
    fake = make_corrupt_zip(tmp_path / "fake.docx")
    assert "damaged zip" in sources.classify(fake).problem
    named = tmp_path / "plain.xlsx"
    named.write_bytes(b"\x01\x02 not a workbook at all")
    assert "not such a document" in sources.classify(named).problem


def test_password_protected_and_zip_bomb_are_refused_before_conversion(tmp_path):
    pytest.importorskip("msoffcrypto")
    locked_docx = encrypt_ooxml(make_docx(tmp_path / "plain.docx"), tmp_path / "locked.docx")
    locked_xlsx = encrypt_ooxml(make_xlsx(tmp_path / "plain.xlsx"), tmp_path / "locked.xlsx")
    for locked in (locked_docx, locked_xlsx):
        found = sources.classify(locked)
        assert found.kind is None and "password" in found.problem
    bomb = sources.classify(make_zip_bomb_docx(tmp_path / "bomb.docx", expanded_mb=100))
    assert bomb.kind == sources.DOCX and "zip bomb" in bomb.problem


def test_html_rewrite_inlines_its_folder_and_drops_the_rest(tmp_path):
    folder = tmp_path / "site"
    make_png(folder / "inside.png")
    (folder / "style.css").write_text("h1 { color: red; background: url(http://example.invalid/bg.png) }")
    secret = make_png(tmp_path / "secret.png")
    os.symlink(secret, folder / "link.png")
    markup = (
        "<html><head><link rel=stylesheet href=style.css><link rel=stylesheet href='http://example.invalid/a.css'>"
        "<style>@import url('http://example.invalid/b.css'); p { background: url(../secret.png) }</style>"
        "<script src='http://example.invalid/x.js'></script><base href='http://example.invalid/'></head><body>"
        f"<img src='inside.png'><img src='../secret.png'><img src='{secret}'><img src='{secret.as_uri()}'>"
        "<img src='link.png'><img src='http://example.invalid/r.png' srcset='http://example.invalid/s.png 2x'>"
        "<iframe src='http://example.invalid/f'></iframe><object data='../secret.png'></object>"
        "<p onclick='steal()'>text &amp; more</p><a href='http://example.invalid/'>a link</a></body></html>"
    )
    out = webpages.self_contained(markup, folder)
    assert out.count("data:image/png;base64,") == 1  # inside.png only
    assert "color: red" in out and "<style>" in out
    for gone in (
        "secret",
        "example.invalid/bg",
        "a.css",
        "b.css",
        "x.js",
        "r.png",
        "s.png",
        "/f'",
        "onclick",
        "<base",
        "<iframe",
        "<object",
        "@import",
        "file:",
    ):
        assert gone not in out, gone
    assert "text &amp; more" in out and 'href="http://example.invalid/"' in out  # a hyperlink loads nothing


def test_walk_skips_hidden_and_filters_by_glob(tmp_path):
    root = tmp_path / "root"
    for name in ("a.pdf", ".secret.pdf", ".git/objects/x.pdf", "drafts/b.pdf", "keep/c.pdf"):
        make_pdf(root / name, 1)
    found = list(sources.walk([root], sources.WalkOptions(exclude=["drafts"], include=["*.pdf"])))
    files = sorted(p.relative_to(root).as_posix() for p in found if isinstance(p, Path))
    skipped = {item.path.name: (item.group, item.reason) for item in found if isinstance(item, sources.Skipped)}
    assert files == ["a.pdf", "keep/c.pdf"]
    assert skipped == {
        ".git": ("hidden", "hidden folder, not entered (--hidden takes it)"),
        ".secret.pdf": ("hidden", "hidden file (--hidden takes it)"),
        "drafts": ("excluded", "excluded by --exclude 'drafts'"),
    }
    taken = [p for p in sources.walk([root], sources.WalkOptions(hidden=True)) if isinstance(p, Path)]
    assert len(taken) == 5
    assert [p for p in sources.walk([root / ".secret.pdf"]) if isinstance(p, Path)]  # named explicitly: taken


# -- real conversions --------------------------------------------------------------------------------


@needs_libreoffice
def test_every_format_is_indexed_with_libreoffice_page_counts_under_its_own_name(
    office_folder, converter, retriever_checkpoint, capsys
):
    docs, expected = office_folder
    index = DocIndex.open("main", create=True)
    report = index.ingest([docs], model=str(retriever_checkpoint), batch_size=4, image_edge=512)
    assert report.failures == []
    assert [(Path(s.path).name, s.group) for s in report.skipped_files] == [("style.css", "unsupported type")]
    stored = {Path(record.path).name: record for record in index.documents()}
    assert set(stored) == set(expected)
    for name, pages in expected.items():
        record = stored[name]
        if pages is None:  # HTML and Markdown: LibreOffice reads our self-contained rewrite of them
            pages = pdf_pages(converters.cached_pdf_path(record.sha256))
        assert record.pages == pages, name
    assert stored["report.docx"].pages == 2 and stored["deck.pptx"].pages == 3 and stored["log.txt"].pages >= 5
    kinds = {name: stored[name].kind for name in ("report.docx", "memo.odt", "notes.md", "page.html", "log.txt")}
    kinds |= {name: stored[name].kind for name in ("old-memo.doc", "old-deck.ppt", "old-book.xls", "letter.rtf")}
    assert kinds == {
        "report.docx": "docx",
        "memo.odt": "odt",
        "notes.md": "markdown",
        "page.html": "html",
        "log.txt": "text",
        "old-memo.doc": "doc",
        "old-deck.ppt": "ppt",
        "old-book.xls": "xls",
        "letter.rtf": "rtf",
    }

    html_pdf = converters.cached_pdf_path(stored["page.html"].sha256)  # the CSS and the image came along
    assert pdf_images(html_pdf) == 1
    text = subprocess.run(["pdftotext", str(html_pdf), "-"], capture_output=True, text=True).stdout
    assert "Harbour traffic" in text
    table = subprocess.run(
        ["pdftotext", "-layout", str(converters.cached_pdf_path(stored["notes.md"].sha256)), "-"],
        capture_output=True,
        text=True,
    ).stdout
    assert "port 7" in table and "119" in table and "|" not in table  # a table, not pipes

    conversions = converter.conversions
    index.close()
    code = main(["search", "revenue in region two", "--index", "main", "-k", "40", "--json"])
    results = json.loads(capsys.readouterr().out)["results"]
    assert code == 0 and results
    originals = {str(record.file) for record in stored.values()}
    assert {result["path"] for result in results} <= originals  # never a cached PDF
    index = DocIndex.open("main")
    hit = next(h for h in index.search("slide", k=40) if h.kind == "pptx")
    image = render_indexed_page(
        hit.file, hit.page, hit.sha256, hit.kind, 256, hit.path
    )  # as ask, heatmaps, the server do
    assert max(image.size) == 256
    again = index.ingest([docs])
    assert (again.unchanged, again.added) == (len(expected), 0)
    assert converter.conversions == conversions  # re-ingest and re-render: never converted twice


@needs_libreoffice
def test_hostile_files_are_named_and_nothing_indexed_is_lost(tmp_path, converter, retriever_checkpoint):
    pytest.importorskip("msoffcrypto")
    docs = tmp_path / "docs"
    make_pdf(docs / "kept.pdf", 2)
    make_docx(docs / "kept.docx", pages=1)
    index = DocIndex.open("main", create=True)
    first = index.ingest([docs], model=str(retriever_checkpoint), image_edge=512)
    assert (first.added, first.failed) == (2, 0)

    make_corrupt_zip(docs / "corrupt.docx")
    encrypt_ooxml(make_docx(tmp_path / "plain.docx"), docs / "locked.docx")
    encrypt_ooxml(make_xlsx(tmp_path / "plain.xlsx"), docs / "locked.xlsx")
    make_zip_bomb_docx(docs / "bomb.docx", expanded_mb=100)
    marker = tmp_path / "macro-ran"
    make_macro_odt(docs / "macro.odt", marker)
    requests: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{server.server_address[1]}"
    secret = make_png(tmp_path / "secret.png", colour=(0, 200, 0))
    (docs / "web").mkdir()
    (docs / "web" / "hostile.html").write_text(
        f"<html><head><link rel=stylesheet href='{remote}/a.css'><style>@import url({remote}/b.css);"
        f" body {{ background: url({remote}/bg.png) }}</style><script src='{remote}/x.js'></script></head>"
        f"<body><h1>Hostile page</h1><img src='{remote}/r.png'><img src='../../secret.png'><img src='{secret}'>"
        f"<img src='{secret.as_uri()}'><iframe src='{remote}/frame'></iframe></body></html>"
    )
    try:
        report = index.ingest([docs])
    finally:
        server.shutdown()
    reasons = {Path(f.path).name: f.error for f in report.failures}
    assert set(reasons) == {"corrupt.docx", "locked.docx", "locked.xlsx", "bomb.docx"}
    assert "damaged zip" in reasons["corrupt.docx"]
    assert "password" in reasons["locked.docx"] and "password" in reasons["locked.xlsx"]
    assert "zip bomb" in reasons["bomb.docx"]
    assert report.added == 2  # the macro document and the hostile page, both harmless now
    assert not marker.exists()  # the macro never ran
    assert requests == []  # nothing fetched
    stored = {Path(record.path).name: record for record in index.documents()}
    assert pdf_images(converters.cached_pdf_path(stored["hostile.html"].sha256)) == 0  # nothing read outside
    assert (stored["kept.pdf"].pages, stored["kept.docx"].pages) == (2, 1)
    assert set(stored) == {"kept.pdf", "kept.docx", "macro.odt", "hostile.html"}


def test_a_hanging_converter_is_killed_and_reported(tmp_path, own_converter, retriever_checkpoint):
    stand_in = own_converter(
        Converter(workers=1, timeout_s=2, worker_command=[sys.executable, str(HELPERS / "sleepy_converter.py")])
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in (("a-first.txt", "first"), ("b-hangs.txt", "HANG here"), ("c-after.txt", "after the hang")):
        (docs / name).write_text(text)
    make_pdf(docs / "d.pdf", 1)
    index = DocIndex.open("main", create=True)
    report = index.ingest([docs], model=str(retriever_checkpoint))
    assert [(Path(f.path).name, f.error) for f in report.failures] == [
        (
            "b-hangs.txt",
            "converting it took longer than 2 s, the limit per file (killed; raise it with"
            " DOCQA_CONVERT_TIMEOUT if it is just slow)",
        )
    ]
    assert report.added == 3  # before the hang, after it (a fresh worker), and the PDF
    pids = [int(line) for line in (stand_in._all[0].stage / "pids").read_text().split()]
    assert len(pids) == 2 and not Path(f"/proc/{pids[0]}").exists()  # the hung one is gone
    [record] = [r for r in index.documents() if r.path.endswith("b-hangs.txt")] or [None]
    assert record is None


def test_without_libreoffice_the_files_are_reported_together(
    tmp_path, own_converter, monkeypatch, capsys, retriever_checkpoint
):
    pytest.importorskip("docx")
    monkeypatch.setattr(converters, "find_soffice", lambda: None)
    own_converter(Converter(workers=1))
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1)
    make_docx(docs / "b.docx")
    make_pptx(docs / "c.pptx")
    make_long_text(docs / "d.txt", lines=3)
    code = main(["ingest", str(docs), "--index", "main", "--model", str(retriever_checkpoint)])
    captured = capsys.readouterr()
    assert code == 0 and "1 added" in captured.out and "3 skipped" in captured.out
    assert f"3 files need LibreOffice to be indexed: {converters.INSTALL_HINT}" in captured.err
    for name in ("b.docx", "c.pptx", "d.txt"):
        assert str(docs / name) in captured.err
    main(["ingest", str(docs), "--index", "main", "--json"])
    skipped = json.loads(capsys.readouterr().out)["skipped"]
    assert [(Path(s["path"]).name, s["group"]) for s in skipped] == [
        ("b.docx", "needs LibreOffice"),
        ("c.pptx", "needs LibreOffice"),
        ("d.txt", "needs LibreOffice"),
    ]
    assert all("apt-get install" in s["reason"] for s in skipped)


def test_every_file_not_indexed_is_named_in_json_and_summary(tmp_path, monkeypatch, capsys, retriever_checkpoint):
    docs = tmp_path / "docs"
    for name in ("a.pdf", ".hidden.pdf", ".cache/x.pdf", "drafts/b.pdf"):
        make_pdf(docs / name, 1)
    (docs / "tool.py").write_text("print('hi')\n")
    (docs / "archive.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    make_long_text(docs / "huge.txt", lines=50)
    monkeypatch.setattr(sources, "MAX_CONVERTED_BYTES", 1000)
    code = main(
        [
            "ingest",
            str(docs),
            "--index",
            "main",
            "--model",
            str(retriever_checkpoint),
            "--exclude",
            "drafts/*",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["documents"]["added"] == 1
    by_name = {Path(s["path"]).name: (s["group"], s["reason"]) for s in report["skipped"]}
    assert set(by_name) == {".cache", ".hidden.pdf", "b.pdf", "tool.py", "archive.zip", "huge.txt"}
    assert by_name["b.pdf"] == ("excluded", "excluded by --exclude 'drafts/*'")
    assert by_name[".cache"][0] == by_name[".hidden.pdf"][0] == "hidden"
    assert by_name["tool.py"][0] == by_name["archive.zip"][0] == "unsupported type"
    assert by_name["huge.txt"][0] == "too large" and "DOCQA_MAX_CONVERT_MB" in by_name["huge.txt"][1]
    assert report["documents"]["skipped"] == 6

    main(["ingest", str(docs), "--index", "main", "--hidden", "--include", "*.pdf"])
    captured = capsys.readouterr()
    assert "3 added" in captured.out  # the hidden two and drafts/b.pdf
    assert "  skipped (excluded): 3" in captured.err
    for name in ("tool.py", "archive.zip", "huge.txt"):
        assert f"{docs / name}: matches no --include glob" in captured.err


def test_a_symlink_is_indexed_under_the_path_given(tmp_path, retriever_checkpoint):
    outside = make_pdf(tmp_path / "elsewhere" / "real.pdf", 1)
    docs = tmp_path / "docs"
    docs.mkdir()
    os.symlink(outside, docs / "link.pdf")
    index = DocIndex.open("main", create=True)
    index.ingest([docs], model=str(retriever_checkpoint), image_edge=512)
    assert [record.path for record in index.documents()] == [str(docs / "link.pdf")]
    assert [hit.path for hit in index.search("page", k=1)] == [str(docs / "link.pdf")]
    assert index.remove([docs]).removed == [str(docs / "link.pdf")]  # removing the folder takes it


def test_index_naming_a_file_is_one_line_and_no_index_says_where_it_looked(tmp_path, capsys, docqa_home):
    a_file = tmp_path / "notes.log"
    a_file.write_text("x")
    for argv in (["ingest", str(tmp_path), "--index", str(a_file)], ["search", "x", "--index", str(a_file)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{a_file} is a file, not an index folder" in err
    assert main(["search", "x", "--index", "nothing"]) == 2
    err = capsys.readouterr().err
    assert f"no index at {docqa_home / 'indexes' / 'nothing'}" in err and f"DOCQA_HOME={docqa_home}" in err
