"""The HTTP API and the web page (FastAPI): a router per group, authentication as a dependency.

Routes only: the work is in ``service.Service``, who may call in ``security.Auth``. Groups: the
page (``/``, ``/login``, ``/static/NAME`` from a fixed list, ``/openapi.json``), search and pages,
ask, documents and uploads, jobs. Every route but ``/login`` and the page's shell depends on
``authorized``. Errors are JSON ``{"error": "..."}`` with a 4xx status (429/503 with Retry-After
when the server is busy; a 5xx only for a failure of the server itself). One ASGI layer sits in
front of everything: security headers on every response and the request-size limit (both before
any route or body parsing).
"""

import asyncio
import html
import json
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import split_key_value
from ..errors import (
    Busy,
    DocQAError,
    IndexLockedError,
    IndexMismatchError,
    InputFileError,
    JobConflict,
    ModelLoadError,
    ModelRequiredError,
    NoResultsError,
    NotFound,
    QueryError,
    QuotaExceeded,
    SourceChangedError,
    UploadRejected,
    UploadTooLarge,
)
from .security import Auth, Principal, send_error
from .service import Service
from .slots import Limits

_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_STATUS: list[tuple[type[DocQAError], int]] = [
    (NotFound, 404),
    (NoResultsError, 404),
    (UploadRejected, 415),
    (UploadTooLarge, 413),
    (QuotaExceeded, 507),
    (IndexLockedError, 409),
    (SourceChangedError, 409),
    (IndexMismatchError, 409),
    (ModelRequiredError, 409),
    (JobConflict, 409),
    (InputFileError, 422),
    (QueryError, 422),
    (ModelLoadError, 503),
]
PAGE_ID = Annotated[int, Path(ge=1, le=2**62, description="a page id from search or ask results")]
DOCUMENT_ID = Annotated[int, Path(ge=1, le=2**62, description="a document id from the documents list, search or ask")]
JOB_ID = Annotated[str, Path(pattern=r"^[0-9]{1,12}$")]
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_LOGIN_HELP = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>docqa: log in</title>
<link rel="stylesheet" href="/static/style.css"></head><body><main class="panel"><h1>docqa</h1>
<p>{message}</p><p>Open the login URL that <code>docqa serve</code> printed when it started, or start it
again for a new one. Scripts send <code>Authorization: Bearer TOKEN</code>.</p></main></body></html>"""


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=1000)
    k: int = Field(3, ge=1, le=50)
    max_pages: int | None = Field(None, ge=1, le=5, description="default: 3, or the server's limit if lower")
    max_new_tokens: int = Field(256, ge=1, le=1024)
    where: dict[str, str] | None = Field(None, description="only documents with every one of these tags")
    path: str | None = Field(None, max_length=1000, description="only documents whose path matches this glob")


class WatchFailure(BaseModel):
    path: str
    error: str


class WatchState(BaseModel):
    """`docqa serve --watch`: the folders kept in step and how that goes."""

    folders: list[str]
    state: Literal["starting", "watching", "restarting", "stopped"] = Field(
        description="starting: the catch-up sync runs; restarting: the watcher failed (see error) and starts again"
    )
    batches: int = Field(description="batches applied since the server started")
    restarts: int = Field(description="how often the watcher failed and was started again")
    error: str | None = Field(description="why the watcher last failed (cleared by its next catch-up)")
    last: dict[str, Any] | None = Field(
        description="the last batch, as docqa watch --json prints it (event, added, updated, removed, failed, "
        "failures, waiting, seconds) and when (at, Unix time)"
    )
    failures: list[WatchFailure] = Field(description="files in the folders that did not ingest, and why")


class InfoResponse(BaseModel):
    """What the index holds, its model and the server's limits (more fields than listed here)."""

    model_config = ConfigDict(extra="allow")
    documents: int
    pages: int
    generation: int = Field(
        description="changes whenever the index's committed content changes (an upload ingested, a "
        "delete, a watched folder's batch, another process's ingest), and never repeats across "
        "restarts: poll it, and reload the documents when it changes"
    )
    jobs_running: int
    watch: WatchState | None = Field(description="the watched folders (docqa serve --watch), else null")


async def authorized(request: Request) -> Principal:
    """The dependency every protected route has: Host, token or session, CSRF (see security.Auth)."""
    return request.app.state.auth.authorize(request)


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]


