"""`docqa serve`: the HTTP API and web page over one index (FastAPI + uvicorn, the `serve` extra).

    from docqa.serve import create_app, Service
    app = create_app(Service("papers"))            # any ASGI server, or `docqa serve --index papers`
"""

from __future__ import annotations

from ..errors import DocQAError

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
INSTALL_HINT = 'the web server needs the serve extra: pip install "docqa[serve]"'


def require_serve_extra() -> None:
    """Raise a one-line DocQAError naming the install command when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (uploads)
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise DocQAError(f"{INSTALL_HINT} ({error.name} is missing)") from error


def check_bind(host: str, token: str | None) -> None:
    """Only 127.0.0.1 (or localhost) may be served without a token."""
    if host not in LOCAL_HOSTS and not token:
        raise DocQAError(f"serving on {host} makes the index reachable from other machines; "
                         "pass --token TOKEN (every request must then carry it), or keep --host 127.0.0.1")


def create_app(service, token: str | None = None):
    require_serve_extra()
    from .app import create_app as _create

    return _create(service, token)


def serve(index: str | None, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          model: str | None = None, answer_model: str | None = None, device: str | None = None,
          max_upload_mb: int = 100) -> None:
    """Load the index's retriever once, then serve until interrupted."""
    check_bind(host, token)
    require_serve_extra()
    import uvicorn

    from .service import Limits, Service

    service = Service(index, model=model, answer_model=answer_model, device=device,
                      limits=Limits(max_upload_bytes=max_upload_mb * 1024 * 1024))
    try:
        service.load_models()
        uvicorn.run(create_app(service, token), host=host, port=port, log_level="warning",
                    limit_concurrency=64, timeout_keep_alive=5)
    finally:
        service.close()


__all__ = ["check_bind", "create_app", "require_serve_extra", "serve"]
