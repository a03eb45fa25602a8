"""The HTTP API and the web page (FastAPI). Routes only: the work is in ``service.Service``.

JSON under ``/api``, the page at ``/``, its three files at ``/static/NAME`` (a fixed list, never a
path from the request), the schema at ``/openapi.json`` and ``/docs``. Errors are JSON
``{"error": "..."}`` with a 4xx status (a 5xx only for a failure of the server itself).
"""

import hmac
import json
from collections.abc import Iterator
from http.cookies import SimpleCookie
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, File, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import split_key_value
from ..errors import (
    DocQAError,
    IndexLockedError,
    IndexMismatchError,
    InputFileError,
    ModelLoadError,
    ModelRequiredError,
    NoResultsError,
    QueryError,
    SourceChangedError,
)
from .service import Limits, NotFound, Service, UploadRejected, UploadTooLarge

TOKEN_COOKIE = "docqa_token"
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_STATUS: list[tuple[type[DocQAError], int]] = [
    (NotFound, 404), (NoResultsError, 404), (UploadRejected, 415), (UploadTooLarge, 413),
    (IndexLockedError, 409), (SourceChangedError, 409), (IndexMismatchError, 409), (ModelRequiredError, 409),
    (InputFileError, 422), (QueryError, 422), (ModelLoadError, 503),
]
PAGE_ID = Annotated[int, Path(ge=1, le=2**62, description="a page id from search or ask results")]


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=1000)
    k: int = Field(3, ge=1, le=50)
    max_pages: int | None = Field(None, ge=1, le=5, description="default: 3, or the server's limit if lower")
    max_new_tokens: int = Field(256, ge=1, le=1024)
    where: dict[str, str] | None = Field(None, description="only documents with every one of these tags")
    path: str | None = Field(None, max_length=1000, description="only documents whose path matches this glob")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status_of(error: DocQAError) -> int:
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 400)


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(service: Service, token: str | None = None) -> FastAPI:
    """The app over ``service``; with ``token``, every request must carry it."""
    limits: Limits = service.limits
    app = FastAPI(title="docqa", version=__version__,
                  description="Search and question answering over your documents, with where each match is.")
    app.state.service = service
    static = {name: resources.files(__package__).joinpath("static", name).read_bytes() for name in _STATIC}
    page_html = resources.files(__package__).joinpath("static", "index.html").read_text("utf-8")

    @app.exception_handler(DocQAError)
    async def docqa_error(request: Request, error: DocQAError) -> JSONResponse:
        return _error(_status_of(error), str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path"))
            problems.append(f"{where or 'request'}: {problem.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        return _error(500, "internal error; the server log has the details")

    # --- the page --------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static:
            return _error(404, "no such file")
        return Response(static[name], media_type=_STATIC[name])

    # --- API -------------------------------------------------------------------------------
    @app.get("/api/info", summary="What the index holds, its model and the server's limits")
    def info() -> dict:
        return service.info()

    @app.get("/api/search", summary="The top-k pages for a query (exact MaxSim)")
    def search(q: Annotated[str, Query(min_length=1, max_length=limits.max_query_chars, description="the query")],
               k: Annotated[int, Query(ge=1, le=limits.max_k)] = 5,
               exact: Annotated[bool, Query(description="score every page (brute force)")] = False,
               where: Annotated[list[str], Query(max_length=20, description="KEY=VALUE tag filter, repeatable")] = [],
               path: Annotated[str | None, Query(max_length=1000, description="path glob filter")] = None) -> dict:
        tags = {}
        for item in where:
            try:
                key, value = split_key_value(item)
            except ValueError:
                return _error(422, f"where: expected KEY=VALUE, got {item!r}")
            tags[key] = value
        hits = service.search(q, k, exact=exact, where=tags, path=path)
        return {"query": q, "results": [{**hit.to_json(), "name": _name(hit.path)} for hit in hits]}

    @app.post("/api/ask", summary="Answer a question from the best pages: server-sent events",
              response_class=StreamingResponse,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "events: pages, token (repeated), citations, done (or error)"}})
    def ask(request: AskRequest) -> StreamingResponse:
        max_pages = request.max_pages or min(3, limits.max_pages)
        if request.k > limits.max_k or max_pages > limits.max_pages:
            return _error(422, f"k is at most {limits.max_k} and max_pages at most {limits.max_pages}")
        events = service.ask(request.question, request.k, max_pages, request.max_new_tokens,
                             where=request.where, path=request.path)
        first = next(events)  # retrieval happens here: its errors become a 4xx, not a broken stream

        def stream() -> Iterator[bytes]:
            yield _sse(*first)
            try:
                for event in events:
                    yield _sse(*event)
            except DocQAError as error:
                yield _sse("error", {"error": str(error)})
            except Exception:
                yield _sse("error", {"error": "the answer failed; the server log has the details"})
            finally:
                events.close()  # a client gone mid-answer stops generation here, not in a finalizer

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/pages/{page_id}", summary="One page: its file, page number and document")
    def page(page_id: PAGE_ID) -> dict:
        hit = service.page(page_id)
        return {"page_id": hit.page_id, "path": hit.path, "name": _name(hit.path), "page": hit.page,
                "document_id": hit.document_id}

    @app.get("/api/pages/{page_id}/image", summary="The page as a PNG, rendered from its source file",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def page_image(page_id: PAGE_ID,
                   edge: Annotated[int, Query(ge=32, le=limits.max_image_edge, description="longest edge, px")] = 512
                   ) -> Response:
        return Response(service.page_png(page_id, edge), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/pages/{page_id}/heatmap", summary="The page with where the query matches drawn over it",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def page_heatmap(page_id: PAGE_ID,
                     q: Annotated[str, Query(min_length=1, max_length=limits.max_query_chars)]) -> Response:
        return Response(service.heatmap_png(page_id, q), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/pages/{page_id}/grounding", summary="The box of the region that best matches the query")
    def page_grounding(page_id: PAGE_ID,
                       q: Annotated[str, Query(min_length=1, max_length=limits.max_query_chars)]) -> dict:
        return {"page_id": page_id, "query": q, **service.grounding(page_id, q).to_json()}

    @app.get("/api/documents", summary="Every indexed document")
    def documents() -> dict:
        return {"documents": service.documents()}

    @app.delete("/api/documents/{document_id}", summary="Remove a document from the index")
    def delete_document(document_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict:
        return service.delete_document(document_id)

    @app.post("/api/uploads", status_code=202,
              summary="Upload a PDF or page image; it is ingested in the background (poll or stream its job)")
    def upload(file: Annotated[UploadFile, File(description="a PDF or an image (png, jpeg, tiff, bmp, webp)")]
               ) -> dict:
        def chunks() -> Iterator[bytes]:
            while chunk := file.file.read(1 << 20):
                yield chunk

        job = service.upload(file.filename or "upload", chunks())
        return job.to_json()

    @app.get("/api/jobs", summary="Upload jobs, oldest first")
    def jobs() -> dict:
        return {"jobs": [job.to_json() for job in service.jobs()]}

    @app.get("/api/jobs/{job_id}", summary="One upload job's state and progress")
    def job(job_id: Annotated[str, Path(pattern=r"^[0-9]{1,12}$")]) -> dict:
        return service.job(job_id).to_json()

    @app.get("/api/jobs/{job_id}/events", summary="A job's progress as server-sent events, until it ends",
             response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    def job_events(job_id: Annotated[str, Path(pattern=r"^[0-9]{1,12}$")]) -> StreamingResponse:
        job = service.job(job_id)

        def stream() -> Iterator[bytes]:
            last = None
            for _ in range(24 * 3600):  # bounded: at most a day of 1 s waits
                with job.changed:
                    state = job.to_json()
                    if state == last:
                        job.changed.wait(timeout=1.0)
                        state = job.to_json()
                if state != last:
                    yield _sse("progress", state)
                    last = state
                if job.finished:
                    yield _sse("done", state)
                    return

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    app.add_middleware(_Guard, token=token, limits=limits)
    return app


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


class _Guard:
    """ASGI middleware: the token check (constant-time) and the request-size limit, before any route.

    The token may come as ``Authorization: Bearer T``, an ``X-DocQA-Token`` header, the
    ``docqa_token`` cookie, or ``?token=T`` (which also sets the cookie, so a browser opened on
    ``/?token=T`` keeps working: images cannot carry headers).
    """

    def __init__(self, app: Any, token: str | None, limits: Limits) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value for key, value in scope.get("headers", [])}
        from_query = False
        if self.token is not None:
            given, from_query = self._given(scope, headers)
            if given is None or not hmac.compare_digest(given, self.token):
                await _send_json(send, 401, "a valid token is required (Authorization: Bearer TOKEN)",
                                 [(b"www-authenticate", b"Bearer")])
                return
        limit = self.limits.max_upload_bytes + 64 * 1024 if scope["path"] == "/api/uploads" \
            else self.limits.max_request_bytes
        declared = headers.get("content-length", b"")
        if declared:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await _send_json(send, 400, "malformed Content-Length header")
                return
            if too_big:
                await _send_json(send, 413, f"the request body is over the {limit} byte limit")
                return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(413, f"the request body is over the {limit} byte limit")
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if from_query:
                    cookie = SimpleCookie()
                    cookie[TOKEN_COOKIE] = self.token.decode("latin-1")
                    cookie[TOKEN_COOKIE].update({"httponly": True, "samesite": "Strict", "path": "/"})
                    value = cookie.output(header="").strip().encode("latin-1")
                    message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value)]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, f"the request body is over the {limit} byte limit")

    def _given(self, scope: dict, headers: dict[str, bytes]) -> tuple[bytes | None, bool]:
        authorization = headers.get("authorization", b"")
        if authorization[:7].lower() == b"bearer ":
            return authorization[7:].strip(), False
        if "x-docqa-token" in headers:
            return headers["x-docqa-token"], False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", b"").decode("latin-1"))
        except Exception:  # a malformed Cookie header is just no cookie
            cookie = SimpleCookie()
        if TOKEN_COOKIE in cookie:
            return cookie[TOKEN_COOKIE].value.encode("latin-1"), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0].encode("latin-1"), True
        return None, False


class _TooLarge(StarletteHTTPException):
    """Raised from inside body reading; an HTTPException, so FastAPI's body parser lets it through."""


async def _send_json(send: Any, status: int, message: str, extra: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
