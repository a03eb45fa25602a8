"""Generate real input files for tests: multi-page PDFs (reportlab) and page images (PIL)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw
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


def make_image(path: Path, size: tuple[int, int] = (300, 420), color: str = "white",
               text: str = "scan", format: str | None = None, mode: str = "RGB") -> Path:
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
