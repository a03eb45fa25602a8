"""The socket side of `docqa serve` and `docqa mcp --transport http`: uvicorn's h11 protocol with
read timeouts and a per-client connection limit, and the uvicorn configuration the CLI runs.

uvicorn has no header or body read timeout: a client that sends one byte every few seconds keeps
its connection (and, with a concurrency limit, everyone else's turn) for as long as it likes. Here
each connection is checked a few times a second:

- headers must arrive in full within ``header_timeout_s`` of the request's start;
- a body that stops arriving for ``body_timeout_s`` (while the server is reading it) is dropped;
- one client address holds at most ``max_per_client`` connections; a new one beyond that evicts
  the oldest connection that is only waiting for the client, so stalled sockets cannot lock out a
  client that speaks normally (on loopback every client shares one address).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class SocketLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_per_client: int = 64
    max_connections: int = 512  # all clients together; beyond it uvicorn answers 503
    keep_alive_s: int = 5


def guarded_protocol(limits: SocketLimits) -> type[H11Protocol]:
    """An H11Protocol subclass enforcing ``limits`` (one class per server: it counts connections)."""
    peers: dict[str, list[Any]] = {}
    tick = max(0.05, min(limits.header_timeout_s, limits.body_timeout_s) / 4)

    class GuardedH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            now = self.loop.time()
            self._idle_since: float | None = now
            self._last_data = now
            self._timer: asyncio.TimerHandle | None = None
            self._address = self.client[0] if self.client else ""
            mine = peers.setdefault(self._address, [])
            if len(mine) >= limits.max_per_client:
                victim = next((p for p in mine if p._waiting_for_client()), None)
                if victim is None:
                    self._refuse()
                    return
                victim._drop()
            mine.append(self)
            self._timer = self.loop.call_later(tick, self._check)

        def connection_lost(self, exc: Exception | None) -> None:
            self._forget()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._last_data = self.loop.time()
            super().data_received(data)

        def _waiting_for_client(self) -> bool:
            """Between requests, inside headers, or inside a body: nothing of ours is running."""
            state = self.conn.their_state
            return state is h11.IDLE or (state is h11.SEND_BODY and not self.flow.read_paused)

        def _check(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            state = self.conn.their_state
            if state is h11.IDLE:
                if self._idle_since is None:
                    self._idle_since = now
                elif now - self._idle_since > limits.header_timeout_s:
                    self._drop()
                    return
            else:
                self._idle_since = None
                if (
                    state is h11.SEND_BODY
                    and not self.flow.read_paused
                    and now - self._last_data > limits.body_timeout_s
                ):
                    self._drop()
                    return
            self._timer = self.loop.call_later(tick, self._check)

        def _drop(self) -> None:
            self._forget()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

        def _refuse(self) -> None:
            self.transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()

        def _forget(self) -> None:
            timer: asyncio.TimerHandle | None = getattr(self, "_timer", None)
            if timer is not None:
                timer.cancel()
                self._timer = None
            mine = peers.get(getattr(self, "_address", ""), [])
            if self in mine:
                mine.remove(self)
                if not mine:
                    peers.pop(self._address, None)

    return GuardedH11


def server_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: SocketLimits | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    log_level: str = "warning",
    lifespan: Literal["auto", "on", "off"] = "off",
):
    """The uvicorn Config `docqa serve` and `docqa mcp --transport http` run (the tests run the same
    one); ``lifespan="on"`` for an app that starts work of its own (the MCP session manager)."""
    import uvicorn

    limits = limits or SocketLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan=lifespan,
        http=guarded_protocol(limits),
        ws="none",
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=5,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        server_header=False,
        h11_max_incomplete_event_size=32 * 1024,
    )
