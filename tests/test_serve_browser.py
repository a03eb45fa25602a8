"""The web page end to end in headless Chromium (Debian's `chromium`, driven by Playwright through
`executable_path`; Playwright's own browser download is not used), against a real uvicorn on
127.0.0.1: upload a PDF, see it ingested, search by keyboard, see thumbnails, toggle a heatmap, ask
and see the answer stream in with its citations. Screenshots (desktop and phone width) go to
$DOCQA_SCREENSHOTS when set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install playwright)")

from docqa.serve import create_app  # noqa: E402
from docqa.serve.service import Service  # noqa: E402

from documents import make_pdf  # noqa: E402
from serve_helpers import running_server  # noqa: E402


def _chromium() -> str | None:
    for candidate in [os.environ.get("DOCQA_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]:
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on this machine: install Debian's (apt-get install chromium) or set DOCQA_CHROMIUM",
)


def _loaded(page, selector: str) -> None:
    """Wait until the image at ``selector`` has really loaded (a decoded PNG, not a broken image)."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector, timeout=60_000,
    )


def test_upload_search_heatmap_and_ask_in_a_browser(tmp_path, retriever_checkpoint, generator_checkpoints):
    pdf = make_pdf(tmp_path / "in" / "quarterly-report.pdf", 2, title="quarterly")
    service = Service(tmp_path / "idx", model=str(retriever_checkpoint), device="cpu",
                      answer_model=str(generator_checkpoints["idefics3"]))
    shots = Path(os.environ["DOCQA_SCREENSHOTS"]) if os.environ.get("DOCQA_SCREENSHOTS") else None
    try:
        with running_server(create_app(service)) as base, sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(base)
            page.wait_for_selector("text=No documents yet")

            # upload, and see it ingested (progress row reaches "done", the documents list shows it)
            page.set_input_files("#upload-input", str(pdf))
            page.wait_for_selector("#uploads li .state:text('done')")
            page.wait_for_selector("#documents li:has-text('quarterly-report.pdf')")
            assert "2 pages" in page.inner_text("#documents")
            assert "1 documents, 2 pages" in page.inner_text("#index-info")

            # search by keyboard: thumbnails with file, page and score
            page.focus("#search-input")
            page.keyboard.type("quarterly revenue")
            page.keyboard.press("Enter")
            page.wait_for_selector("#results .card")
            cards = page.locator("#results .card")
            assert cards.count() == 2
            _loaded(page, "#results .card img")
            assert "quarterly-report.pdf" in cards.first.inner_text() and "score" in cards.first.inner_text()

            # toggle the heatmap on the first result
            toggle = cards.first.locator(".heat-toggle")
            toggle.focus()
            page.keyboard.press("Enter")
            assert toggle.get_attribute("aria-pressed") == "true"
            assert "/heatmap?q=quarterly%20revenue" in cards.first.locator("img").get_attribute("src")
            _loaded(page, "#results .card img")
            if shots:
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / "search-desktop.png"), full_page=True)

            # ask: count how often the answer text changes while it streams
            page.evaluate("""() => { window.answerUpdates = 0;
                new MutationObserver(() => window.answerUpdates++).observe(
                    document.getElementById('answer'), {childList: true, characterData: true, subtree: true}); }""")
            page.fill("#ask-input", "What do the quarterly figures show?")
            page.click("#ask-button")
            page.wait_for_selector("#citations .card", timeout=120_000)
            page.wait_for_selector("#ask-status:has-text('Answered')")
            answer = page.inner_text("#answer")
            assert answer.strip(), "the answer stayed empty"
            assert page.evaluate("window.answerUpdates") > 1, "the answer arrived in one piece, not streamed"
            citations = page.locator("#citations .card")
            assert citations.count() >= 1 and "quarterly-report.pdf" in citations.first.inner_text()
            _loaded(page, "#citations .card img")
            boxes = page.locator("#citations .card .box").count()
            # clicking a citation opens it large, with its box
            citations.first.locator(".thumb").click()
            page.wait_for_selector("#viewer[open]")
            _loaded(page, "#viewer-image")
            assert page.locator("#viewer-box").is_hidden() == (boxes == 0 or
                                                               citations.first.locator(".box").count() == 0)
            if shots:
                page.screenshot(path=str(shots / "ask-viewer-desktop.png"))
            page.keyboard.press("Escape")
            if shots:
                page.screenshot(path=str(shots / "ask-desktop.png"), full_page=True)
                page.set_viewport_size({"width": 390, "height": 844})
                page.screenshot(path=str(shots / "phone.png"), full_page=True)
            # phone width: nothing wider than the window
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            browser.close()
    finally:
        service.close()
