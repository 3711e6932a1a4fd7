"""The HTTP API (FastAPI on Starlette, served by uvicorn): ``create_app(ServiceConfig(...))``.

Routes (all under ``/v1`` need ``Authorization: Bearer KEY``; ``/health``, the web page ``/``, ``/openapi.json``
and ``/docs`` do not):

=========================================  ======  =========================================================
``GET /health``                            none    ``ok`` (200), or ``loading`` / ``failed`` (503)
``GET /v1/model``                          read    model name, fingerprint, threshold and where it came from
``POST /v1/embed``                         read    the embedding of one recording
``POST /v1/verify``                        read    are ``audio1`` and ``audio2`` the same speaker?
``POST /v1/identify?top_k=K``              read    who is speaking (``name`` null when unknown), top-K list
``GET /v1/speakers``                       read    enrolled speakers
``GET /v1/speakers/{name}``                read    one speaker
``POST /v1/speakers/{name}/verify``        read    is this recording the enrolled speaker ``name``?
``POST /v1/speakers``                      write   enrol a new speaker from one or more recordings (409 if taken)
``POST /v1/speakers/{name}/recordings``    write   add recordings to an enrolled speaker
``DELETE /v1/speakers/{name}``             write   remove a speaker
``GET/POST /v1/keys``, ``DELETE``          admin   list, create, revoke API keys
``GET /v1/audit``                          admin   the audit log of writes
=========================================  ======  =========================================================

Recordings are multipart file fields (``audio``, or ``audio1``/``audio2``) or, for one-recording routes, the raw
request body, in any format :func:`mvector.audio.load_audio` reads (WAV, FLAC, OGG, MP3). Errors are JSON
``{"code", "message", "field"}`` (see :mod:`mvector.service.errors`).

This module only assembles the app: the routes are :mod:`mvector.service.routes` (one router per resource), the
key and scope check :mod:`~mvector.service.auth`, upload reading :mod:`~mvector.service.uploads`, the running
state (worker, key store, budgets; ``app.state.service``) :mod:`~mvector.service.state`, the error answers
:mod:`~mvector.service.handlers`.

>>> import tempfile
>>> from mvector.service.settings import ServiceConfig
>>> from mvector.demo import tiny_checkpoint
>>> config = ServiceConfig(model_path=str(tiny_checkpoint(tempfile.mkdtemp())), audio_db_path=tempfile.mkdtemp())
>>> app = create_app(config)
>>> sorted(path for path in app.openapi()["paths"] if path.startswith("/v1/speakers"))
['/v1/speakers', '/v1/speakers/{name}', '/v1/speakers/{name}/recordings', '/v1/speakers/{name}/verify']
"""

from __future__ import annotations

from typing import Any, Callable

try:
    from fastapi import FastAPI
except ImportError as _err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the HTTP service needs FastAPI, uvicorn and python-multipart ({_err}); "
        'install them with: pip install "mvector[serve]"'
    ) from _err

from mvector import __version__
from mvector.service.auth import refusal_auditor
from mvector.service.guard import RequestGuard
from mvector.service.handlers import add_error_handlers
from mvector.service.openapi import stated_openapi
from mvector.service.routes import ROUTERS
from mvector.service.routes.pages import add_pages
from mvector.service.schemas import ErrorBody
from mvector.service.settings import ServiceConfig
from mvector.service.state import ServiceState, default_predictor_factory, lifespan
from mvector.service.uploads import body_limit

__all__ = ["create_app"]

_DESCRIPTION = (
    "Speaker verification and identification over an mvector model. Send `Authorization: Bearer KEY` "
    "(create keys with `mvector keys create`). Scopes: read (embed, verify, identify, list), write (also "
    "enrol, delete), admin (also keys, audit). Errors are JSON `{code, message, field}`."
)


def create_app(config: ServiceConfig, predictor_factory: Callable[[], Any] | None = None) -> FastAPI:
    """Build the FastAPI app. The model loads in the background on start-up (``503 model_loading`` meanwhile).

    ``predictor_factory`` replaces the default ``MVectorPredictor(config.model_path, ...)`` (tests use it to make
    loading slow or to wrap the predictor).
    """
    if predictor_factory is None:
        predictor_factory = default_predictor_factory(config)
    state = ServiceState.open(config, predictor_factory)
    app = FastAPI(
        title="mvector verification service",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs is the package's own page (no CDN): routes/pages.py
        redoc_url=None,
        responses={500: {"model": ErrorBody, "description": "internal_error"}},
    )
    state.attach(app)
    _add_middleware(app, state)
    add_error_handlers(app)
    add_pages(app)
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = stated_openapi(app)  # type: ignore[method-assign]
    return app


def _add_middleware(app: FastAPI, state: ServiceState) -> None:
    """The request guard (keys, body caps, rate of refusals, audio budget) and, when origins are set, CORS."""
    config = state.config
    app.add_middleware(
        RequestGuard,
        authenticate=state.keys.authenticate,
        body_limit=body_limit(config),
        max_requests=config.max_requests,
        body_timeout=config.body_timeout,
        refusal_limit=config.refusal_limit,
        budget=state.budget,
        on_refusal=refusal_auditor(state),
        counters=state.refused,
    )
    if config.cors_origins:  # added last, so it is outside the guard: preflight requests carry no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
