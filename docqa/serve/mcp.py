"""`docqa mcp`: the index as Model Context Protocol tools for LLM agents (the official `mcp` SDK).

Tools: ``search`` (hits with file, page and score, each page as an image, optionally with the
query's heatmap drawn over it), ``ask`` (an answer with its citations and their boxes),
``get_page`` (one page as an image) and ``list_documents``; every indexed page is also the resource
``docqa://page/{page_id}`` (a PNG). Bad arguments and docqa's own errors come back as tool errors.

Transports: stdio (the agent starts ``docqa mcp``) and streamable HTTP, which binds loopback only
and lets in only what `docqa serve` would let in from an API client (``security.Auth``: the Bearer
token on every request, a Host that names this server; here no browser session, and no other
site's Origin), on the same socket limits (``transport.server_config``).

Everything goes through the library (DocIndex, Asker, grounding). What one call may ask for, and
how many searches, renders, heatmaps and answers run or wait at once, are `docqa serve`'s
``slots.Limits`` and ``slots.Slots``: a call past them is a tool error saying to try again later.
"""

import base64
import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from ..errors import DocQAError, MissingDependencyError, QueryError
from ..inputs.render import png_bytes
from .slots import Limits, Slots

if TYPE_CHECKING:
    from PIL import Image

    from ..api import Hit
    from ..models.generator import Generator
    from .security import ApiGate, Auth

INSTALL_HINT = 'the MCP server needs the mcp extra: pip install "docqa[mcp]"'
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_EDGE = 768  # page images in results: readable, and small enough for an agent's context
PAGE_URI = "docqa://page/{page_id}"


def require_mcp() -> None:
    """A one-line MissingDependencyError naming the install command when the SDK is missing."""
    try:
        import mcp  # noqa: F401
        from mcp.server.mcpserver import MCPServer  # noqa: F401  (the 2.x API)
    except ImportError as error:
        raise MissingDependencyError(f"{INSTALL_HINT} ({error.name or 'mcp'} 2.x is missing)") from error


