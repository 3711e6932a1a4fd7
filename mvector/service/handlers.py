"""Every error as JSON ``{"code", "message", "field"}``: the exception handlers the app installs, turning the
service's own errors, FastAPI's (404, 405, parameter validation), the library's (:class:`MVectorError`) and anything
unexpected (500, logged, no details to the client) into one shape, with the server's folders left out.

>>> from fastapi import FastAPI
>>> app = FastAPI()
>>> add_error_handlers(app)
>>> ServiceError in app.exception_handlers
True
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from mvector.errors import (
    AudioError,
    CheckpointError,
    InvalidNameError,
    MVectorError,
    SpeakerDBError,
    SpeakerExistsError,
    StoreUnavailableError,
    UnknownSpeakerError,
)
from mvector.service.errors import ServiceError, error_body, unavailable
from mvector.service.state import service_state

__all__ = ["add_error_handlers", "allowed_methods"]

log = logging.getLogger("mvector.service")
_METHODS = ("DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of ``app`` answers on ``path`` (``HEAD`` with ``GET``), sorted; each route is asked,
    so that routes inside included routers count (mounts, which take any method, do not).

    >>> app = FastAPI()
    >>> @app.get("/x")
    ... async def x() -> None: ...
    >>> allowed_methods(app, "/x")
    ['GET', 'HEAD']
    """
    methods = set()
    for method in _METHODS:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
        if any(_answers(route, dict(scope)) for route in app.router.routes):
            methods.add(method)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _answers(route: Any, scope: dict[str, Any]) -> bool:
    return not isinstance(route, Mount) and route.matches(scope)[0] == Match.FULL


async def _service_error(request: Request, err: ServiceError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(err.status_code, "bad_request")
    message = f"no route {request.method} {request.url.path}" if err.status_code == 404 else str(err.detail)
    status = err.status_code if code != "bad_request" else 400
    headers = dict(getattr(err, "headers", None) or {})
    if status == 405:  # Starlette names only the first matching route's methods; a path may have several
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
    return JSONResponse(error_body(code, message), status_code=status, headers=headers or None)


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    first = (err.errors() or [{}])[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
    field_name = ".".join(loc) or None
    message = f"parameter {field_name!r}: {first.get('msg', 'invalid value')}"
    return JSONResponse(error_body("invalid_parameter", message, field_name), status_code=400)


async def _mvector_error(request: Request, err: MVectorError) -> JSONResponse:
    if isinstance(err, StoreUnavailableError):  # the shared database is away: a 503 the client may retry
        log.warning("store unavailable: %s", err)
        answer = unavailable(err)
        return JSONResponse(answer.body(), status_code=answer.status, headers=answer.headers)
    text = service_state(request).public(str(err))
    if isinstance(err, AudioError):  # undecodable audio, a refused enrolment (quality checks)
        return JSONResponse(error_body("bad_audio", text, "audio"), status_code=400)
    if isinstance(err, UnknownSpeakerError) or (isinstance(err, SpeakerDBError) and "unknown speaker" in text):
        return JSONResponse(error_body("unknown_speaker", text, "name"), status_code=404)
    if isinstance(err, InvalidNameError):
        return JSONResponse(error_body("invalid_name", text, "name"), status_code=400)
    if isinstance(err, SpeakerExistsError):
        return JSONResponse(error_body("speaker_exists", text, "name"), status_code=409)
    if isinstance(err, CheckpointError):  # the server's model, not the request
        log.error("model error: %s", err)
        return JSONResponse(error_body("internal_error", "the server could not complete the request"), 500)
    return JSONResponse(error_body("invalid_parameter", text), status_code=400)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "the server could not complete the request"), 500)


def add_error_handlers(app: FastAPI) -> None:
    """Install the handlers above on ``app`` (``MVectorError`` messages lose the server's folders)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(MVectorError, _mvector_error)
    app.add_exception_handler(Exception, _unexpected)
