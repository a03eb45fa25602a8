"""Turn a source file into a stream of page images, a few pages at a time (bounded memory).

Office, web and text files (sources.CONVERTED kinds) are rendered from their cached PDF
(docqa.inputs.converters), converted on first use; errors still name the original file.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from PIL import Image, UnidentifiedImageError

from ..config import DEFAULT_CHUNK_PAGES, DEFAULT_TIMEOUT_S
from ..errors import InputFileError, PopplerMissingError
from .sources import CONVERTED, IMAGE, PDF, printable

# Decompression-bomb guard: an image declaring more pixels than Pillow's default warning threshold
# (268 MB as RGB) is refused from its header, before anything is decoded.
MAX_IMAGE_PIXELS = 89_478_485
# The formats sources.sniff accepts; Pillow's other (riskier, rarer) decoders are never tried.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
# What Pillow raises on corrupt or hostile image data: it has no single error type.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    TypeError,
    EOFError,
    KeyError,
    IndexError,
    struct.error,
    ZeroDivisionError,
    Image.DecompressionBombError,
)


@dataclass
class RenderedPage:
    number: int  # 1-based
    image: Image.Image  # RGB, longest edge <= the requested edge


def count_pages(path: Path, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Number of pages of a PDF or (multi-frame) image, without rendering it."""
    if kind == PDF:
        return _pdf_page_count(path, _Clock(path, timeout_s))
    if kind in CONVERTED:
        with _as_original(path):
            return _pdf_page_count(converted_pdf(path, kind), _Clock(path, timeout_s))
    with _open_image(path) as image:
        return _frame_count(path, image)


