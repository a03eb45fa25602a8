"""`docqa serve`: the HTTP API and web page over one index (FastAPI + uvicorn, the `serve` extra).

    from docqa.serve import create_app
    from docqa.serve.security import Auth
    from docqa.serve.service import Service
    app = create_app(Service("papers"), Auth(token))   # any ASGI server, or `docqa serve --index papers`

Security (docs/server-security.md): a token even on loopback, a Host allowlist, CSRF checks,
bounded work per request and per upload, read timeouts per connection, TLS for other machines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DocQAError, TokenError

if TYPE_CHECKING:  # .security imports Starlette, and the resident process's client (docqa.serve.daemon)
    from .security import Auth  # loads this package on every CLI search and ask: imported where used

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


def check_bind(host: str, *, tls: bool, insecure: bool = False) -> None:
    """Anything but loopback needs TLS (--certfile/--keyfile), or --insecure said out loud."""
    if host not in LOCAL_HOSTS and not tls and not insecure:
        raise DocQAError(
            f"serving on {host} makes the index reachable from other machines, and the token "
            "would cross the network in clear; pass --certfile and --keyfile, or --insecure, "
            "or keep --host 127.0.0.1"
        )


def resolve_token(
    token: str | None, token_file: str | None, environ: Mapping[str, str] | None = None, *, random: bool = True
) -> tuple[str, str]:
    """The token and where it came from: --token-file, --token, $DOCQA_TOKEN, else a random one
    (TokenError instead when ``random`` is false)."""
    from .security import check_token, new_token

    environ = os.environ if environ is None else environ
    if token_file:
        try:
            text = Path(token_file).expanduser().read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise TokenError(f"{token_file}: cannot read the token file ({error})") from error
        try:
            return check_token(text), "file"
        except TokenError as error:
            raise TokenError(f"{token_file}: {error}") from None
    if token:
        return check_token(token), "argument"
    if environ.get("DOCQA_TOKEN"):
        return check_token(environ["DOCQA_TOKEN"]), "environment"
    if not random:
        raise TokenError("no token given: pass --token-file FILE (or --token TOKEN), or set $DOCQA_TOKEN")
    return new_token(), "random"


def server_token(token: str | None, token_file: str | None, *, random: bool = True) -> tuple[str, str]:
    """``resolve_token`` as a server starting up says it: a warning when the token came as an argument."""
    value, source = resolve_token(token, token_file, random=random)
    if source == "argument":
        print(
            "docqa: warning: --token shows in `ps` to every user of this machine; prefer --token-file or $DOCQA_TOKEN",
            file=sys.stderr,
        )
    return value, source


def create_app(service, auth: Auth | None = None):
    require_serve_extra()
    from .app import create_app as _create

    return _create(service, auth)


def serve(
    index: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    token_file: str | None = None,
    allow_hosts: list[str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    insecure: bool = False,
    model: str | None = None,
    answer_model: str | None = None,
    device: str | None = None,
    max_upload_mb: int = 100,
    max_upload_pages: int | None = None,
    upload_quota_mb: int | None = None,
    absolute_paths: bool = False,
    watch: list[str] | None = None,
    settle_s: float = 1.0,
    rescan_s: float | None = None,
    watch_tags: dict[str, str] | None = None,
) -> None:
    """Load the index's retriever once, start keeping the ``watch`` folders in step (docqa.watch,
    inside the server), print the login URL, then serve until interrupted."""
    if bool(certfile) != bool(keyfile):
        raise DocQAError("TLS needs both --certfile and --keyfile")
    check_bind(host, tls=bool(certfile), insecure=insecure)
    require_serve_extra()
    value, source = server_token(token, token_file)
    import uvicorn

    from .security import Auth
    from .service import Service
    from .slots import Limits
    from .transport import server_config

    limits = Limits(
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        **({"max_upload_pages": max_upload_pages} if max_upload_pages else {}),
        **({"upload_quota_bytes": upload_quota_mb * 1024 * 1024} if upload_quota_mb else {}),
    )
    service = Service(
        index, model=model, answer_model=answer_model, device=device, limits=limits, absolute_paths=absolute_paths
    )
    auth = Auth(token=value, allow_hosts=frozenset(allow_hosts or ()))
    try:
        service.load_models()
        if watch:
            from .watching import ServedWatch

            watching = ServedWatch(service, watch, settle_s=settle_s, rescan_s=rescan_s, tags=watch_tags)
            print(f"docqa: keeping {', '.join(watching.shown_folders)} in step", file=sys.stderr)
        scheme = "https" if certfile else "http"
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
        print(
            f"docqa: serving {service.reader.path.name} on {scheme}://{shown}:{port}/ (Ctrl-C stops)\n"
            f"docqa: open {scheme}://{shown}:{port}/login?code={auth.login_code()} to log in (works once, "
            "for 10 minutes)",
            file=sys.stderr,
        )
        if source == "random":
            print(f"docqa: API token (Authorization: Bearer ...): {value}", file=sys.stderr)
        sys.stderr.flush()
        config = server_config(create_app(service, auth), host=host, port=port, certfile=certfile, keyfile=keyfile)
        uvicorn.Server(config).run()
    finally:
        service.close()


__all__ = ["check_bind", "create_app", "require_serve_extra", "resolve_token", "serve", "server_token"]
