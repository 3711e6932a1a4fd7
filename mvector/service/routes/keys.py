"""API keys and the audit log (``admin``): list, create (the key is shown once) and revoke keys; read the log.

>>> sorted((route.path, *route.methods) for route in router.routes)
[('/v1/audit', 'GET'), ('/v1/keys', 'GET'), ('/v1/keys', 'POST'), ('/v1/keys/{key_id}', 'DELETE')]
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import anyio
from fastapi import APIRouter, Depends, Query, Request

from mvector.service.auth import audit, require
from mvector.service.errors import ServiceError
from mvector.service.keys import KeyInfo, KeyStoreError
from mvector.service.schemas import NewKey, error_responses
from mvector.service.settings import SMALL_BODY
from mvector.service.state import service_state
from mvector.service.uploads import read_body

__all__ = ["router", "new_key_body"]

router = APIRouter()
_ADMIN = Depends(require("admin"))
_CREATE = Depends(require("admin", "create_key"))
_REVOKE = Depends(require("admin", "revoke_key"))


@router.get(
    "/v1/keys", tags=["keys"], summary="List API keys (never the keys themselves)", responses=error_responses(403)
)
async def list_keys(request: Request, key: KeyInfo = _ADMIN) -> list[dict[str, Any]]:
    return [k.as_dict() for k in await anyio.to_thread.run_sync(service_state(request).keys.list)]


@router.post(
    "/v1/keys",
    tags=["keys"],
    summary="Create an API key (the key is shown once, in this response)",
    status_code=201,
    responses=error_responses(400, 403),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": NewKey.model_json_schema()}},
        }
    },
)
async def create_key(request: Request, key: KeyInfo = _CREATE) -> dict[str, Any]:
    # the body is read here, after the key and its scope were checked (a declared body is read by FastAPI
    # before any dependency runs), and the guard caps it at 16 kB
    body = await new_key_body(request)
    store = service_state(request).keys
    try:
        info, token = await anyio.to_thread.run_sync(
            lambda: store.create(body.scope, body.name, created_by=key.key_id, galleries=body.galleries)
        )
    except KeyStoreError as err:
        reason = str(err)
        field_name = "scope" if "scope" in reason else "galleries" if "galler" in reason else "name"
        await audit(request, key, "create_key", None, 400, reason)
        raise ServiceError(400, "invalid_parameter", f"field {field_name!r}: {reason}", field_name) from None
    await audit(request, key, "create_key", info.key_id, 201, info.scope)
    return {**info.as_dict(), "key": token}


async def new_key_body(request: Request) -> NewKey:
    """The JSON body of ``POST /v1/keys`` (at most 16 kB), or 400 ``invalid_parameter`` naming the field."""
    raw = await read_body(request, SMALL_BODY)
    try:
        return NewKey.model_validate_json(raw or b"null")
    except ValueError as err:
        errors = getattr(err, "errors", lambda: [])() or [{}]
        loc = ".".join(str(x) for x in errors[0].get("loc", ())) or None
        what = errors[0].get("msg", "not a JSON object with 'scope' and 'name'")
        raise ServiceError(
            400, "invalid_parameter", f"{'field ' + repr(loc) if loc else 'the JSON body'}: {what}", loc
        ) from None


@router.delete(
    "/v1/keys/{key_id}",
    tags=["keys"],
    summary="Revoke an API key (not the one making the request)",
    responses=error_responses(403, 404, 409),
)
async def revoke_key(key_id: str, request: Request, key: KeyInfo = _REVOKE) -> dict[str, Any]:
    if key_id == key.key_id or key_id.startswith(f"mvk_{key.key_id}_"):  # never lock the caller out
        await audit(request, key, "revoke_key", key_id, 409, "own key")
        raise ServiceError(
            409,
            "key_in_use",
            "a key cannot revoke itself over HTTP (use another admin key, or: mvector keys revoke)",
            "key_id",
        )
    try:
        info = await anyio.to_thread.run_sync(service_state(request).keys.revoke, key_id)
    except KeyStoreError:
        await audit(request, key, "revoke_key", key_id, 404)
        raise ServiceError(404, "unknown_key", f"no API key with id {key_id!r}", "key_id") from None
    await audit(request, key, "revoke_key", key_id, 200)
    return info.as_dict()


@router.get("/v1/audit", tags=["keys"], summary="The audit log of writes, newest first", responses=error_responses(403))
async def audit_log(
    request: Request,
    limit: int = Query(100, ge=1, le=10000),
    action: Optional[str] = Query(None, description="only this action (enrol, delete, create_key, ...)"),
    outcome: Literal["done", "refused", "all"] = Query(
        "done",
        description="writes that happened (default), refused requests (one row per key, client, action and "
        "status per hour, with a count), or both",
    ),
    key: KeyInfo = _ADMIN,
) -> list[dict[str, Any]]:
    store = service_state(request).keys
    entries = await anyio.to_thread.run_sync(lambda: store.audit_log(limit, action, outcome))
    return [e.as_dict() for e in entries]
