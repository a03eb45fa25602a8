"""`docqa mcp` through the SDK's own client: over stdio (a real `docqa mcp` process) and over
streamable HTTP (the app behind `docqa serve`'s token and Host checks, in uvicorn configured as
`docqa mcp` runs it, on a loopback port)."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image

pytest.importorskip("mcp.server.mcpserver")

from helpers.paths import REPO
from helpers.serving import TOKEN, corpus_index_fixture, free_port, running_server  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from docqa.answer.ask import load_page  # noqa: E402
from docqa.serve.mcp import DEFAULT_EDGE, PageLibrary, build_server, http_app  # noqa: E402
from docqa.serve.security import Auth  # noqa: E402
from docqa.serve.slots import Limits  # noqa: E402

TOOLS = {"search", "ask", "get_page", "list_documents"}


corpus = corpus_index_fixture("corpus")


def _texts(result) -> list[str]:
    return [block.text for block in result.content if block.type == "text"]


def _images(result) -> list[Image.Image]:
    out = []
    for block in result.content:
        if block.type == "image":
            assert block.mime_type == "image/png"
            data = base64.b64decode(block.data)
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            out.append(Image.open(io.BytesIO(data)).convert("RGB"))
    return out


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.convert("RGB").tobytes()


async def _exercise(client, corpus: Path) -> None:
    """What both transports must show: schemas, search images of the right page, get_page, ask, errors."""
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    search_schema = tools["search"].input_schema
    assert search_schema["required"] == ["query"]
    assert {"query", "k", "where", "path", "heatmap"} <= set(search_schema["properties"])
    assert search_schema["properties"]["k"]["maximum"] == 50
    assert tools["get_page"].input_schema["required"] == ["document"]
    assert tools["ask"].input_schema["required"] == ["question"]

    found = await client.call_tool("search", {"query": "report page 2", "k": 3})
    assert not found.is_error, _texts(found)
    listing = json.loads(_texts(found)[0])
    hits = listing["hits"]
    assert len(hits) == 3 and [hit["rank"] for hit in hits] == [1, 2, 3]
    images = _images(found)
    assert len(images) == 3
    docs = corpus.parent / "docs"
    for hit, image in zip(hits, images):  # each image is the page the hit names, as rendered from its file
        assert _same_pixels(image, load_page(Path(hit["file"]), hit["page"], DEFAULT_EDGE)), hit
        assert Path(hit["file"]).parent == docs
    assert {(Path(h["file"]).name, h["page"]) for h in hits} == {("report.pdf", 1), ("report.pdf", 2), ("scan.png", 1)}

    filtered = await client.call_tool(
        "search", {"query": "scan", "k": 5, "path": "*.png", "images": False, "heatmap": True}
    )
    assert not filtered.is_error, _texts(filtered)
    only = json.loads(_texts(filtered)[0])["hits"]
    assert [Path(h["file"]).name for h in only] == ["scan.png"] and len(only[0]["box"]) == 4
    assert _images(filtered) == []

    page = await client.call_tool("get_page", {"document": "report.pdf", "page": 2})
    assert not page.is_error, _texts(page)
    assert json.loads(_texts(page)[0])["page"] == 2
    assert _same_pixels(_images(page)[0], load_page(docs / "report.pdf", 2, DEFAULT_EDGE))

    documents = json.loads(_texts(await client.call_tool("list_documents", {}))[0])["documents"]
    assert sorted((d["name"], d["pages"]) for d in documents) == [("report.pdf", 2), ("scan.png", 1)]

    resource = await client.read_resource(hits[0]["resource"])
    blob = base64.b64decode(resource.contents[0].blob)
    assert _same_pixels(
        Image.open(io.BytesIO(blob)).convert("RGB"), load_page(Path(hits[0]["file"]), hits[0]["page"], DEFAULT_EDGE)
    )

    answer = await client.call_tool(
        "ask", {"question": "what is on the report?", "k": 2, "max_pages": 2, "max_new_tokens": 8}
    )
    assert not answer.is_error, _texts(answer)
    payload = json.loads(_texts(answer)[0])
    assert isinstance(payload["answer"], str) and len(payload["citations"]) == 2
    for citation in payload["citations"]:
        assert {"path", "page", "score", "cited", "box"} <= set(citation)
        assert citation["box"] is None or (len(citation["box"]) == 4 and all(0 <= v <= 1 for v in citation["box"]))

    # bad arguments: tool errors with a message, never a crash; the server still answers afterwards
    bad_calls = [
        ("search", {}),  # query missing
        ("search", {"query": ""}),
        ("search", {"query": "x", "k": 0}),
        ("search", {"query": "x", "k": 10_000}),
        ("search", {"query": "x", "k": "many"}),
        ("search", {"query": "x" * 5000}),
        ("search", {"query": "x", "where": {'bad"key': "v"}}),
        ("search", {"query": "x", "where": "not a dict"}),
        ("get_page", {"document": "nope.pdf"}),
        ("get_page", {"document": "report.pdf", "page": 9}),
        ("get_page", {"document": "report.pdf", "page": -1}),
        ("get_page", {"document": "report.pdf", "edge": 10**9}),
        ("ask", {"question": "   "}),
        ("ask", {"question": "q", "max_pages": 99}),
    ]
    for name, arguments in bad_calls:
        result = await client.call_tool(name, arguments)
        assert result.is_error, (name, arguments, _texts(result))
        assert _texts(result) and _texts(result)[0].strip(), (name, arguments)
    assert not (await client.call_tool("list_documents", {})).is_error


def _env() -> dict[str, str]:
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_stdio_client_lists_and_calls_every_tool(corpus, generator_checkpoints):
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "docqa",
            "mcp",
            "--index",
            str(corpus),
            "--device",
            "cpu",
            "--answer-model",
            str(generator_checkpoints["idefics3"]),
        ],
        env=_env(),
        cwd=str(corpus.parent),
    )

    async def main() -> None:
        async with Client(params, read_timeout_seconds=240) as client:
            await _exercise(client, corpus)

    anyio.run(main)


def test_streamable_http_client_with_token_and_host_check(corpus, generator_checkpoints):
    import httpx2

    library = PageLibrary(corpus, device="cpu", answer_model=str(generator_checkpoints["idefics3"]))
    auth = Auth(token=TOKEN)
    app = http_app(build_server(library), auth)

    async def main(url: str, port: int) -> None:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=240) as http:
            async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=240) as client:
                await _exercise(client, corpus)
        # hostile requests, straight over HTTP: no token, a wrong one, a foreign Host (DNS rebinding)
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=30) as plain:
            assert (await plain.post(url, json=body, headers=headers)).status_code == 401
            wrong = {**headers, "Authorization": "Bearer nope"}
            assert (await plain.post(url, json=body, headers=wrong)).status_code == 401
            prefix = {**headers, "Authorization": f"Bearer {TOKEN[:-1]}"}
            assert (await plain.post(url, json=body, headers=prefix)).status_code == 401
            # a signed session cookie, valid for `docqa serve`'s page, is no key here: programs only
            session = {**headers, "Cookie": f"docqa_session_{port}={auth.new_session()}"}
            assert (await plain.post(url, json=body, headers=session)).status_code == 401
            rebound = {**headers, "Authorization": f"Bearer {TOKEN}", "Host": f"evil.example:{port}"}
            assert (await plain.post(url, json=body, headers=rebound)).status_code == 421
            other_port = {**headers, "Authorization": f"Bearer {TOKEN}", "Host": f"127.0.0.1:{port + 1}"}
            assert (await plain.post(url, json=body, headers=other_port)).status_code == 421
            origin = {**headers, "Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}
            assert (await plain.post(url, json=body, headers=origin)).status_code == 403
            huge = {**headers, "Authorization": f"Bearer {TOKEN}"}
            big = await plain.post(url, content=b"{" + b" " * (2 * 1024 * 1024) + b"}", headers=huge)
            assert big.status_code == 413

    try:
        with running_server(app, lifespan="on") as base:
            anyio.run(main, f"{base}/mcp", int(base.rsplit(":", 1)[1]))
    finally:
        library.close()


def test_a_call_past_the_servers_limits_is_a_tool_error_not_a_wait(corpus):
    library = PageLibrary(corpus, device="cpu", limits=Limits(searches_in_flight=1))
    held = library.slots.searches.reserve()  # another caller's search holds the only place
    held.wait()

    async def main() -> None:
        async with Client(build_server(library)) as client:
            busy = await client.call_tool("search", {"query": "report", "images": False})
            assert busy.is_error and "too many searches" in _texts(busy)[0], _texts(busy)
            held.release()
            found = await client.call_tool("search", {"query": "report", "images": False})
            assert not found.is_error and json.loads(_texts(found)[0])["hits"], _texts(found)

    try:
        anyio.run(main)
    finally:
        held.release()
        library.close()


def test_http_transport_refuses_other_hosts_and_no_token(corpus, capsys):
    from docqa.cli import main

    assert main(["mcp", "--index", str(corpus), "--transport", "http", "--host", "0.0.0.0", "--token", TOKEN]) == 2
    assert "loopback only" in capsys.readouterr().err
    assert main(["mcp", "--index", str(corpus), "--transport", "http", "--token", "short"]) == 2
    assert "at least 16" in capsys.readouterr().err  # refused as `docqa serve` refuses it
    env_token = os.environ.pop("DOCQA_TOKEN", None)
    try:
        assert main(["mcp", "--index", str(corpus), "--transport", "http"]) == 2
    finally:
        if env_token is not None:
            os.environ["DOCQA_TOKEN"] = env_token


def test_missing_index_is_a_clean_error(tmp_path, capsys):
    from docqa.cli import main

    assert main(["mcp", "--index", str(tmp_path / "none")]) == 2
    assert "no index at" in capsys.readouterr().err


def test_http_token_file_refusals_are_one_line(corpus, tmp_path, capsys):
    from docqa.cli import main

    (tmp_path / "short").write_text("abc\n")
    for bad, reason in ((tmp_path / "short", "at least 16"), (tmp_path / "missing", "cannot read")):
        assert main(["mcp", "--index", str(corpus), "--transport", "http", "--token-file", str(bad)]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and str(bad) in error and reason in error, error


def test_http_transport_takes_a_token_file_and_allow_host_as_serve_does(corpus, tmp_path):
    """A real `docqa mcp --transport http` process: the token read from --token-file, a Host named
    with --allow-host answered, any other refused (as `docqa serve` does with the same flags)."""
    import subprocess
    import time

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    env = {key: value for key, value in _env().items() if key != "DOCQA_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "docqa", "mcp", "--index", str(corpus), "--transport", "http", "--device", "cpu"]
        + ["--port", str(port), "--token-file", str(token_file), "--allow-host", "docs.example"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    bearer = {**accept, "Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "docqa mcp did not start listening"
                time.sleep(0.25)
        with httpx.Client(timeout=30) as http:
            named = http.post(url, json=initialize, headers={**bearer, "Host": f"docs.example:{port}"})
            assert named.status_code == 200, named.text
            assert (
                http.post(url, json=initialize, headers={**bearer, "Host": f"evil.example:{port}"}).status_code == 421
            )
            assert (
                http.post(url, json=initialize, headers={**accept, "Host": f"docs.example:{port}"}).status_code == 401
            )
            assert http.post(url, json=initialize, headers=bearer).status_code == 200  # loopback names always
    finally:
        process.terminate()
        process.wait(timeout=30)
