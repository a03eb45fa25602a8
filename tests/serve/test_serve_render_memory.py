"""Renders bounded in memory: eight concurrent large renders of one 9,400 x 9,400 PNG (under the pixel
limit, a few hundred KB on disk) may raise the server's resident memory by at most 1 GB. Each is
answered, or told to come back (503 + Retry-After); none is left hanging. Real uvicorn, loopback.
Run it with `python3 -m pytest -q -s -m slow tests/serve/test_serve_render_memory.py`."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')
httpx = pytest.importorskip("httpx")

from helpers.serving import bearer, build_corpus_index, make_auth, running_server  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from docqa.api import DocIndex  # noqa: E402
from docqa.serve import create_app  # noqa: E402
from docqa.serve.service import Service  # noqa: E402
from docqa.serve.slots import Limits  # noqa: E402

EDGE = 9400
GB = 1024**3


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _big_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (EDGE, EDGE), "white")
    draw = ImageDraw.Draw(image)
    for step in range(0, EDGE, 400):
        draw.line([(step, 0), (EDGE - step, EDGE)], fill="black", width=9)
    image.save(path, format="PNG", compress_level=1)
    del draw, image
    return path


@pytest.mark.slow  # about 100 s on two loaded cores, and it holds up to 1 GB of a shared machine
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_eight_big_renders_raise_rss_by_at_most_1gb(tmp_path, retriever_checkpoints):
    template = build_corpus_index(tmp_path / "corpus", retriever_checkpoints["colmodernvbert"])
    png = _big_png(tmp_path / "docs" / "huge.png")
    shutil.copytree(template, tmp_path / "idx")
    index = DocIndex.open(tmp_path / "idx")
    index.ingest([png], device="cpu")
    index.close()
    service = Service(tmp_path / "idx", device="cpu", limits=Limits(wait_s=90))
    try:
        page_id = next(h.page_id for h in service.search("huge", 5) if h.path.endswith("huge.png"))
        with running_server(create_app(service, make_auth())) as base:
            with httpx.Client(base_url=base, headers=bearer(), timeout=300) as http:
                assert http.get("/api/info").status_code == 200
            time.sleep(0.5)
            baseline = _rss()
            peak = [baseline]
            done = threading.Event()

            def sample() -> None:
                for _ in range(100_000):  # bounded; ends when the renders do
                    peak[0] = max(peak[0], _rss())
                    if done.wait(0.02):
                        return

            statuses: list[tuple[int, str | None]] = []

            def render(edge: int) -> None:
                with httpx.Client(base_url=base, headers=bearer(), timeout=300) as http:
                    response = http.get(f"/api/pages/{page_id}/image", params={"edge": edge})
                    statuses.append((response.status_code, response.headers.get("retry-after")))

            sampler = threading.Thread(target=sample)
            sampler.start()
            threads = [threading.Thread(target=render, args=(2048 - n,)) for n in range(8)]  # distinct: no cache
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=600)
            done.set()
            sampler.join()
    finally:
        service.close()
    assert len(statuses) == 8
    assert all(code == 200 or (code == 503 and retry) for code, retry in statuses), statuses
    assert any(code == 200 for code, _ in statuses)
    rise = peak[0] - baseline
    print(
        f"\nrender memory: 8 renders of a {EDGE}x{EDGE} PNG, statuses {sorted(c for c, _ in statuses)}, "
        f"RSS rise {rise / GB:.2f} GB"
    )
    assert rise <= 1 * GB, f"RSS rose by {rise / GB:.2f} GB"