class PageLibrary:
    """What the tools read: one index handle, its retriever and an answer model loaded on first use,
    within ``limits`` (searches, renders, heatmaps and answers take turns in ``slots``)."""

    def __init__(
        self,
        index: str | Path | None,
        *,
        device: str | None = None,
        answer_model: str | None = None,
        engine: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        from ..api import DocIndex

        self.index = DocIndex.open(index)
        self.device = device
        self.answer_model = answer_model
        self.engine = engine  # the answer model's; the retriever runs on the index's engine
        self.limits = limits or Limits()
        self.slots = Slots(self.limits)  # answers one at a time: the answer model is loaded once
        self._read = threading.Lock()  # the index handle and the retriever: one caller at a time
        self._generator: Generator | None = None

    # --- models ------------------------------------------------------------------------------
    def retriever(self):
        with self._read:
            return self._retriever()

    def _retriever(self):
        return self.index.retriever(device=self.device)  # the index's own engine

    def generator(self) -> "Generator":
        if self._generator is None:
            from ..models.checkpoints import check_device
            from ..models.generator import Generator, default_answer_model

            device = check_device(self.device)
            self._generator = Generator.load(
                self.answer_model or default_answer_model(device), device=device, engine=self.engine
            )
        return self._generator

    # --- reading -----------------------------------------------------------------------------
    def search(self, query: str, k: int, where: dict[str, str] | None, path: str | None) -> "list[Hit]":
        with self.slots.searches.take(), self._read:
            return self.index.search(query, k=k, device=self.device, where=where, path=path)

    def page_image(self, hit: "Hit", edge: int) -> "Image.Image":
        """The page re-rendered from its source (refused when the file changed since indexing)."""
        return self.slots.render(hit, edge)

    def heatmap(self, query: str, hit: "Hit") -> "tuple[Image.Image, dict]":
        """The page with where ``query`` matches drawn over it, and the strongest region's box."""
        from ..answer.grounding import ground

        with self.slots.heatmaps.take():
            retriever = self.retriever()
            image = self.page_image(hit, retriever.stamp.image_edge)
            with self._read:
                grounding = ground(retriever, query, image)
        return grounding.overlay(), grounding.to_json()

    def page_by_id(self, page_id: int) -> "Hit":
        with self._read:
            hit = self.index.page(page_id)
        if hit is None:
            raise QueryError(f"no page with id {page_id} in {self.index.path}")
        return hit

    def find_page(self, document: str, page: int) -> "Hit":
        """Page ``page`` (1-based) of the document whose path, file name or id is ``document``."""
        records = self.documents_matching(document)
        if not records:
            raise QueryError(f"no document {document!r} in {self.index.path}; list_documents shows what is there")
        if len(records) > 1:
            names = ", ".join(record.path for record in records[:5])
            raise QueryError(f"{document!r} names {len(records)} documents ({names}); give its full path or id")
        record = records[0]
        if not 1 <= page <= record.pages:
            raise QueryError(f"{record.path} has pages 1 to {record.pages}, not {page}")
        with self._read:
            page_id = self.index.page_records(record.id)[page - 1].id
        return self.page_by_id(page_id)

    def documents_matching(self, document: str) -> list:
        records = self.documents()
        if document.isdigit():
            return [record for record in records if record.id == int(document)]
        exact = [record for record in records if record.path == document or str(record.file) == document]
        return exact or [record for record in records if Path(record.path).name == document]

    def documents(self) -> list:
        with self._read:
            return self.index.documents()

    def also_at(self) -> dict[int, list[str]]:
        """The other paths (aliases) of every document that has some, by document id."""
        with self._read:
            found = self.index.aliases_by_document()
        return {document_id: [alias.path for alias in aliases] for document_id, aliases in found.items()}

    # --- asking ------------------------------------------------------------------------------
    def ask(
        self, question: str, k: int, max_pages: int, max_new_tokens: int, where: dict[str, str] | None, path: str | None
    ) -> "tuple[dict, list[Image.Image]]":
        """The answer, its citations with boxes (fractions of the page), and the pages shown."""
        from ..answer.ask import Asker
        from ..answer.grounding import boxed_citations

        with self.slots.asks.take():
            generator = self.generator()
            with self._read:
                asker = Asker(
                    generator,
                    self.index,
                    k=k,
                    max_pages=max_pages,
                    max_new_tokens=max_new_tokens,
                    where=where,
                    path=path,
                )
                stream = asker.ask(question)
            result = stream.run()
        citations = []
        with self._read:
            for page, citation, box in boxed_citations(self._retriever(), question, result.answer, stream.pages):
                citations.append(
                    {
                        "path": citation.path,
                        "page": citation.page,
                        "score": citation.score,
                        "cited": citation.cited,
                        "box": box,
                        "page_id": page.page_id,
                        "resource": PAGE_URI.format(page_id=page.page_id),
                        "also_at": list(page.also_at),
                    }
                )
        payload = {
            "question": question,
            "answer": result.answer.text,
            "citations": citations,
            "answer_model": result.answer.model,
            "notes": [*asker.notes, *result.notes],
        }
        return payload, [page.image for page in stream.pages]

    def close(self) -> None:
        self.index.close()


def build_server(library: PageLibrary):
    """The MCP server over ``library``: four tools and the page resource template, their arguments
    bounded by ``library.limits``."""
    require_mcp()
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ImageContent, TextContent
    from pydantic import Field

    server = MCPServer(
        "docqa",
        instructions="Search and read the user's indexed documents (PDFs and page images). search returns "
        "the best pages as images with file, page and score; ask answers from them with citations; get_page "
        "shows any page; list_documents says what is indexed.",
    )

    def image(data: bytes) -> ImageContent:
        return ImageContent(type="image", data=base64.b64encode(data).decode("ascii"), mime_type="image/png")

    def text(payload: Any) -> TextContent:
        return TextContent(type="text", text=json.dumps(payload, ensure_ascii=False))

    def guarded(call):
        """docqa's own errors become tool errors the agent can read (the SDK turns these into is_error)."""
        try:
            return call()
        except DocQAError as error:
            raise ToolError(str(error)) from error

    limits = library.limits
    Query = Annotated[str, Field(min_length=1, max_length=limits.max_query_chars, description="what to look for")]
    K = Annotated[int, Field(ge=1, le=limits.max_k, description=f"how many pages (1 to {limits.max_k})")]
    Where = Annotated[dict[str, str] | None, Field(description="only documents with all these tags (ingest --tag)")]
    Glob = Annotated[
        str | None,
        Field(
            max_length=1000,
            description="only documents whose path matches this glob (* matches across folders, e.g. '*/2024/*.pdf')",
        ),
    ]
    Edge = Annotated[int, Field(ge=64, le=limits.max_image_edge, description="longest edge of the page images, px")]

    def hit_json(hit: "Hit") -> dict:
        return {
            "rank": hit.rank,
            "file": hit.path,
            "page": hit.page,
            "score": round(hit.score, 4),
            "document_id": hit.document_id,
            "page_id": hit.page_id,
            "resource": PAGE_URI.format(page_id=hit.page_id),
            "also_at": list(hit.also_at),
        }

    @server.tool(
        structured_output=False,
        description="Find the pages that best match a query (late-interaction "
        "retrieval over page images, no OCR). Returns one JSON text block listing the hits (file, page, "
        "score, page_id), then each page as a PNG image in rank order; heatmap=true draws where the "
        "query matches and adds the strongest region's box.",
    )
    def search(
        query: Query,
        k: K = 5,
        where: Where = None,
        path: Glob = None,
        heatmap: bool = False,
        images: bool = True,
        edge: Edge = DEFAULT_EDGE,
    ) -> list[TextContent | ImageContent]:
        def run() -> list[TextContent | ImageContent]:
            hits = library.search(query, k, where, path)
            listed, pictures = [], []
            for hit in hits:
                entry = hit_json(hit)
                if heatmap:
                    overlay, box = library.heatmap(query, hit)
                    entry["box"] = box["box_fraction"]
                    if images:
                        overlay.thumbnail((edge, edge))
                        pictures.append(image(png_bytes(overlay)))
                elif images:
                    pictures.append(image(png_bytes(library.page_image(hit, edge))))
                listed.append(entry)
            return [text({"query": query, "hits": listed}), *pictures]

        return guarded(run)

    @server.tool(
        structured_output=False,
        description="Answer a question from the best pages of the index with a "
        "vision-language model that reads the page images. Returns JSON: the answer and every page "
        "shown to the model (file, page, score, cited, box = the region that best matches question and "
        "answer, as fractions x0,y0,x1,y1 of the page); with images=true also the pages themselves.",
    )
    def ask(
        question: Query,
        k: K = 3,
        max_pages: Annotated[int, Field(ge=1, le=limits.max_pages)] = min(3, limits.max_pages),
        max_new_tokens: Annotated[int, Field(ge=1, le=limits.max_new_tokens)] = 256,
        where: Where = None,
        path: Glob = None,
        images: bool = False,
    ) -> list[TextContent | ImageContent]:
        def run() -> list[TextContent | ImageContent]:
            payload, pages = library.ask(question, k, max_pages, max_new_tokens, where, path)
            return [text(payload), *([image(png_bytes(page)) for page in pages] if images else [])]

        return guarded(run)

    @server.tool(
        structured_output=False,
        description="One page of an indexed document as a PNG image. document is "
        "the document's path (as list_documents shows it), its file name when that is unique, or its id.",
    )
    def get_page(
        document: Annotated[str, Field(min_length=1, max_length=4096)],
        page: Annotated[int, Field(ge=1, description="1-based page number")] = 1,
        edge: Edge = DEFAULT_EDGE,
    ) -> list[TextContent | ImageContent]:
        def run() -> list[TextContent | ImageContent]:
            hit = library.find_page(document, page)
            entry = {
                "file": hit.path,
                "page": hit.page,
                "document_id": hit.document_id,
                "page_id": hit.page_id,
                "resource": PAGE_URI.format(page_id=hit.page_id),
            }
            return [text(entry), image(png_bytes(library.page_image(hit, edge)))]

        return guarded(run)

    @server.tool(
        structured_output=False,
        description="Every indexed document: id, path, kind, page count and also_at (other paths with the same content).",
    )
    def list_documents() -> list[TextContent]:
        def run() -> list[TextContent]:
            records, also_at = library.documents(), library.also_at()
            return [
                text(
                    {
                        "index": str(library.index.path),
                        "documents": [
                            {
                                "id": r.id,
                                "path": r.path,
                                "name": Path(r.path).name,
                                "kind": r.kind,
                                "pages": r.pages,
                                "also_at": also_at.get(r.id, []),
                            }
                            for r in records
                        ],
                    }
                )
            ]

        return guarded(run)

    @server.resource(
        PAGE_URI,
        name="page",
        mime_type="image/png",
        description="An indexed page, re-rendered from its source file, as a PNG",
    )
    def page_resource(page_id: str) -> bytes:
        if not page_id.isdigit():
            raise QueryError(f"a page id is a whole number, not {page_id!r}")
        return png_bytes(library.page_image(library.page_by_id(int(page_id)), DEFAULT_EDGE))

    return server


# --- HTTP: loopback, and `docqa serve`'s token and Host checks ---------------------------------
def http_app(server, auth: "Auth", limits: Limits | None = None) -> "ApiGate":
    """The streamable HTTP app behind ``security.ApiGate`` (Host, Bearer token, no foreign Origin),
    its request bodies capped at ``limits.max_request_bytes``."""
    from mcp.server.transport_security import TransportSecuritySettings

    from .security import ApiGate

    limits = limits or Limits()
    # the SDK's own Host/Origin check would be a second allowlist to keep in step: ApiGate does it
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(
        transport_security=security, host="127.0.0.1", max_request_body_size=limits.max_request_bytes
    )
    return ApiGate(app, auth)


def run(
    index: str | None,
    *,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    token_file: str | None = None,
    allow_hosts: list[str] | None = None,
    device: str | None = None,
    answer_model: str | None = None,
    engine: str | None = None,
) -> None:
    """Serve until the client hangs up (stdio) or until interrupted (http: the token from
    ``token_file``, ``token`` or $DOCQA_TOKEN, as `docqa serve` takes it, and the extra Host names
    ``allow_hosts``)."""
    require_mcp()
    auth = _http_auth(host, token, token_file, allow_hosts) if transport == "http" else None
    library = PageLibrary(index, device=device, answer_model=answer_model, engine=engine)
    # load the retriever in the background, so the client's handshake is answered at once
    threading.Thread(target=_warm, args=(library,), name="docqa-mcp-warm", daemon=True).start()
    server = build_server(library)
    try:
        if auth is None:
            server.run("stdio")
        else:
            import uvicorn

            from .transport import server_config

            print(
                f"docqa: MCP over streamable HTTP at http://{host}:{port}/mcp (Bearer token required)", file=sys.stderr
            )
            app = http_app(server, auth, library.limits)
            uvicorn.Server(server_config(app, host=host, port=port, lifespan="on")).run()
    finally:
        library.close()


def _http_auth(host: str, token: str | None, token_file: str | None, allow_hosts: list[str] | None) -> "Auth":
    """The HTTP transport's Auth: a loopback bind, and a token given (found and checked as `docqa
    serve` finds and checks it, but never made up: an agent's configuration must name it)."""
    from . import server_token
    from .security import Auth

    if host not in LOOPBACK:
        raise DocQAError(
            f"docqa mcp binds loopback only, not {host}: use 127.0.0.1 and a tunnel or a "
            "reverse proxy with TLS to reach it from elsewhere"
        )
    value, _ = server_token(token, token_file, random=False)
    return Auth(token=value, allow_hosts=frozenset(allow_hosts or ()))


def _warm(library: PageLibrary) -> None:
    try:
        if library.index.build is not None:
            library.retriever()
    except DocQAError as error:  # reported again, as a tool error, on the first search
        print(f"docqa: {error}", file=sys.stderr)


__all__ = ["PageLibrary", "build_server", "http_app", "require_mcp", "run"]
