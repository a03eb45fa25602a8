"""Who may talk to `docqa serve` (and to `docqa mcp` over HTTP), from where: the token, sessions,
the Host allowlist and CSRF rules.

- Every request needs the token (random by default, even on loopback): as ``Authorization:
  Bearer TOKEN`` (API clients), or as a session cookie a browser got by opening the login URL
  once. The cookie is signed with a per-process secret and expires; it never holds the token.
- Host must name this server: localhost, 127.0.0.1 or [::1] on the port the request came in on,
  or a name given with ``--allow-host``. This defeats DNS rebinding, token or not.
- A request authenticated by cookie is a browser's: a state-changing one needs the session's XSRF
  token in ``X-XSRF-Token`` and an Origin (or Sec-Fetch-Site) of this very origin; any other one
  must not be a cross-site or same-site fetch (Sec-Fetch-Site), so no other page, not even one on
  another port of this host, can make it do work.
- An app only programs call (``ApiGate``: the MCP transport) takes the Bearer token alone, never a
  session, and refuses a request whose Origin is another site's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..errors import TokenError

MIN_TOKEN_CHARS = 16
SESSION_COOKIE = "docqa_session"
XSRF_HEADER = "x-xsrf-token"
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOGIN_CODES_KEPT = 16


def check_token(token: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS or any(ord(c) < 33 or ord(c) > 126 for c in token):
        raise TokenError(
            f"the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces "
            "(leave it out and docqa makes a random one)"
        )
    return token


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    via: Literal["bearer", "session"]
    nonce: str = ""


@dataclass
class Auth:
    """The server's token, its session secret and the names it answers to."""

    token: str = field(default_factory=new_token)
    allow_hosts: frozenset[str] = frozenset()  # extra host names (with or without :port)
    session_s: float = 12 * 3600
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        self.token = check_token(self.token)
        self.allow_hosts = frozenset(h.lower() for h in self.allow_hosts)
        self._codes: dict[str, float] = {}
        self._codes_lock = threading.Lock()

    # --- login --------------------------------------------------------------------------------
    def login_code(self, valid_s: float = 600) -> str:
        """A code for a one-time login URL (``/login?code=``): it works once, within ``valid_s``."""
        code = secrets.token_urlsafe(24)
        with self._codes_lock:
            now = time.monotonic()
            self._codes = {c: t for c, t in self._codes.items() if t > now}
            while len(self._codes) >= _LOGIN_CODES_KEPT:
                self._codes.pop(next(iter(self._codes)))
            self._codes[code] = now + valid_s
        return code

    def redeem(self, code: str | None, token: str | None) -> bool:
        if token is not None:
            return self.token_matches(token)
        if code is None:
            return False
        with self._codes_lock:
            expires = self._codes.pop(code, None)
        return expires is not None and expires > time.monotonic()

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    # --- sessions -----------------------------------------------------------------------------
    def new_session(self) -> str:
        expires = int(time.time() + self.session_s)
        nonce = secrets.token_urlsafe(16)
        return f"{expires}.{nonce}.{self._sign('session', f'{expires}.{nonce}')}"

    def session_nonce(self, cookie: str | None) -> str | None:
        """The nonce of a valid, unexpired session cookie; None for anything else."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        expires, nonce, signature = parts
        if not hmac.compare_digest(signature, self._sign("session", f"{expires}.{nonce}")):
            return None
        return nonce if int(expires) > time.time() else None

    def xsrf(self, nonce: str) -> str:
        return self._sign("xsrf", nonce)

    def _sign(self, purpose: str, value: str) -> str:
        mac = hmac.new(self.secret, f"{purpose}|{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    # --- requests -----------------------------------------------------------------------------
    def check_host(self, request: Request) -> str:
        """This request's own origin (scheme://host[:port]); HTTPException 421 for a foreign Host."""
        host = (request.headers.get("host") or "").lower()
        name, port = _split_host(host)
        server_port = request.scope.get("server", (None, None))[1]
        scheme = request.url.scheme
        default_port = 443 if scheme == "https" else 80
        same_port = (port if port is not None else default_port) == server_port
        if not (
            (name in LOCAL_NAMES and same_port) or host in self.allow_hosts or (name in self.allow_hosts and same_port)
        ):
            raise HTTPException(
                421,
                f"this server does not answer to the host name {host[:100]!r}; "
                "start it with --allow-host NAME to allow one",
            )
        return f"{scheme}://{host}"

    def cookie_name(self, request: Request) -> str:
        port = request.scope.get("server", (None, None))[1]
        return f"{SESSION_COOKIE}_{port}" if port else SESSION_COOKIE

    def principal(self, request: Request, *, sessions: bool = True) -> Principal | None:
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            return Principal("bearer") if self.token_matches(authorization[7:].strip()) else None
        if not sessions:
            return None
        nonce = self.session_nonce(request.cookies.get(self.cookie_name(request)))
        return Principal("session", nonce) if nonce else None

    def authorize(self, request: Request, *, browsers: bool = True) -> Principal:
        """Host, then the token or session, then (for a session) the CSRF rules; HTTPException if not.

        ``browsers=False`` is for an app only programs call: the Bearer token alone counts (no
        session), and a request from another origin (a web page's fetch) is refused."""
        origin = self.check_host(request)
        principal = self.principal(request, sessions=browsers)
        if principal is None:
            login = ", or open the login URL docqa serve printed" if browsers else ""
            raise HTTPException(
                401,
                f"a valid token is required: Authorization: Bearer TOKEN{login}",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if principal.via == "session":
            self._check_browser_request(request, origin, principal)
        elif not browsers:
            given_origin = request.headers.get("origin")
            if given_origin is not None and given_origin.lower() != origin:
                raise HTTPException(403, "a request from another origin is refused")
        return principal

    def _check_browser_request(self, request: Request, origin: str, principal: Principal) -> None:
        fetch_site = request.headers.get("sec-fetch-site")
        given_origin = request.headers.get("origin")
        if request.method in _SAFE_METHODS:
            if fetch_site not in (None, "same-origin", "none"):
                raise HTTPException(
                    403, f"a {fetch_site} request is refused: only this server's own page may use its session"
                )
            if given_origin is not None and given_origin.lower() != origin:
                raise HTTPException(403, "a request from another origin is refused")
            return
        if given_origin is not None:
            if given_origin.lower() != origin:
                raise HTTPException(403, "a request from another origin is refused")
        elif fetch_site != "same-origin":
            raise HTTPException(
                403,
                "a state-changing request needs an Origin or Sec-Fetch-Site header "
                "of this server (use Authorization: Bearer from scripts)",
            )
        if fetch_site not in (None, "same-origin"):
            raise HTTPException(403, f"a {fetch_site} request is refused")
        if not hmac.compare_digest(request.headers.get(XSRF_HEADER, "").encode(), self.xsrf(principal.nonce).encode()):
            raise HTTPException(403, "the X-XSRF-Token header is missing or does not match the session")


def _split_host(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    if port and not (port.isdigit() and len(port) <= 5):
        return name, -1
    return name, int(port) if port else None


class ApiGate:
    """ASGI wrapper for an app only programs call (the MCP transport): ``Auth.authorize`` without
    browser sessions, before the app sees a byte of the body; websockets are refused."""

    def __init__(self, app: Any, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http":
            try:
                self.auth.authorize(Request(scope), browsers=False)
            except HTTPException as refused:
                headers = [(k.lower().encode(), v.encode()) for k, v in (refused.headers or {}).items()]
                await send_error(send, refused.status_code, str(refused.detail), headers)
                return
        await self.app(scope, receive, send)


async def send_error(send: Any, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """A JSON ``{"error": message}`` response straight over ASGI (for layers in front of routing)."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