def create_app(service: Service, auth: Auth | None = None) -> FastAPI:
    """The app over ``service``; ``auth`` holds its token (a random one when not given)."""
    app = FastAPI(
        title="docqa",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        description="Search and question answering over your documents, with where each match is. "
        "Every call needs Authorization: Bearer TOKEN.",
    )
    app.state.service = service
    app.state.auth = auth or Auth()
    _add_error_handlers(app)
    protected = [Depends(authorized)]
    app.include_router(_page_router())
    app.include_router(_search_router(service.limits), dependencies=protected)
    app.include_router(_ask_router(service.limits), dependencies=protected)
    app.include_router(_documents_router(), dependencies=protected)
    app.include_router(_jobs_router(), dependencies=protected)
    app.add_middleware(_Transport, limits=service.limits)
    return app


# --- errors ---------------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_of(error: DocQAError) -> int:
    if isinstance(error, Busy):
        return error.status
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 400)


def _docqa_error_response(request: Request, error: DocQAError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Busy) else None
    return _error(_status_of(error), request.app.state.service.scrub(str(error)), headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DocQAError)
    async def docqa_error(request: Request, error: DocQAError) -> JSONResponse:
        return _docqa_error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path"))
            problems.append(f"{where or 'request'}: {problem.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        return _error(500, "internal error; the server log has the details")


# --- the page -------------------------------------------------------------------------------------
def _page_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    static = {name: resources.files(__package__).joinpath("static", name).read_bytes() for name in _STATIC}
    page_html = resources.files(__package__).joinpath("static", "index.html").read_text("utf-8")

    @router.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        auth: Auth = request.app.state.auth
        auth.check_host(request)
        principal = auth.principal(request)
        if principal is None:
            return HTMLResponse(_LOGIN_HELP.format(message="This server needs a login."), status_code=401)
        xsrf = auth.xsrf(principal.nonce) if principal.via == "session" else ""
        meta = f'<meta name="docqa-xsrf" content="{html.escape(xsrf)}">'
        return HTMLResponse(page_html.replace("<head>", "<head>\n" + meta, 1), headers={"Cache-Control": "no-store"})

    @router.get("/login")
    async def login(request: Request, code: str | None = None, token: str | None = None) -> Response:
        """Exchange a one-time login code (or the token) for a session cookie, then go to the page."""
        auth: Auth = request.app.state.auth
        auth.check_host(request)
        if not auth.redeem(code, token):
            return HTMLResponse(_LOGIN_HELP.format(message="That login link is not valid (any more)."), status_code=401)
        response = RedirectResponse("/", status_code=303, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            auth.cookie_name(request),
            auth.new_session(),
            max_age=int(auth.session_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.get("/static/{name}", dependencies=[Depends(authorized)])
    def static_file(name: str) -> Response:
        if name not in static:
            return _error(404, "no such file")
        return Response(static[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    @router.get("/openapi.json", dependencies=[Depends(authorized)])
    def openapi(request: Request) -> dict:
        return request.app.openapi()

    return router


# --- search and pages -----------------------------------------------------------------------------
def _search_router(limits: Limits) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/info", summary="What the index holds, its model and the server's limits", response_model=InfoResponse)
    def info(service: ServiceDep) -> dict:
        return service.info()

    @router.get("/search", summary="The top-k pages for a query (exact MaxSim)")
    def search(
        service: ServiceDep,
        q: Annotated[str, Query(min_length=1, max_length=limits.max_query_chars, description="the query")],
        k: Annotated[int, Query(ge=1, le=limits.max_k)] = 5,
        exact: Annotated[bool, Query(description="score every page (brute force)")] = False,
        where: Annotated[list[str], Query(max_length=20, description="KEY=VALUE tag filter, repeatable")] = [],
        path: Annotated[str | None, Query(max_length=1000, description="path glob filter")] = None,
    ) -> Any:
        tags = {}
        for item in where:
            try:
                key, value = split_key_value(item)
            except ValueError:
                return _error(422, f"where: expected KEY=VALUE, got {item!r}")
            tags[key] = value
        hits = service.search(q, k, exact=exact, where=tags, path=path)
        return {"query": q, "results": [service.hit_json(hit) for hit in hits]}

    @router.get("/pages/{page_id}", summary="One page: its file, page number and document")
    def page(service: ServiceDep, page_id: PAGE_ID) -> dict:
        hit = service.page(page_id)
        shown = service.hit_json(hit)
        return {key: shown[key] for key in ("page_id", "path", "name", "page", "document_id")}

    @router.get(
        "/pages/{page_id}/image",
        summary="The page as a PNG, rendered from its source file",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def page_image(
        service: ServiceDep,
        page_id: PAGE_ID,
        edge: Annotated[int, Query(ge=32, le=limits.max_image_edge, description="longest edge, px")] = 512,
    ) -> Response:
        return Response(
            service.page_png(page_id, edge), media_type="image/png", headers={"Cache-Control": "private, max-age=300"}
        )

    @router.get(
        "/pages/{page_id}/heatmap",
        summary="The page with where the query matches drawn over it",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def page_heatmap(
        service: ServiceDep, page_id: PAGE_ID, q: Annotated[str, Query(min_length=1, max_length=limits.max_query_chars)]
    ) -> Response:
        return Response(
            service.heatmap_png(page_id, q), media_type="image/png", headers={"Cache-Control": "private, max-age=300"}
        )

    @router.get("/pages/{page_id}/grounding", summary="The box of the region that best matches the query")
    def page_grounding(
        service: ServiceDep, page_id: PAGE_ID, q: Annotated[str, Query(min_length=1, max_length=limits.max_query_chars)]
    ) -> dict:
        return {"page_id": page_id, "query": q, **service.grounding(page_id, q).to_json()}

    return router


# --- ask ------------------------------------------------------------------------------------------
def _ask_router(limits: Limits) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.post(
        "/ask",
        summary="Answer a question from the best pages: server-sent events",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "events: pages, token (repeated), citations, done (or error)",
            }
        },
    )
    async def ask(body: AskRequest, request: Request, service: ServiceDep) -> Response:
        max_pages = body.max_pages or min(3, limits.max_pages)
        if body.k > limits.max_k or max_pages > limits.max_pages or body.max_new_tokens > limits.max_new_tokens:
            return _error(
                422,
                f"k is at most {limits.max_k}, max_pages at most {limits.max_pages} "
                f"and max_new_tokens at most {limits.max_new_tokens}",
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(event: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        run = await run_in_threadpool(
            service.start_ask,
            body.question,
            body.k,
            max_pages,
            body.max_new_tokens,
            emit=emit,
            where=body.where,
            path=body.path,
        )
        try:  # the first event decides: retrieval's errors (and a full line) are a 4xx/503, not a broken stream
            first = await _next_event(events, request, limits.ask_wait_s + 600)
        except BaseException:
            run.stop()
            raise
        if first is None or first[0] in ("error", "end"):
            run.stop()
            if first is not None and isinstance(first[1], DocQAError):
                raise first[1]
            return _error(500, "the answer failed; the server log has the details")

        async def stream() -> AsyncIterator[bytes]:
            yield _sse(*first)
            for _ in range(100_000):  # bounded: an answer is at most 1,024 tokens plus a few events
                event = await _next_event(events, request, limits.ask_wait_s + 600)
                if event is None or event[0] == "end":
                    return
                name, data = event
                if name == "error":
                    message = (
                        service.scrub(str(data))
                        if isinstance(data, DocQAError)
                        else "the answer failed; the server log has the details"
                    )
                    yield _sse("error", {"error": message})
                    continue
                yield _sse(name, data)

        return _Streaming(
            stream(),
            on_close=run.stop,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router


async def _next_event(events: asyncio.Queue, request: Request, timeout_s: float) -> tuple[str, Any] | None:
    """The next event, or None once the client has gone or ``timeout_s`` passed without one."""
    for _ in range(int(timeout_s) + 1):
        try:
            return await asyncio.wait_for(events.get(), timeout=1.0)
        except TimeoutError:
            if await request.is_disconnected():
                return None
    return None


class _Streaming(StreamingResponse):
    """A StreamingResponse that always closes its body and calls ``on_close``, even when the client
    left before the first byte (Starlette then never iterates the body, so its ``finally`` alone is
    not enough)."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                try:
                    await close()
                except (RuntimeError, asyncio.CancelledError):  # already closing or cancelled: nothing to free
                    pass


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


# --- documents and uploads ------------------------------------------------------------------------
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "a PDF or an image (png, jpeg, tiff, bmp, webp)",
                        }
                    },
                }
            }
        },
    }
}


def _documents_router() -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get(
        "/documents",
        summary="Every indexed document (status: indexed), and the uploads not indexed (yet) with their job's state",
    )
    def documents(service: ServiceDep) -> dict:
        return {"documents": service.documents(), "pending": service.pending()}

    @router.get(
        "/documents/{document_id}/file",
        summary="The document's original file, as indexed (refused when it changed since): "
        "a PDF or image inline, anything else (or with download=true) as an attachment",
        response_class=Response,
        responses={200: {"content": {"application/pdf": {}, "image/png": {}, "application/octet-stream": {}}}},
    )
    async def document_file(
        service: ServiceDep,
        document_id: DOCUMENT_ID,
        download: Annotated[bool, Query(description="send it as an attachment to save")] = False,
    ) -> Response:
        original = await run_in_threadpool(service.original, document_id)

        async def body() -> AsyncIterator[bytes]:
            while chunk := await run_in_threadpool(original.body.read, 1 << 20):
                yield chunk

        return _Streaming(
            body(),
            on_close=original.body.close,
            media_type=original.media_type,
            headers={
                "Content-Disposition": original.disposition(download),
                "Content-Length": str(original.size),
                "Content-Security-Policy": "sandbox",  # with the page's own policy: no script runs in it
                "Cache-Control": "private, no-store",
            },
        )

    @router.delete("/documents/{document_id}", summary="Remove a document from the index")
    def delete_document(service: ServiceDep, document_id: DOCUMENT_ID) -> dict:
        return service.delete_document(document_id)

    @router.post(
        "/uploads",
        status_code=202,
        openapi_extra=_UPLOAD_BODY,
        summary="Upload a PDF or page image; it is ingested in the background (poll or stream its job)",
    )
    async def upload(request: Request, service: ServiceDep) -> dict:
        # The body is read here, after `authorized` ran: nobody unauthenticated gets a file parsed.
        form = await request.form(max_files=1, max_fields=4, max_part_size=64 * 1024)
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise RequestValidationError([{"loc": ("body", "file"), "msg": "Field required", "type": "missing"}])

            def chunks() -> Iterator[bytes]:
                while chunk := file.file.read(1 << 20):
                    yield chunk

            job = await run_in_threadpool(service.upload, file.filename or "upload", chunks())
            return service.job_json(job)
        finally:
            await form.close()

    return router


# --- jobs -----------------------------------------------------------------------------------------
def _jobs_router() -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/jobs", summary="Upload jobs, oldest first (failed ones with their reason)")
    def jobs(service: ServiceDep) -> dict:
        return {"jobs": [service.job_json(job) for job in service.jobs()]}

    @router.get("/jobs/{job_id}", summary="One upload job's state and progress")
    def job(service: ServiceDep, job_id: JOB_ID) -> dict:
        return service.job_json(service.job(job_id))

    @router.delete(
        "/jobs/{job_id}",
        summary="Cancel a queued or running job; forget a finished one and "
        "delete its stored file unless it is an indexed document",
    )
    def delete_job(service: ServiceDep, job_id: JOB_ID) -> dict:
        return service.delete_job(job_id)

    @router.get(
        "/jobs/{job_id}/events",
        summary="A job's progress as server-sent events, until it ends",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(service: ServiceDep, job_id: JOB_ID) -> Response:
        job = service.job(job_id)
        ticket = service.slots.streams.reserve()
        ticket.wait(1, 0)

        async def stream() -> AsyncIterator[bytes]:
            last = None
            for _ in range(24 * 3600 * 4):  # bounded: at most a day of 0.25 s waits
                raw = job.to_json()
                if raw != last:
                    last = raw
                    state = await run_in_threadpool(service.job_json, job)
                    yield _sse("progress", state)
                    if job.finished and raw == job.to_json():
                        yield _sse("done", state)
                        return
                await asyncio.sleep(0.25)

        return _Streaming(
            stream(), on_close=ticket.release, media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    return router


# --- the one ASGI layer ---------------------------------------------------------------------------
class _Transport:
    """Security headers on every response and the request-size limit, before routing or parsing."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = (
            self.limits.max_upload_bytes + 64 * 1024
            if scope["path"] == "/api/uploads"
            else self.limits.max_request_bytes
        )
        declared = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), b"")
        if declared:
            if not declared.isdigit() or len(declared) > 18:
                await _send_json(send, 400, "malformed Content-Length header")
                return
            if int(declared) > limit:
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

        async def with_headers(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, limited_receive, with_headers)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, f"the request body is over the {limit} byte limit")


class _TooLarge(StarletteHTTPException):
    """Raised from inside body reading; an HTTPException, so FastAPI's body parser lets it through."""


async def _send_json(send: Any, status: int, message: str) -> None:
    await send_error(send, status, message, SECURITY_HEADERS)
