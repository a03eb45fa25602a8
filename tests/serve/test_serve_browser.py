"""The web page end to end in headless Chromium (Debian's `chromium`, driven by Playwright through
`executable_path`; Playwright's own browser download is not used), against a real uvicorn on
127.0.0.1: log in through the one-time login URL, upload a PDF, see it ingested, search by keyboard,
see thumbnails, toggle a heatmap, ask and see the answer stream in with its citations. Then attacker
pages, one on a name Chromium's --host-resolver-rules maps to 127.0.0.1 and one on another port of
127.0.0.1, try to read and change things in the logged-in browser: they can do neither.
Screenshots (desktop and phone width) go to $DOCQA_SCREENSHOTS when set.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright (pip install playwright)"
)

from helpers.documents import make_pdf  # noqa: E402
from helpers.serving import TOKEN, make_auth, running_server  # noqa: E402

from docqa.serve import create_app  # noqa: E402
from docqa.serve.service import Service  # noqa: E402


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
        arg=selector,
        timeout=60_000,
    )


def test_upload_search_heatmap_and_ask_in_a_browser(tmp_path, retriever_checkpoint, generator_checkpoints):
    pdf = make_pdf(tmp_path / "in" / "quarterly-report.pdf", 2, title="quarterly")
    service = Service(
        tmp_path / "idx",
        model=str(retriever_checkpoint),
        device="cpu",
        answer_model=str(generator_checkpoints["idefics3"]),
    )
    shots = Path(os.environ["DOCQA_SCREENSHOTS"]) if os.environ.get("DOCQA_SCREENSHOTS") else None
    try:
        auth = make_auth()
        with running_server(create_app(service, auth)) as base, sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(base)
            assert "needs a login" in page.inner_text("body")
            page.goto(f"{base}/login?code={auth.login_code()}")
            assert page.url == base + "/"
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
            assert page.locator("#viewer-box").is_hidden() == (
                boxes == 0 or citations.first.locator(".box").count() == 0
            )
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


def test_filters_settings_open_download_status_and_new_documents_in_a_browser(
    tmp_path, retriever_checkpoint, generator_checkpoints
):
    import httpx

    from docqa.api import DocIndex

    report = make_pdf(tmp_path / "docs" / "red" / "report.pdf", 3, title="report")
    make_pdf(tmp_path / "docs" / "blue" / "memo.pdf", 1, title="memo")
    index = DocIndex.open(tmp_path / "idx", create=True)
    for team in ("red", "blue"):
        index.ingest([tmp_path / "docs" / team], model=str(retriever_checkpoint), device="cpu", tags={"team": team})
    index.close()
    service = Service(tmp_path / "idx", device="cpu", answer_model=str(generator_checkpoints["idefics3"]))
    shots = Path(os.environ["DOCQA_SCREENSHOTS"]) if os.environ.get("DOCQA_SCREENSHOTS") else None
    try:
        auth = make_auth()
        with running_server(create_app(service, auth)) as base, sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = browser.new_context(accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/login?code={auth.login_code()}")
            page.wait_for_selector("#documents li[data-status='indexed']:has-text('memo.pdf')")
            page.evaluate("window.loadedOnce = 'yes'")  # a reload would drop this

            def search(tags: str = "", path: str = "") -> list[str]:
                page.fill("#search-tags", tags)
                page.fill("#search-path", path)
                with page.expect_response(lambda r: "/api/search?" in r.url):
                    page.click("#search-form button[type=submit]")
                page.wait_for_selector("#search-status:has-text('pages in'), #search-status:has-text('No pages')")
                return [n.split("\n")[0] for n in page.locator("#results .card .meta").all_inner_texts()]

            # filters narrow the results (the options are folded away until opened)
            page.fill("#search-input", "report")
            page.select_option("#search-k", "10")
            assert page.locator("#search-tags").is_hidden()
            page.click("#search-form summary")
            assert set(search()) == {"report.pdf", "memo.pdf"}
            assert set(search(tags="team=blue")) == {"memo.pdf"}
            assert set(search(path="*/red/*")) == {"report.pdf"}
            assert search(tags="team=blue", path="*/red/*") == []
            page.fill("#search-tags", "novalue")
            page.click("#search-form button[type=submit]")
            page.wait_for_selector("#search-status.error:has-text('KEY=VALUE')")

            # a card's links: open the file at its page (Chromium's PDF viewer), download the original
            search(path="*/red/*")
            card = page.locator("#results .card").first
            document_id = service.documents()[[d["name"] for d in service.documents()].index("report.pdf")]["id"]
            number = int(card.locator(".meta .score").inner_text().split()[1])
            opener = card.locator("a.open")
            assert opener.get_attribute("href") == f"/api/documents/{document_id}/file#page={number}"
            assert opener.get_attribute("target") == "_blank" and "noopener" in opener.get_attribute("rel")
            with context.expect_page() as opened:
                opener.click()
            viewer = opened.value
            viewer.wait_for_load_state()
            assert viewer.url == f"{base}/api/documents/{document_id}/file#page={number}"
            for _ in range(100):  # the PDF viewer is a frame of its own once the PDF has loaded
                if any(frame.url.startswith("chrome-extension://") for frame in viewer.frames):
                    break
                viewer.wait_for_timeout(100)
            assert any(frame.url.startswith("chrome-extension://") for frame in viewer.frames), viewer.frames
            viewer.close()
            card.locator(".thumb").click()  # the page seen large links to the file too
            page.wait_for_selector("#viewer[open]")
            assert page.locator("#viewer-links a.open").get_attribute("href") == opener.get_attribute("href")
            page.keyboard.press("Escape")
            with page.expect_download() as downloading:
                card.locator("a.download").click()
            download = downloading.value
            assert download.suggested_filename == "report.pdf"
            assert Path(download.path()).read_bytes() == report.read_bytes()

            # ask: the filters, k and pages per answer reach the request (and the answer reads that many)
            page.click("#ask-form summary")
            page.fill("#ask-input", "What does the report say?")
            page.fill("#ask-tags", "team=red")
            page.fill("#ask-k", "2")
            page.fill("#ask-pages", "1")
            with page.expect_request(lambda r: r.url.endswith("/api/ask")) as asked:
                page.click("#ask-button")
            assert asked.value.post_data_json == {
                "question": "What does the report say?",
                "k": 2,
                "max_pages": 1,
                "where": {"team": "red"},
            }
            page.wait_for_selector("#ask-status:has-text('Answered')", timeout=120_000)
            citations = page.locator("#citations .card")
            assert citations.count() == 1 and "report.pdf" in citations.first.inner_text()
            assert citations.first.locator("a.open").get_attribute("href").startswith(f"/api/documents/{document_id}/")

            # the documents list: each document's status and links; a failed upload with its reason
            row = page.locator(f"#documents li[data-document-id='{document_id}']")
            assert "indexed" in row.inner_text() and "3 pages" in row.inner_text()
            assert row.locator("a.open").get_attribute("href") == f"/api/documents/{document_id}/file"
            broken = tmp_path / "in" / "broken.pdf"
            broken.parent.mkdir(parents=True, exist_ok=True)
            broken.write_bytes(b"%PDF-1.4\n" + b"not really a pdf\n" * 40)
            page.set_input_files("#upload-input", str(broken))
            failed = page.locator("#documents li[data-status='failed']:has-text('broken.pdf')")
            failed.wait_for()
            assert "failed:" in failed.inner_text()
            if shots:
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / "files-desktop.png"), full_page=True)
            failed.locator("button:has-text('Dismiss')").click()
            failed.wait_for(state="detached")

            # a document added behind the page's back (a script, another tab, a folder watcher) appears
            late = make_pdf(tmp_path / "in" / "late.pdf", 2, title="late")
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as api:
                accepted = api.post("/api/uploads", files={"file": ("late.pdf", late.read_bytes(), "application/pdf")})
                assert accepted.status_code == 202
            page.wait_for_selector("#documents li[data-status='indexed']:has-text('late.pdf')", timeout=60_000)
            page.wait_for_selector("#index-info:has-text('3 documents, 6 pages')")
            assert page.evaluate("window.loadedOnce") == "yes"
            # phone width: the folded-out options still fit
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            if shots:
                page.screenshot(path=str(shots / "files-phone.png"), full_page=True)
            browser.close()
    finally:
        service.close()


ATTACKER_PAGE = """<!doctype html><meta charset="utf-8"><title>attacker</title><body><script>
window.results = {};
const target = "TARGET";
async function attempt(name, run) {
  try { window.results[name] = await run(); } catch (error) { window.results[name] = "blocked: " + error; }
}
(async () => {
  await attempt("read_documents", async () => (await fetch(target + "/api/documents", {credentials: "include"})).text());
  await attempt("read_documents_no_cors", async () => {
    const r = await fetch(target + "/api/documents", {mode: "no-cors", credentials: "include"});
    return "opaque " + r.type + " " + (await r.text()).length; });
  await attempt("upload", async () => {
    const form = new FormData();
    form.append("file", new Blob(["%PDF-1.4 evil"], {type: "application/pdf"}), "evil.pdf");
    const r = await fetch(target + "/api/uploads", {method: "POST", mode: "no-cors", credentials: "include", body: form});
    return "sent " + r.type; });
  await attempt("delete", async () => {
    const r = await fetch(target + "/api/documents/1", {method: "DELETE", credentials: "include"});
    return r.status; });
  await attempt("image", () => new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve("loaded " + img.naturalWidth);
    img.onerror = () => resolve("error");
    img.src = target + "/api/pages/1/image?edge=2048";
  }));
  window.done = true;
})();
</script>"""


def _attacker_server(html: str):
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_attacker_pages_can_neither_read_nor_change_anything(tmp_path, retriever_checkpoint):
    pdf = make_pdf(tmp_path / "in" / "private.pdf", 1, title="private")
    service = Service(tmp_path / "idx", model=str(retriever_checkpoint), device="cpu")
    try:
        auth = make_auth()
        with running_server(create_app(service, auth)) as base, sync_api.sync_playwright() as playwright:
            import httpx

            port = int(base.rsplit(":", 1)[1])
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as api:
                job = api.post("/api/uploads", files={"file": ("private.pdf", pdf.read_bytes(), "application/pdf")})
                for _ in range(600):
                    if api.get(f"/api/jobs/{job.json()['id']}").json()["state"] == "done":
                        break
                    threading.Event().wait(0.2)
                before = api.get("/api/documents").json()["documents"]
                assert [d["name"] for d in before] == ["private.pdf"]
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--host-resolver-rules=MAP evil.test 127.0.0.1"]
            )
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/login?code={auth.login_code()}")  # the owner is logged in, in this browser
            page.wait_for_selector("#documents li:has-text('private.pdf')")
            results = {}
            for name, target in [
                ("other_port", f"http://127.0.0.1:{port}"),  # same site, cookie is sent
                ("rebinding", f"http://evil.test:{port}"),
            ]:  # a name resolving to 127.0.0.1
                attacker = _attacker_server(ATTACKER_PAGE.replace("TARGET", target))
                try:
                    host = "127.0.0.1" if name == "other_port" else "evil.test"
                    evil = context.new_page()
                    evil.goto(f"http://{host}:{attacker.server_address[1]}/")
                    evil.wait_for_function("window.done === true", timeout=60_000)
                    results[name] = evil.evaluate("window.results")
                    evil.close()
                finally:
                    attacker.shutdown()
            # a page served from the rebinding name on docqa's own port gets nothing
            rebound = context.new_page()
            response = rebound.goto(f"http://evil.test:{port}/api/documents")
            assert response.status == 421 and "private" not in rebound.content()
            browser.close()
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as api:
                assert api.get("/api/documents").json()["documents"] == before
                assert [j["id"] for j in api.get("/api/jobs").json()["jobs"]] == [job.json()["id"]]
        print("\nattacker results:", json.dumps(results))
        for name, found in results.items():
            text = json.dumps(found)
            assert "private.pdf" not in text, (name, found)  # nothing read
            assert found["image"] == "error", (name, found)  # no render for another page
            assert found["delete"] in ("blocked: TypeError: Failed to fetch", 403, 401, 421), (name, found)
        assert service._images == {}
        uploads = [p.name for p in service.uploads.rglob("*") if p.is_file()]
        assert uploads == ["private.pdf"]  # the attackers' uploads were not stored
    finally:
        service.close()