def render_pages(
    path: Path,
    kind: str,
    image_edge: int,
    *,
    first_page: int = 1,
    chunk_pages: int = DEFAULT_CHUNK_PAGES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Iterator[RenderedPage]:
    """Yield the pages of `path` from `first_page` on, each fitted into an `image_edge` square.

    PDFs are rendered `chunk_pages` at a time, so a 1,000-page file never sits in memory whole;
    `timeout_s` bounds the poppler time of the whole file (time spent by the consumer between
    pages does not count). Raises InputFileError (path + reason) for anything unreadable.
    """
    if kind == PDF:
        yield from _render_pdf(path, image_edge, first_page, chunk_pages, _Clock(path, timeout_s))
    elif kind == IMAGE:
        yield from _render_image(path, image_edge, first_page)
    elif kind in CONVERTED:
        with _as_original(path):
            pdf = converted_pdf(path, kind)
            yield from _render_pdf(pdf, image_edge, first_page, chunk_pages, _Clock(path, timeout_s))
    else:
        raise InputFileError(printable(path), f"unsupported file type {kind!r}")


def converted_pdf(path: Path, kind: str) -> Path:
    """The cached PDF of an office/web/text file, converting it now if it is not cached yet."""
    from .converters import default_converter

    return default_converter().pdf_for(path, kind)


@contextmanager
def _as_original(path: Path) -> Iterator[None]:
    """Errors about a converted file's PDF name the original file, never the cached PDF."""
    try:
        yield
    except InputFileError as error:
        if error.path == printable(path):
            raise
        raise InputFileError(printable(path), error.reason) from error


class _Clock:
    """The time one file's poppler calls may take, all of them together."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.spent = 0.0

    @contextmanager
    def running(self, what: str) -> Iterator[float]:
        """Time one call; yields the seconds left, and turns a poppler timeout into InputFileError."""
        left = self.timeout_s - self.spent
        if left <= 0:
            raise self._expired(what)
        started = time.monotonic()
        try:
            yield left
        except PDFPopplerTimeoutError as error:
            raise self._expired(what) from error
        finally:
            self.spent += time.monotonic() - started

    def _expired(self, what: str) -> InputFileError:
        return InputFileError(
            printable(self.path),
            f"{what} took longer than {self.timeout_s:g} s, the limit per file"
            " (raise it with DOCQA_RENDER_TIMEOUT if the file is just slow)",
        )


def _poppler_missing() -> PopplerMissingError:
    return PopplerMissingError(
        "poppler is not installed (pdfinfo/pdftoppm not found): install it, e.g. "
        "`apt-get install poppler-utils` or `brew install poppler`"
    )


def _pdf_page_count(path: Path, clock: _Clock) -> int:
    try:
        with clock.running("reading the PDF") as left:
            info = pdfinfo_from_path(str(path), timeout=left)  # type: ignore[arg-type]  # a float is fine
    except (PDFInfoNotInstalledError, FileNotFoundError) as error:
        raise _poppler_missing() from error
    except (PDFPageCountError, PDFSyntaxError, ValueError) as error:
        raise InputFileError(printable(path), _poppler_reason(str(error))) from error
    pages = int(info.get("Pages", 0) or 0)
    if pages < 1:
        raise InputFileError(printable(path), "the PDF has no pages")
    return pages


def _poppler_reason(message: str) -> str:
    lowered = message.lower()
    if "incorrect password" in lowered or "encrypted" in lowered:
        return "the PDF is encrypted with a password"
    if "couldn't open file" in lowered:
        return "cannot read the file (it vanished, or permission denied)"
    for line in message.splitlines():
        if "Error" in line:
            return f"the PDF is damaged or truncated (poppler: {line.strip()[:200]})"
    return "the PDF is damaged or truncated (poppler could not parse it)"


def _render_pdf(
    path: Path, image_edge: int, first_page: int, chunk_pages: int, clock: _Clock
) -> Iterator[RenderedPage]:
    total = _pdf_page_count(path, clock)
    for start in range(first_page, total + 1, chunk_pages):
        end = min(start + chunk_pages - 1, total)
        try:
            with clock.running("rendering the PDF") as left:
                images = convert_from_path(
                    str(path),
                    first_page=start,
                    last_page=end,
                    size=image_edge,
                    timeout=left,  # type: ignore[arg-type]
                )
                pages = [
                    RenderedPage(start + offset, fit_within(image, image_edge)) for offset, image in enumerate(images)
                ]
        except (PDFInfoNotInstalledError, FileNotFoundError) as error:
            raise _poppler_missing() from error
        except (PDFPageCountError, PDFSyntaxError, *_DECODE_ERRORS) as error:
            raise InputFileError(printable(path), _poppler_reason(str(error))) from error
        if len(pages) != end - start + 1:
            raise InputFileError(
                printable(path),
                f"pages {start}-{end} could not be rendered (got {len(pages)} of {end - start + 1};"
                " the PDF may be truncated or damaged)",
            )
        yield from pages
        del images, pages  # free this chunk before the next one is rendered


def _open_image(path: Path) -> Image.Image:
    """Open an image lazily (header only), refusing decompression bombs before any decoding."""
    try:
        image = Image.open(path, formats=IMAGE_FORMATS)
    except UnidentifiedImageError as error:
        raise InputFileError(
            printable(path), "the image cannot be decoded (damaged, or not really an image)"
        ) from error
    except _DECODE_ERRORS as error:
        raise InputFileError(printable(path), _image_reason(error)) from error
    try:
        _check_pixels(path, image)
    except InputFileError:
        image.close()
        raise
    return image


def _check_pixels(path: Path, image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputFileError(
            printable(path),
            f"the image is too large to decode safely ({width} x {height} pixels, over the limit of"
            f" {MAX_IMAGE_PIXELS:,}; a decompression bomb, or a scan to downsample first)",
        )


def _image_reason(error: Exception) -> str:
    if isinstance(error, Image.DecompressionBombError):
        return f"the image is too large to decode safely ({error})"
    if isinstance(error, OSError) and error.errno is not None:  # the file, not its content
        return f"cannot read the image: {error.strerror}"
    return f"the image is damaged or truncated ({type(error).__name__}: {str(error)[:200]})"


def _frame_count(path: Path, image: Image.Image) -> int:
    if image.format != "TIFF":
        return 1
    try:
        return int(image.n_frames)  # type: ignore[attr-defined]  # multi-frame formats only
    except _DECODE_ERRORS as error:
        raise InputFileError(printable(path), _image_reason(error)) from error


def _render_image(path: Path, image_edge: int, first_page: int) -> Iterator[RenderedPage]:
    with _open_image(path) as image:
        for number in range(first_page, _frame_count(path, image) + 1):
            try:
                image.seek(number - 1)
                _check_pixels(path, image)
                page = RenderedPage(number, fit_within(_decoded_near(image, image_edge), image_edge))
            except _DECODE_ERRORS as error:
                raise InputFileError(printable(path), _image_reason(error)) from error
            yield page


_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decoded_near(image: Image.Image, image_edge: int) -> Image.Image:
    """The current frame, decoded near `image_edge` rather than kept at full size next to copies of
    it (a JPEG decodes at 1/2, 1/4 or 1/8 scale; others are reduced by an integer factor right
    after decoding), turned upright by its EXIF orientation."""
    orientation = image.getexif().get(0x0112)
    if image.format == "JPEG":
        image.draft(image.mode, (2 * image_edge, 2 * image_edge))
    factor = max(image.size) // (2 * image_edge)
    frame = image.reduce(factor) if factor >= 2 else image.copy()
    method = _ORIENTATION.get(orientation) if orientation is not None else None
    return frame.transpose(method) if method is not None else frame


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


def fit_within(image: Image.Image, image_edge: int) -> Image.Image:
    """A new RGB image, downscaled (never upscaled) so its longest edge is at most `image_edge`."""
    image = _to_rgb(image)
    width, height = image.size
    scale = image_edge / max(width, height)
    if scale >= 1:
        return image.copy()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def png_bytes(image: Image.Image) -> bytes:
    """A page image as PNG bytes (RGB), as the server and MCP send page images."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()
