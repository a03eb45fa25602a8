"""Turn a source file into a stream of page images, a few pages at a time (bounded memory)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pdf2image import convert_from_path, pdfinfo_from_path
from pdf2image.exceptions import (
    PDFInfoNotInstalledError,
    PDFPageCountError,
    PDFPopplerTimeoutError,
    PDFSyntaxError,
)
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from .errors import DocQAError, InputFileError
from .sources import IMAGE, PDF

DEFAULT_CHUNK_PAGES = 8
DEFAULT_TIMEOUT_S = 120


class PopplerMissingError(DocQAError):
    """pdftoppm/pdfinfo are not installed, so no PDF can be rendered."""


@dataclass
class RenderedPage:
    number: int  # 1-based
    image: Image.Image  # RGB, longest edge <= the requested edge


def count_pages(path: Path, kind: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> int:
    """Number of pages of a PDF or (multi-frame) image, without rendering it."""
    if kind == PDF:
        return _pdf_page_count(path, timeout_s)
    with _open_image(path) as image:
        return _frame_count(image)


def render_pages(
    path: Path,
    kind: str,
    image_edge: int,
    *,
    first_page: int = 1,
    chunk_pages: int = DEFAULT_CHUNK_PAGES,
    timeout_s: int = DEFAULT_TIMEOUT_S,
) -> Iterator[RenderedPage]:
    """Yield the pages of `path` from `first_page` on, each fitted into an `image_edge` square.

    PDFs are rendered `chunk_pages` at a time, so a 1,000-page file never sits in memory whole.
    Raises InputFileError (path + reason) for anything unreadable.
    """
    if kind == PDF:
        yield from _render_pdf(path, image_edge, first_page, chunk_pages, timeout_s)
    elif kind == IMAGE:
        yield from _render_image(path, image_edge, first_page)
    else:
        raise InputFileError(str(path), f"unsupported file type {kind!r}")


def _pdf_page_count(path: Path, timeout_s: int) -> int:
    try:
        info = pdfinfo_from_path(str(path), timeout=timeout_s)
    except (PDFInfoNotInstalledError, FileNotFoundError) as error:
        raise PopplerMissingError(
            "poppler is not installed (pdfinfo/pdftoppm not found): install it, e.g. "
            "`apt-get install poppler-utils` or `brew install poppler`"
        ) from error
    except PDFPopplerTimeoutError as error:
        raise InputFileError(str(path), f"reading the PDF took longer than {timeout_s} s") from error
    except (PDFPageCountError, PDFSyntaxError, ValueError) as error:
        raise InputFileError(str(path), _poppler_reason(str(error))) from error
    pages = int(info.get("Pages", 0) or 0)
    if pages < 1:
        raise InputFileError(str(path), "the PDF has no pages")
    return pages


def _poppler_reason(message: str) -> str:
    lowered = message.lower()
    if "incorrect password" in lowered or "encrypted" in lowered:
        return "the PDF is encrypted with a password"
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Syntax Error") or line.startswith("Internal Error") or "Error" in line:
            return f"the PDF cannot be read ({line[:200]})"
    return "the PDF cannot be read (poppler could not parse it)"


def _render_pdf(
    path: Path, image_edge: int, first_page: int, chunk_pages: int, timeout_s: int
) -> Iterator[RenderedPage]:
    total = _pdf_page_count(path, timeout_s)
    for start in range(first_page, total + 1, chunk_pages):
        end = min(start + chunk_pages - 1, total)
        try:
            images = convert_from_path(
                str(path), first_page=start, last_page=end, size=image_edge, timeout=timeout_s
            )
        except PDFPopplerTimeoutError as error:
            raise InputFileError(
                str(path), f"rendering pages {start}-{end} took longer than {timeout_s} s"
            ) from error
        except (PDFPageCountError, PDFSyntaxError, ValueError, OSError) as error:
            raise InputFileError(str(path), _poppler_reason(str(error))) from error
        if len(images) != end - start + 1:
            raise InputFileError(
                str(path),
                f"pages {start}-{end} could not be rendered (got {len(images)} of {end - start + 1};"
                " the PDF may be truncated or damaged)",
            )
        for offset, image in enumerate(images):
            yield RenderedPage(start + offset, _fit(_to_rgb(image), image_edge))
        del images


def _open_image(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputFileError(
            str(path), f"the image is too large to decode safely ({error})"
        ) from error
    except UnidentifiedImageError as error:
        raise InputFileError(str(path), "the image cannot be decoded") from error
    except OSError as error:
        raise InputFileError(str(path), f"cannot read the image: {error}") from error


def _frame_count(image: Image.Image) -> int:
    return int(getattr(image, "n_frames", 1)) if image.format == "TIFF" else 1


def _render_image(path: Path, image_edge: int, first_page: int) -> Iterator[RenderedPage]:
    with _open_image(path) as image:
        frames = _frame_count(image)
        try:
            for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
                if number > frames:
                    break
                if number >= first_page:
                    yield RenderedPage(number, _fit(_to_rgb(ImageOps.exif_transpose(frame)), image_edge))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise InputFileError(str(path), f"the image cannot be decoded: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB on a white background, whatever the mode (palette+alpha, CMYK, 16-bit, ...)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.uint32)
        peak = max(int(pixels.max()), 1)
        scale = 255.0 / (65535 if peak > 255 else 255)
        image = Image.fromarray((pixels * scale).clip(0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" or image.mode in ("LA", "PA", "RGBA", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB") if image.mode != "RGB" else image


def _fit(image: Image.Image, image_edge: int) -> Image.Image:
    """Downscale (never upscale) so the longest edge is at most `image_edge`; returns a new image."""
    width, height = image.size
    scale = image_edge / max(width, height)
    if scale >= 1:
        return image.copy()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
