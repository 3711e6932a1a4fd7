"""How uvicorn serves the app: connection limits, a deadline for request headers, trusted proxies.

uvicorn alone waits forever for the headers of a request (a slowloris client holds a connection with one byte
every few seconds) and answers a connection over ``limit_concurrency`` in plain text. :func:`guarded_protocol`
returns uvicorn's h11 protocol with two more rules: a connection beyond ``max_connections`` is answered 503 JSON
and closed, and a connection whose request headers are not complete ``header_timeout`` seconds after it opened
(or after its previous answer) is answered 408 JSON and closed; a request that is not HTTP, or whose headers pass
16 kB, gets 400 JSON (uvicorn's own answer is plain text). Proxy headers (``X-Forwarded-For``,
``X-Forwarded-Proto``) are trusted only from the addresses in ``forwarded_allow_ips`` (none by default).

>>> from mvector.service.settings import ServiceConfig
>>> config = server_config(object(), ServiceConfig(), "127.0.0.1", 8000)
>>> config.proxy_headers, config.http.__name__
(False, 'GuardedH11Protocol')
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_protocol", "server_config", "MAX_HEADER_BYTES"]

#: The request line and headers of one request may hold this many bytes at most (uvicorn answers 400 beyond).
MAX_HEADER_BYTES = 16 * 1024


def _raw_error(status: int, reason: str, code: str, message: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"code": code, "message": message, "field": None}).encode("utf-8")
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *([f"retry-after: {retry_after}"] if retry_after is not None else []),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def guarded_protocol(header_timeout: float = 10.0, max_connections: int = 256) -> type:
    """uvicorn's h11 protocol with a header deadline and a connection cap (see the module docstring).

    >>> guarded_protocol(5.0, 10).header_timeout
    5.0
    """

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_deadline: asyncio.TimerHandle | None = None
            if len(self.connections) > max_connections:
                transport.write(
                    _raw_error(
                        503,
                        "Service Unavailable",
                        "overloaded",
                        f"the server holds its limit of {max_connections} connections; retry shortly",
                        retry_after=1,
                    )
                )
                transport.close()
                return
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self._header_deadline = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm_header_deadline(self) -> None:
            handle = getattr(self, "_header_deadline", None)
            if handle is not None:
                handle.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0]:  # part of a request came, too slowly: say why before closing
                self.transport.write(
                    _raw_error(
                        408,
                        "Request Timeout",
                        "request_timeout",
                        f"the request headers were not complete within {header_timeout:g} s",
                    )
                )
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """A request that is not HTTP (or whose headers pass :data:`MAX_HEADER_BYTES`): JSON, then closed."""
            self._disarm_header_deadline()
            detail = f"the request is not valid HTTP/1.1 or its headers pass {MAX_HEADER_BYTES} bytes"
            self.transport.write(_raw_error(400, "Bad Request", "bad_request", detail))
            self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # a request's headers arrived: its body has other limits
                self._disarm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

    GuardedH11Protocol.header_timeout = header_timeout
    GuardedH11Protocol.max_connections = max_connections
    return GuardedH11Protocol


def server_config(
    app: Any,
    settings: Any,
    host: str,
    port: int,
    *,
    keep_alive_s: float = 5.0,
    log_level: str = "info",
    graceful_timeout: float = 30.0,
) -> uvicorn.Config:
    """The uvicorn configuration ``mvector serve`` runs with (tests and benchmarks use the same).

    ``settings`` is the app's :class:`~mvector.service.settings.ServiceConfig` (``header_timeout``,
    ``max_connections``, ``forwarded_allow_ips``: empty means ``X-Forwarded-For`` is ignored and the client is
    the TCP peer).
    """
    allowed = [ip.strip() for ip in getattr(settings, "forwarded_allow_ips", ()) if ip.strip()]
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(float(settings.header_timeout), int(settings.max_connections)),
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout,
        timeout_keep_alive=max(1, int(round(keep_alive_s))),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        proxy_headers=bool(allowed),
        forwarded_allow_ips=",".join(allowed) if allowed else "",
        server_header=False,
        date_header=True,
    )
