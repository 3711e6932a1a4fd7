"""Who is asking: the one dependency that yields the request's authenticated key with the scope a route needs
(:func:`require`), and the audit log of what a key did or was refused.

The request guard checks the ``Authorization`` key before the body is read and leaves it on the request (its
401s never reach a route); :func:`require` adds the scope check (403 ``forbidden``), auditing refused writes when
the route names an ``action``.

>>> from fastapi import Depends
>>> read_key = Depends(require("read"))
>>> delete_key = Depends(require("write", "delete"))
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import anyio
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mvector.service.errors import ServiceError
from mvector.service.guard import KEY_STATE, client_of
from mvector.service.keys import KeyInfo, scope_allows
from mvector.service.state import ServiceState, service_state

__all__ = ["require", "audit", "audited_write", "AuditedWrite", "refusal_auditor"]

# declared so that the OpenAPI description states the bearer scheme (the guard does the checking)
_BEARER = Depends(HTTPBearer(auto_error=False, description="an API key from `mvector keys create`"))


async def audit(
    request: Request, key: KeyInfo | None, action: str, target: str | None, status: int, detail: Any = None
) -> None:
    """Write one line of the audit log for ``request`` (off the event loop; a failed write is logged)."""
    state = service_state(request)
    client = client_of(request.scope)
    gallery = getattr(request.state, "gallery", None)  # set by the gallery dependency (mvector.service.galleries)
    await anyio.to_thread.run_sync(lambda: state.audit(key, action, target, status, detail, client, gallery))


@dataclass
class AuditedWrite:
    """What the audit line of a write will say: its target and status (500 until the write is answered).

    >>> write = AuditedWrite("alice")
    >>> write.answered({"name": "alice"}, 201), write.status, write.replayed
    ({'name': 'alice'}, 201, False)
    """

    target: str | None = None
    status: int = 500
    replayed: bool = False

    def answered(self, result: Any, status: int) -> Any:
        """Note the answer (a replayed stored answer keeps its own status; a fresh one has ``status``); returns
        ``result``."""
        if isinstance(result, JSONResponse):
            self.replayed, self.status = True, result.status_code
        else:
            self.status = status
        return result


@asynccontextmanager
async def audited_write(
    request: Request,
    key: KeyInfo,
    action: str,
    target: str | None = None,
    fallback: Callable[[], str | None] | None = None,
) -> AsyncIterator[AuditedWrite]:
    """Run a write and then, however it ends, write its audit line: ``action`` on the write's ``target`` (else
    ``fallback()``), with the status of its answer or of the :class:`ServiceError` that refused it (500 for
    anything else), and ``idempotent replay`` when a stored answer was replayed."""
    write = AuditedWrite(target)
    try:
        yield write
    except ServiceError as err:
        write.status = err.status
        raise
    finally:
        detail = "idempotent replay" if write.replayed else None
        target = write.target if write.target or fallback is None else fallback()
        await audit(request, key, action, target, write.status, detail)


def require(scope: str, action: str | None = None) -> Callable[..., Awaitable[KeyInfo]]:
    """A dependency yielding the request's key when its scope includes ``scope`` (else 403, audited as
    ``action`` with the path's ``name`` or ``key_id`` when ``action`` is given)."""

    async def dependency(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = _BEARER) -> KeyInfo:
        key = getattr(request.state, KEY_STATE, None)
        if key is None:  # only an app run without its guard
            raise ServiceError(401, "unauthorized", "no API key was checked for this request", "Authorization")
        if not scope_allows(key.scope, scope):
            if action is not None:
                target = request.path_params.get("name") or request.path_params.get("key_id")
                await audit(request, key, action, target, 403, "scope")
            raise ServiceError(
                403,
                "forbidden",
                f"this route needs a key of scope '{scope}' or higher; key {key.key_id} has scope '{key.scope}'",
                "Authorization",
            )
        return key

    return dependency


def refusal_auditor(state: ServiceState) -> Callable[..., Awaitable[None]]:
    """The guard's ``on_refusal``: a request refused for its key's rate goes into the audit log under that key
    (an anonymous refusal has nobody to attribute it to: the guard counts it)."""

    async def on_refusal(key: Any, client: str | None, method: str, path: str, status: int) -> None:
        if key is not None:
            await anyio.to_thread.run_sync(
                lambda: state.audit(key, "refused", f"{method} {path}", status, "rate limited", client)
            )

    return on_refusal
