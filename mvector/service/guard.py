"""The request guard: an ASGI middleware in front of every route, checking what it can before a byte of the body
is read.

In order, for every HTTP request:

1. at most ``max_requests`` requests are handled at once; one more gets 503 ``overloaded`` (``Retry-After``);
2. on ``/v1`` routes the ``Authorization`` key is checked (401 ``unauthorized`` at once, body unread; 503
   ``store_unavailable`` when the key store cannot be reached);
3. a (key, client) pair refused (401/403) more than ``refusal_limit`` times in the last minute gets 429
   ``rate_limited`` (``Retry-After``) without further work; refusals without a valid key count for the client
   alone and never limit the keys used from the same address;
4. a declared ``Content-Length`` over the route's cap gets 413 ``upload_too_large`` at once; while the body is
   read, a body that passes the cap stops with 413 and one that stalls longer than ``body_timeout`` s with 408
   ``request_timeout``;
5. pages get ``Content-Security-Policy`` (``frame-ancestors 'none'``) and every answer ``nosniff``;
6. when the request ends, whatever audio memory it reserved is given back (:class:`AudioBudget`).

>>> guard = RequestGuard(None, authenticate=lambda token: None, body_limit=lambda method, path: 1024)
>>> guard.max_requests, guard.body_timeout
(64, 30.0)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any, Awaitable, Callable, Optional

from mvector.errors import StoreUnavailableError
from mvector.service.budget import REQUEST_OWNER, AudioBudget
from mvector.service.errors import ServiceError, unavailable

__all__ = ["RequestGuard", "KEY_STATE", "PAGE_CSP", "client_of"]

#: Where the guard leaves the authenticated key in the request's ``scope["state"]`` (``request.state``).
KEY_STATE = "mvector_key"
#: The content security policy of the service's pages: nothing from elsewhere, never inside a frame.
PAGE_CSP = (
    "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_WINDOW_S = 60.0
_MAX_TRACKED = 10000  # clients whose refusals are remembered at once (the oldest are forgotten first)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def client_of(scope: Scope) -> str | None:
    """The client address uvicorn reports (a forwarded one only from ``--forwarded_allow_ips``)."""
    client = scope.get("client")
    return str(client[0]) if client else None


async def _send_error(send: Send, err: ServiceError) -> None:
    body = json.dumps(err.body()).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    headers.append((b"x-content-type-options", b"nosniff"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """The ASGI middleware described in the module docstring.

    ``authenticate(token) -> key or None`` runs in a worker thread (it reads SQLite); ``body_limit(method, path)``
    gives the most bytes a route's body may have; ``on_refusal(key, client, method, path, status)`` is told of
    every 429 (the app counts them in the audit log); ``budget`` is released when a request ends; ``counters``
    (a dict the app may share) counts the guard's refusals by kind.
    """

    def __init__(
        self,
        app: Any,
        authenticate: Callable[[str], Any],
        body_limit: Callable[[str, str], int],
        max_requests: int = 64,
        body_timeout: float = 30.0,
        refusal_limit: int = 60,
        budget: Optional[AudioBudget] = None,
        on_refusal: Optional[Callable[[Any, Optional[str], str, str, int], Awaitable[None]]] = None,
        counters: Optional[dict[str, int]] = None,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.body_limit = body_limit
        self.max_requests = int(max_requests)
        self.body_timeout = float(body_timeout)
        self.refusal_limit = int(refusal_limit)
        self.budget = budget
        self.on_refusal = on_refusal
        self.active = 0
        self.refused: dict[tuple[str, str], deque] = {}
        self.counters = counters if counters is not None else {}  # what the guard refused, by kind (shared)
        for kind in ("overloaded", "rate_limited", "unauthorized", "too_large", "timeouts"):
            self.counters.setdefault(kind, 0)

    # ------------------------------------------------------------------ refusal bookkeeping
    def _recent_refusals(self, who: tuple[str, str], now: float) -> deque:
        times = self.refused.get(who)
        if times is None:
            if len(self.refused) >= _MAX_TRACKED:  # forget the client refused longest ago
                oldest = min(self.refused, key=lambda k: self.refused[k][-1] if self.refused[k] else 0.0)
                del self.refused[oldest]
            times = self.refused[who] = deque()
        while times and times[0] < now - _WINDOW_S:
            times.popleft()
        return times

    def _limited(self, who: tuple[str, str], now: float) -> bool:
        return len(self._recent_refusals(who, now)) >= self.refusal_limit

    def _note_refusal(self, who: tuple[str, str], now: float) -> None:
        times = self._recent_refusals(who, now)
        if len(times) < self.refusal_limit + 1:
            times.append(now)

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if self.active >= self.max_requests:
            self.counters["overloaded"] += 1
            await _send_error(
                send,
                ServiceError(
                    503,
                    "overloaded",
                    f"the server is handling its limit of {self.max_requests} requests; retry shortly",
                    headers={"Retry-After": "1"},
                ),
            )
            return
        self.active += 1
        token = REQUEST_OWNER.set(state)
        try:
            await self._handle(scope, state, receive, send)
        finally:
            REQUEST_OWNER.reset(token)
            self.active -= 1
            if self.budget is not None:
                self.budget.release(state)

    async def _handle(self, scope: Scope, state: dict, receive: Receive, send: Send) -> None:
        # Longer than 80 lines on purpose: the checks of one request in the order they must run (key before any
        # body byte, rate of refusals, request cap, body cap, audio budget), read top to bottom in one place.
        method, path = scope["method"], scope["path"]
        client = client_of(scope) or "-"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        key = None
        if path.startswith("/v1/") or path == "/v1":
            key, problem = await self._check_key(headers.get("authorization"))
            if problem is not None:
                anonymous = ("", client)  # refusals without a valid key never limit the keys used from there
                if self._limited(anonymous, time.monotonic()):
                    await self._refuse_rate(send, None, client, method, path)
                    return
                self.counters["unauthorized"] += 1
                self._note_refusal(anonymous, time.monotonic())
                await _send_error(send, problem)
                return
            state[KEY_STATE] = key
            who = (key.key_id, client)
            if self._limited(who, time.monotonic()):
                await self._refuse_rate(send, key, client, method, path)
                return
        limit = int(self.body_limit(method, path))
        declared = headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_error(send, ServiceError(400, "bad_request", "the Content-Length header is not a number"))
                return
            if size > limit:
                self.counters["too_large"] += 1
                await _send_error(
                    send,
                    ServiceError(
                        413,
                        "upload_too_large",
                        f"the request body ({size} bytes) is over this route's limit of {limit} bytes",
                        "body",
                    ),
                )
                return

        received = 0
        body_done = False

        async def guarded_receive() -> dict[str, Any]:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                self.counters["timeouts"] += 1
                raise ServiceError(
                    408,
                    "request_timeout",
                    f"the request body stalled for more than {self.body_timeout:g} s",
                    "body",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self.counters["too_large"] += 1
                    raise ServiceError(
                        413, "upload_too_large", f"the request body is over this route's limit of {limit} bytes", "body"
                    )
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        page = method == "GET" and (path == "/" or path == "/docs")
        status_seen = 0

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal status_seen
            if message["type"] == "http.response.start":
                status_seen = int(message["status"])
                extra = [(b"x-content-type-options", b"nosniff")]
                if page:
                    extra += [(b"content-security-policy", PAGE_CSP.encode()), (b"referrer-policy", b"no-referrer")]
                names = {k.lower() for k, _ in message.get("headers", ())}
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), *(h for h in extra if h[0] not in names)],
                }
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)
        if status_seen in (401, 403):
            self._note_refusal((key.key_id if key else "", client), time.monotonic())

    async def _check_key(self, header: str | None) -> tuple[Any, ServiceError | None]:
        scheme, _, token = (header or "").partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            return None, ServiceError(
                401,
                "unauthorized",
                "missing API key: send the header 'Authorization: Bearer KEY'",
                "Authorization",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            key = await asyncio.to_thread(self.authenticate, token.strip())
        except StoreUnavailableError as err:  # the key store is down: a clear 503, never a traceback
            return None, unavailable(err)
        if key is None:
            return None, ServiceError(
                401,
                "unauthorized",
                "unknown or revoked API key in the Authorization header",
                "Authorization",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return key, None

    async def _refuse_rate(self, send: Send, key: Any, client: str, method: str, path: str) -> None:
        self.counters["rate_limited"] += 1
        if self.on_refusal is not None:
            await self.on_refusal(key, client, method, path, 429)
        await _send_error(
            send,
            ServiceError(
                429,
                "rate_limited",
                f"more than {self.refusal_limit} refused requests from this client in a minute; retry later",
                headers={"Retry-After": str(int(_WINDOW_S))},
            ),
        )
