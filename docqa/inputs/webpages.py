"""Make HTML and Markdown safe to hand to LibreOffice: one self-contained HTML file.

Nothing in the result points anywhere: remote URLs are dropped (never fetched), local images and
stylesheets inside the document's own folder are inlined (images as data: URIs, CSS as <style>),
and references that leave the folder (../, absolute paths, symlinks out) are dropped unread.
Scripts, frames, embedded objects, <base> and meta refreshes are removed.
"""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .sources import sniff

MAX_ASSET_BYTES = 20 << 20  # one inlined image or stylesheet
MAX_ASSETS_BYTES = 100 << 20  # all of one page's inlined files together

_DROPPED_TAGS = frozenset(
    {
        "script",
        "iframe",
        "frame",
        "frameset",
        "object",
        "embed",
        "applet",
        "base",
        "noscript",
        "template",
        "audio",
        "video",
        "source",
        "track",
        "portal",
    }
)
_VOID_TAGS = frozenset(
    {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr", "base"}
)
# Attributes through which a renderer would load something.
_LOADING_ATTRIBUTES = frozenset(
    {
        "src",
        "srcset",
        "background",
        "poster",
        "data",
        "dynsrc",
        "lowsrc",
        "longdesc",
        "action",
        "formaction",
        "xlink:href",
        "cite",
        "manifest",
        "ping",
    }
)
_CSS_URL = re.compile(r"url\s*\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)
_CSS_IMPORT = re.compile(r"@import[^;]*;?", re.IGNORECASE)
_IMAGE_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif"}


def markdown_to_html(text: str, title: str) -> str:
    """CommonMark + tables (markdown-it-py); raw HTML inside the Markdown is escaped, not passed on."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough").render(text)
    style = (
        "body{font-family:sans-serif} table{border-collapse:collapse} "
        "th,td{border:1px solid #888;padding:2px 6px} pre,code{font-family:monospace}"
    )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>{body}</body></html>"
    )


def self_contained(markup: str, folder: Path) -> str:
    """`markup` rewritten so that it loads nothing, with what it needs from `folder` inlined."""
    rewriter = _Rewriter(folder.resolve())
    rewriter.feed(markup)
    rewriter.close()
    return "".join(rewriter.out)


class _Rewriter(HTMLParser):
    def __init__(self, folder: Path) -> None:
        super().__init__(convert_charrefs=True)
        self.folder = folder
        self.out: list[str] = []
        self.dropping = 0  # depth inside a dropped element
        self.in_style = False
        self.inlined_bytes = 0

    # -- local files ---------------------------------------------------------------------------
    def local_file(self, reference: str) -> Path | None:
        """The file inside the folder that `reference` names, or None (remote, outside, missing)."""
        reference = reference.strip()
        if not reference or reference.startswith("#"):
            return None
        parts = urlsplit(reference)
        if parts.scheme and parts.scheme.lower() != "file" and len(parts.scheme) > 1:
            return None  # http:, https:, ftp:, data:, javascript:, ... (never fetched)
        if parts.scheme.lower() == "file" or parts.netloc:
            return None  # absolute file URLs and //host/... leave the folder by definition
        relative = unquote(parts.path)
        if not relative or relative.startswith(("/", "\\")) or (len(parts.scheme) == 1):  # C:\...
            return None
        try:
            target = (self.folder / relative).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not target.is_file() or not target.is_relative_to(self.folder):
            return None
        return target

    def read_asset(self, target: Path) -> bytes | None:
        try:
            size = target.stat().st_size
            if size > MAX_ASSET_BYTES or self.inlined_bytes + size > MAX_ASSETS_BYTES:
                return None
            data = target.read_bytes()
        except OSError:
            return None
        self.inlined_bytes += len(data)
        return data

    def image_uri(self, reference: str) -> str | None:
        target = self.local_file(reference)
        data = self.read_asset(target) if target is not None else None
        if data is None:
            return None
        mime = next((kind for magic, kind in _IMAGE_TYPES.items() if data.startswith(magic)), None)
        if mime is None and sniff(data[:1024]) is None and not data.lstrip().startswith(b"<svg"):
            return None
        mime = mime or ("image/svg+xml" if data.lstrip().startswith(b"<svg") else "image/png")
        if mime == "image/svg+xml":
            return None  # an SVG can reference further files itself: not inlined
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def clean_css(self, css: str) -> str:
        css = _CSS_IMPORT.sub("", css)
        return _CSS_URL.sub("none", css)

    # -- the parser's callbacks ----------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.start(tag, attrs, closed=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.start(tag, attrs, closed=True)

    def start(self, tag: str, attrs: list[tuple[str, str | None]], closed: bool) -> None:
        if self.dropping:
            if tag not in _VOID_TAGS and not closed:
                self.dropping += 1
            return
        if tag in _DROPPED_TAGS:
            if tag not in _VOID_TAGS and not closed:
                self.dropping = 1
            return
        values = {name.lower(): value or "" for name, value in attrs}
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            return
        if tag == "link":
            self.link(values)
            return
        kept: list[tuple[str, str]] = []
        for name, value in attrs:
            name = name.lower()
            value = value or ""
            if name.startswith("on"):
                continue  # event handlers
            if name == "style":
                kept.append((name, self.clean_css(value)))
            elif name == "src" and tag == "img":
                uri = self.image_uri(value)
                if uri is not None:
                    kept.append((name, uri))
            elif name in _LOADING_ATTRIBUTES:
                continue
            elif name == "href" and urlsplit(value.strip()).scheme.lower() in ("javascript", "vbscript", "file"):
                continue
            else:
                kept.append((name, value))
        rendered = "".join(f' {name}="{html.escape(value, quote=True)}"' for name, value in kept)
        self.out.append(f"<{tag}{rendered}{' /' if closed else ''}>")
        if tag == "style" and not closed:
            self.in_style = True

    def link(self, values: dict[str, str]) -> None:
        """A local stylesheet inside the folder becomes <style>; every other <link> goes."""
        if "stylesheet" not in values.get("rel", "").lower().split():
            return
        target = self.local_file(values.get("href", ""))
        data = self.read_asset(target) if target is not None else None
        if data is not None:
            css = self.clean_css(data.decode("utf-8", errors="replace")).replace("</", "<\\/")
            self.out.append(f"<style>{css}</style>")

    def handle_endtag(self, tag: str) -> None:
        if self.dropping:
            if tag not in _VOID_TAGS:
                self.dropping -= 1
            return
        if tag in _DROPPED_TAGS or tag == "link":
            return
        if tag == "style":
            self.in_style = False
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self.dropping:
            return
        self.out.append(self.clean_css(data) if self.in_style else html.escape(data, quote=False))

    def handle_decl(self, decl: str) -> None:
        if decl.lower().startswith("doctype"):
            self.out.append(f"<!{decl}>")

    def handle_comment(self, data: str) -> None:
        return  # conditional comments can load files in some renderers: dropped

    def handle_pi(self, data: str) -> None:
        return

    def unknown_decl(self, data: str) -> None:
        return
