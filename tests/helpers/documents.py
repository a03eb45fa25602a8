"""Generate real input files for tests: multi-page PDFs (reportlab) and page images (PIL)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw
from pypdf import PdfWriter
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas


def make_pdf(path: Path, pages: int, title: str = "doc", size: tuple[float, float] = A4) -> Path:
    """A PDF with `pages` pages of distinct text and shapes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf = canvas.Canvas(str(path), pagesize=size)
    width, height = size
    for number in range(1, pages + 1):
        pdf.setFont("Helvetica-Bold", 28)
        pdf.drawString(60, height - 100, f"{title} page {number}")
        pdf.setFont("Helvetica", 12)
        for line in range(20):
            pdf.drawString(60, height - 150 - 18 * line, f"{title} line {line} revenue {number * line}")
        pdf.rect(60 + 20 * number % 300, 80, 120, 60, fill=number % 2)
        pdf.showPage()
    pdf.save()
    return path


def make_image(
    path: Path,
    size: tuple[int, int] = (300, 420),
    color: str = "white",
    text: str = "scan",
    format: str | None = None,
    mode: str = "RGB",
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    draw.rectangle([10, 10, size[0] // 2, size[1] // 3], outline="black", width=3)
    draw.text((20, size[1] // 2), text, fill="black")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=format)
    return path


def make_tiff(path: Path, frames: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.new("RGB", (200, 280), (40 * i % 255, 120, 200)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], format="TIFF")
    return path


def make_encrypted_pdf(source: Path, path: Path, user_password: str, owner_password: str) -> Path:
    """`source` encrypted; an empty user password opens without one (owner password only)."""
    writer = PdfWriter(clone_from=source)
    writer.encrypt(user_password=user_password, owner_password=owner_password)
    with open(path, "wb") as handle:
        writer.write(handle)
    return path


def make_png_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A valid PNG header declaring `width` x `height` RGB pixels, with a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def make_exif_rotated_jpeg(path: Path, size: tuple[int, int] = (400, 200)) -> Path:
    """A landscape JPEG whose EXIF orientation (6) says: show it rotated 90°, as portrait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", size, "white").save(path, exif=exif)
    return path


def make_palette_alpha_png(path: Path, size: tuple[int, int] = (120, 160)) -> Path:
    """A palette PNG with a transparent palette entry (mode P + tRNS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, "red")
    ImageDraw.Draw(image).rectangle([10, 10, 60, 60], fill="blue")
    image.convert("P").save(path, transparency=0)
    return path


def make_mixed_folder(root: Path) -> Path:
    """A folder of 4 documents (two PDFs, a PNG, a 2-frame TIFF; 8 pages) and a text file of no supported type (.log) to skip."""
    make_pdf(root / "reports" / "q1.pdf", 3, title="q1")
    make_pdf(root / "reports" / "q2.pdf", 2, title="q2")
    make_image(root / "scans" / "receipt.png", text="receipt")
    make_tiff(root / "scans" / "fax.tiff", 2)
    (root / "notes.log").write_text("not a document")
    return root
