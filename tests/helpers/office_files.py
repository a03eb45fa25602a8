"""Office, OpenDocument, web and text files for the format tests, made here: by python-docx,
python-pptx and openpyxl, by LibreOffice itself (OpenDocument), and by hand (hostile files)."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

from PIL import Image


def make_docx(path: Path, pages: int = 2, title: str = "Quarterly report") -> Path:
    import docx

    document = docx.Document()
    document.add_heading(title, 0)
    for number in range(1, pages + 1):
        document.add_paragraph(f"Section {number}: revenue grew in region {number}. " * 20)
        if number < pages:
            document.add_page_break()
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(path)
    return path


def make_pptx(path: Path, slides: int = 3) -> Path:
    from pptx import Presentation

    deck = Presentation()
    for number in range(1, slides + 1):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"Slide {number}"
        slide.placeholders[1].text = f"Point {number}: the plan for year {2020 + number}"
    path.parent.mkdir(parents=True, exist_ok=True)
    deck.save(path)
    return path


def make_xlsx(path: Path, sheets: int = 2) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    for number in range(sheets):
        sheet = book.active if number == 0 else book.create_sheet()
        sheet.title = f"Sheet{number + 1}"
        sheet.append(["item", "amount"])
        for row in range(1, 11):
            sheet.append([f"item {row}", row * (number + 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


def libreoffice_convert(sources: list[Path], target_format: str, out_dir: Path, profile: Path) -> list[Path]:
    """Convert with a one-off `soffice --convert-to` (its own profile): LibreOffice's own export."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "soffice",
            "--headless",
            "--norestore",
            f"-env:UserInstallation={profile.as_uri()}",
            "--convert-to",
            target_format,
            "--outdir",
            str(out_dir),
            *map(str, sources),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    suffix = "." + target_format.split(":")[0]
    return [out_dir / (source.stem + suffix) for source in sources]


def make_png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def make_html(folder: Path) -> Path:
    """An HTML page with a stylesheet and an image beside it."""
    make_png(folder / "chart.png")
    (folder / "style.css").write_text("h1 { color: #1060c0; font-size: 28pt } p { margin: 1em }")
    page = folder / "page.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>Web page</title><link rel='stylesheet' href='style.css'></head>"
        "<body><h1>Harbour traffic</h1><p>Ships per month, see the chart.</p>"
        "<img src='chart.png' width='120' height='120'></body></html>"
    )
    return page


def make_markdown(path: Path) -> Path:
    rows = "\n".join(f"| port {n} | {n * 17} |" for n in range(1, 8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Ports\n\nTonnage by port.\n\n| port | tonnage |\n|---|---|\n{rows}\n\n*Source*: the ledger.\n")
    return path


def make_long_text(path: Path, lines: int = 400) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"Line {n}: the log of the voyage, day {n}, fair winds.\n" for n in range(1, lines + 1)))
    return path


def make_corrupt_zip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    return path


def make_zip_bomb_docx(path: Path, expanded_mb: int = 200) -> Path:
    """A real .docx with one more member: `expanded_mb` MiB of zeros (compresses about 1000x)."""
    make_docx(path, pages=1)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("word/media/padding.bin", "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(expanded_mb):
                member.write(block)
    return path


def encrypt_ooxml(plain: Path, target: Path, password: str = "secret") -> Path:
    """`plain` (.docx/.xlsx) protected with a password, as Office does (msoffcrypto-tool)."""
    from msoffcrypto.format.ooxml import OOXMLFile

    with open(plain, "rb") as source:
        encrypted = io.BytesIO()
        OOXMLFile(source).encrypt(password, encrypted)
    target.write_bytes(encrypted.getvalue())
    return target


_MANIFEST = """<?xml version="1.0" encoding="UTF-8"?>
<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">
 <manifest:file-entry manifest:full-path="/" manifest:version="1.2" manifest:media-type="application/vnd.oasis.opendocument.text"/>
 <manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>
 <manifest:file-entry manifest:full-path="Basic/" manifest:media-type=""/>
 <manifest:file-entry manifest:full-path="Basic/script-lc.xml" manifest:media-type="text/xml"/>
 <manifest:file-entry manifest:full-path="Basic/Standard/" manifest:media-type=""/>
 <manifest:file-entry manifest:full-path="Basic/Standard/script-lb.xml" manifest:media-type="text/xml"/>
 <manifest:file-entry manifest:full-path="Basic/Standard/Module1.xml" manifest:media-type="text/xml"/>
</manifest:manifest>
"""
_CONTENT = """<?xml version="1.0" encoding="UTF-8"?>
<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"
 xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" xmlns:script="urn:oasis:names:tc:opendocument:xmlns:script:1.0"
 xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:dom="http://www.w3.org/2001/xml-events" office:version="1.2">
 <office:scripts><office:event-listeners>
  <script:event-listener script:language="ooo:script" script:event-name="dom:load"
   xlink:href="vnd.sun.star.script:Standard.Module1.Main?language=Basic&amp;location=document" xlink:type="simple"/>
 </office:event-listeners></office:scripts>
 <office:body><office:text><text:p>This document runs a macro when it is opened.</text:p></office:text></office:body>
</office:document-content>
"""
_LIBRARIES = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE library:libraries PUBLIC "-//OpenOffice.org//DTD OfficeDocument 1.0//EN" "libraries.dtd">
<library:libraries xmlns:library="http://openoffice.org/2000/library" xmlns:xlink="http://www.w3.org/1999/xlink">
 <library:library library:name="Standard" library:link="false"/>
</library:libraries>
"""
_LIBRARY = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE library:library PUBLIC "-//OpenOffice.org//DTD OfficeDocument 1.0//EN" "library.dtd">
<library:library xmlns:library="http://openoffice.org/2000/library" library:name="Standard" library:readonly="false" library:passwordprotected="false">
 <library:element library:name="Module1"/>
</library:library>
"""
_MODULE = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE script:module PUBLIC "-//OpenOffice.org//DTD OfficeDocument 1.0//EN" "module.dtd">
<script:module xmlns:script="http://openoffice.org/2000/script" script:name="Module1" script:language="StarBasic">Sub Main
Open "{marker}" For Output As #1
Print #1, "the macro ran"
Close #1
End Sub
</script:module>
"""


def make_macro_odt(path: Path, marker: Path) -> Path:
    """An .odt whose Basic macro, bound to the document's load event, writes `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.text")
        for name, text in (
            ("META-INF/manifest.xml", _MANIFEST),
            ("content.xml", _CONTENT),
            ("Basic/script-lc.xml", _LIBRARIES),
            ("Basic/Standard/script-lb.xml", _LIBRARY),
            ("Basic/Standard/Module1.xml", _MODULE.replace("{marker}", str(marker))),
        ):
            archive.writestr(name, text, compress_type=zipfile.ZIP_DEFLATED)
    return path


LOW_MACRO_SECURITY = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="MacroSecurityLevel" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"""


def low_security_profile(profile: Path) -> Path:
    """A LibreOffice profile that runs every macro unasked (the positive control of the macro test)."""
    (profile / "user").mkdir(parents=True, exist_ok=True)
    (profile / "user" / "registrymodifications.xcu").write_text(LOW_MACRO_SECURITY)
    return profile
