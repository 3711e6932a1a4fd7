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

>>> import tempfile
>>> from mvector.demo import tiny_checkpoint
>>> config = ServiceConfig(model_path=str(tiny_checkpoint(tempfile.mkdtemp())), audio_db_path=tempfile.mkdtemp())
>>> app = create_app(config)
>>> sorted({r.path for r in app.routes if r.path.startswith("/v1/speakers")})
['/v1/speakers', '/v1/speakers/{name}', '/v1/speakers/{name}/recordings', '/v1/speakers/{name}/verify']
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

try:
    import anyio
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the HTTP service needs FastAPI, uvicorn and python-multipart ({_err}); "
        'install them with: pip install "mvector[serve]"'
    ) from _err

from mvector import __version__
from mvector.errors import (
    AudioError,
    CheckpointError,
    ConfigError,
    InvalidNameError,
    MVectorError,
    SpeakerDBError,
    SpeakerExistsError,
    UnknownSpeakerError,
)
from mvector.inference.idempotency import Replayed, request_hash
from mvector.service.budget import REQUEST_OWNER, AudioBudget, default_audio_budget_mb
from mvector.service.errors import ERROR_CODES, ServiceError, error_body
from mvector.service.guard import KEY_STATE, PAGE_CSP, RequestGuard, client_of
from mvector.service.idempotent import idempotency_header as idempotency_header_param
from mvector.service.idempotent import replay_or_refuse, stored_answer, write_record
from mvector.service.keys import KeyInfo, KeyStore, KeyStoreError, scope_allows
from mvector.service.worker import ModelWorker, default_threads

__all__ = ["ServiceConfig", "create_app", "decode_upload", "plan_upload", "STATIC_DIR"]

log = logging.getLogger("mvector.service")

STATIC_DIR = Path(__file__).resolve().parent / "static"
_MB = 1024 * 1024
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and small text fields
_SMALL_BODY = 16 * 1024  # JSON bodies (POST /v1/keys) and the bodies routes without uploads may carry
# Attributes a (calibrated) verification or identification result may carry beside its tuple values.
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_RESULT_EXTRAS = ("llr", "probability", "prior", "unknown", "margin", "reason", "calibrated", "threshold_source")


@dataclass
class ServiceConfig:
    """Settings of one service instance (the options of ``mvector serve``).

    >>> ServiceConfig(max_upload_mb=2).max_upload_bytes
    2097152
    """

    model_path: Optional[str] = None
    audio_db_path: str = "audio_db"
    threshold: Optional[float] = None
    backend: str = "auto"
    use_gpu: bool = False
    keep_audio: bool = False
    max_upload_mb: float = 10.0
    max_files: int = 10
    max_duration: float = 60.0
    min_duration: float = 0.5
    max_queue: int = 64
    max_batch: int = 16
    threads: Optional[int] = None
    decode_threads: int = 2
    cors_origins: tuple = field(default_factory=tuple)
    max_requests: int = 64
    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_audio_mb: Optional[float] = None
    audio_wait: float = 2.0
    refusal_limit: int = 60
    audit_retention_days: float = 90.0
    forwarded_allow_ips: tuple = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_audio_mb is None:
            self.max_audio_mb = default_audio_budget_mb()
        checks = {
            "max_requests": isinstance(self.max_requests, int) and self.max_requests >= 1,
            "max_connections": isinstance(self.max_connections, int) and self.max_connections >= 1,
            "header_timeout": self.header_timeout > 0,
            "body_timeout": self.body_timeout > 0,
            "max_audio_mb": self.max_audio_mb > 0,
            "audio_wait": self.audio_wait >= 0,
            "refusal_limit": isinstance(self.refusal_limit, int) and self.refusal_limit >= 1,
            "audit_retention_days": self.audit_retention_days > 0,
            "max_upload_mb": self.max_upload_mb > 0,
            "max_files": isinstance(self.max_files, int) and self.max_files >= 1,
            "max_duration": self.max_duration > 0,
            "min_duration": 0 <= self.min_duration < self.max_duration,
            "max_queue": self.max_queue >= 1,
            "max_batch": self.max_batch >= 1,
            "decode_threads": self.decode_threads >= 1,
            "threads": self.threads is None or self.threads >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"service setting {name} has a bad value: {getattr(self, name)!r}")
        if self.threshold is not None and not math.isfinite(float(self.threshold)):
            raise ConfigError(f"threshold must be a finite number, got {self.threshold!r}")
        if self.max_audio_bytes < self.request_audio_bytes(self.max_files):
            raise ConfigError(
                f"service setting max_audio_mb ({self.max_audio_mb:g}) is below what one enrolment may need "
                f"({self.request_audio_bytes(self.max_files) / _MB:.1f} MB for max_files, max_upload_mb and "
                "max_duration): raise it or lower those"
            )

    @property
    def max_upload_bytes(self) -> int:
        """The size limit of one upload, in bytes."""
        return int(self.max_upload_mb * _MB)

    @property
    def max_audio_bytes(self) -> int:
        """The ceiling on audio held in memory across all requests, in bytes."""
        return int(float(self.max_audio_mb) * _MB)

    def request_audio_bytes(self, files: int, sample_rate: int = 16000) -> int:
        """The most audio memory one request of ``files`` recordings may reserve (bodies twice: read and parsed;
        decoded mono float32 at ``sample_rate`` up to ``max_duration``, plus a 0.25 s block of 8 channels at 48 kHz).

        >>> ServiceConfig(max_upload_mb=1, max_duration=10).request_audio_bytes(1) // 1024
        3094
        """
        decoded = 4 * (int(self.max_duration * sample_rate) + 16 + 12000 * 9)
        return files * (2 * self.max_upload_bytes + decoded)


# ---------------------------------------------------------------------- response models (for OpenAPI)
class ErrorBody(BaseModel):
    """Every error: a stable code, a message naming the field, and the field (or null)."""

    code: str = Field(description="stable error code: " + ", ".join(ERROR_CODES))
    message: str
    field: Optional[str] = None


class Verification(BaseModel):
    score: float = Field(description="cosine similarity of the two embeddings, -1..1 (higher: more alike)")
    same_speaker: bool = Field(description="score >= threshold")
    threshold: float
    llr: Optional[float] = Field(None, description="calibrated log-likelihood ratio, when the model is calibrated")
    probability: Optional[float] = Field(None, description="calibrated probability of 'same speaker'")
    speaker: Optional[str] = None


class Candidate(BaseModel):
    name: str
    score: float


class Identification(BaseModel):
    name: Optional[str] = Field(description="the speaker, or null when unknown (best score below threshold)")
    score: Optional[float] = Field(description="best cosine score (null when nobody is enrolled)")
    unknown: bool
    threshold: float
    candidates: list[Candidate]
    enrolled: int
    llr: Optional[float] = None
    probability: Optional[float] = None
    rule: Optional[str] = Field(None, description="the open-set rule that decided: posterior, fpir or threshold")
    promise: Optional[str] = Field(None, description="what that rule promises, in words")
    gallery_size: Optional[int] = Field(None, description="enrolled speakers the decision was taken over")
    expected_fpir: Optional[float] = Field(None, description="share of strangers this decision names at this size")
    posteriors: Optional[dict[str, float]] = Field(None, description="posterior rule: the best speakers' posteriors")
    p_unknown: Optional[float] = Field(None, description="posterior rule: the posterior of 'someone else'")


class Speaker(BaseModel):
    name: str
    recordings: int
    warnings: Optional[list[str]] = Field(None, description="enrolment warnings (e.g. quality checks), if any")


class NewKey(BaseModel):
    scope: Literal["read", "write", "admin"] = Field(description="read, write or admin (each includes those before)")
    name: str = Field("", max_length=100, description="a label for the key (who or what uses it); no control chars")


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": ", ".join(c for c, (s, _) in ERROR_CODES.items() if s == status)}
    for status in (400, 401, 403, 404, 408, 409, 413, 422, 429, 503)
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route: the ones every ``/v1`` route may give (the guard's 400, 401, 408, 413, 429,
    503) and ``statuses``."""
    return {s: _ERROR_RESPONSES[s] for s in sorted({400, 401, 408, 413, 429, 503, *statuses})}


def _audio_body(files: dict[str, str], raw: bool, text: dict[str, str] | None = None) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for routes that read the body themselves (to bound its size while reading)."""
    props: dict[str, Any] = {k: {"type": "string", "format": "binary", "description": d} for k, d in files.items()}
    for k, d in (text or {}).items():
        props[k] = {"type": "string", "description": d}
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "properties": props, "required": list(props)}}
    }
    if raw:
        content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary", "description": "one recording as the raw body"}
        }
    return {"requestBody": {"required": True, "content": content}}


# ---------------------------------------------------------------------- audio
def plan_upload(data: bytes, field: str, config: ServiceConfig, sample_rate: int = 16000) -> Any:
    """Check one upload's size and header (nothing decoded yet); returns its :class:`~mvector.audio.DecodePlan`.

    The header states rate, channels and length, so a small compressed file that would decode into hours of
    audio is refused here. Raises :class:`ServiceError` (400 ``bad_audio``, 413 ``upload_too_large`` /
    ``audio_too_long``) naming ``field``.
    """
    from mvector.audio import plan_decode

    if len(data) > config.max_upload_bytes:
        raise ServiceError(
            413,
            "upload_too_large",
            f"field {field!r}: {len(data) / _MB:.1f} MB is over the {config.max_upload_mb:g} MB limit",
            field,
        )
    if not data:
        raise ServiceError(400, "bad_audio", f"field {field!r}: empty upload (0 bytes)", field)
    try:
        plan = plan_decode(data, sample_rate, config.max_duration)
    except AudioError as err:
        raise ServiceError(400, "bad_audio", f"field {field!r}: {err}".replace("<bytes>: ", ""), field) from None
    if math.isfinite(plan.seconds):  # an unstated length is bounded while decoding
        _check_duration(plan.seconds, field, config, exact=False)
    return plan


def decode_upload(
    data: bytes, field: str, config: ServiceConfig, sample_rate: int = 16000, plan: Any = None
) -> tuple[np.ndarray, int]:
    """Decode one upload into mono ``(samples, sample_rate)``, enforcing the size and duration limits.

    The header is checked first (:func:`plan_upload`); decoding then reads block by block, mixing to mono and
    resampling to ``sample_rate`` as it goes, and stops past ``max_duration`` (a header that understates the
    length gains nothing). Raises :class:`ServiceError` (400 ``bad_audio`` / ``audio_too_short``, 413
    ``upload_too_large`` / ``audio_too_long``) naming ``field``.

    >>> import io, soundfile
    >>> buf = io.BytesIO(); soundfile.write(buf, np.zeros((8000, 2), "float32"), 16000, format="WAV")
    >>> samples, rate = decode_upload(buf.getvalue(), "audio", ServiceConfig())
    >>> samples.shape, rate
    ((8000,), 16000)
    >>> decode_upload(b"not audio", "audio", ServiceConfig())
    Traceback (most recent call last):
    ...
    mvector.service.errors.ServiceError: field 'audio': cannot decode audio (Format not recognised)
    """
    from mvector.audio import decode_bounded

    plan = plan if plan is not None else plan_upload(data, field, config, sample_rate)
    try:
        samples, seconds = decode_bounded(data, plan)
    except AudioError as err:
        raise ServiceError(400, "bad_audio", f"field {field!r}: {err}".replace("<bytes>: ", ""), field) from None
    _check_duration(seconds, field, config, exact=True)
    return samples, plan.target_rate


def _check_duration(seconds: float, field: str, config: ServiceConfig, exact: bool) -> None:
    if seconds > config.max_duration + 1e-6:
        length = f"{seconds:.2f} s of audio is" if math.isfinite(seconds) else "the recording goes on"
        raise ServiceError(
            413, "audio_too_long", f"field {field!r}: {length} over the {config.max_duration:g} s limit", field
        )
    if exact and seconds < config.min_duration:
        raise ServiceError(
            400,
            "audio_too_short",
            f"field {field!r}: {seconds:.2f} s of audio is shorter than the {config.min_duration:g} s minimum",
            field,
        )


def _extras(result: Any) -> dict[str, Any]:
    """Calibrated attributes of a predictor result (``llr``, ``probability``, ...), where it has them."""
    out: dict[str, Any] = {}
    for name in _RESULT_EXTRAS:
        value = getattr(result, name, None)
        if value is None or callable(value):
            continue
        if isinstance(value, (bool, np.bool_)):
            out[name] = bool(value)
        elif isinstance(value, (int, float, np.number)):
            out[name] = float(value) if math.isfinite(float(value)) else None
        elif isinstance(value, str):
            out[name] = value
    return out


def _threshold_info(predictor: Any, config: ServiceConfig) -> dict[str, Any]:
    """The decision threshold and where it came from."""
    info: dict[str, Any] = {"value": float(predictor.threshold)}
    stated = getattr(predictor, "threshold_source", None) or getattr(predictor, "threshold_info", None)
    if config.threshold is not None:
        info["source"] = "set by the server operator (mvector serve --threshold)"
    elif stated:
        text = stated if isinstance(stated, str) else json.dumps(stated, default=str)
        folder = Path(predictor.model_path)
        for prefix in (str(folder.resolve().parent), str(folder.parent)):  # no server paths in answers
            if prefix not in ("", "."):
                text = text.replace(prefix + "/", "")
        info["source"] = text if isinstance(stated, str) else json.loads(text)
    else:
        info["source"] = "default (the model folder holds no evaluation result; run eval.py on it)"
        for name, what in (("result.json", "evaluation of the model (eval.py)"), ("meta.json", "export metadata")):
            path = Path(predictor.model_path) / name
            try:
                data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and data.get("threshold") is not None:
                info["source"] = f"{what}: {name}"
                info["evaluation"] = {
                    k: v for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
                }
                break
    return info


# ---------------------------------------------------------------------- the app
def create_app(
    config: ServiceConfig,
    predictor_factory: Callable[[], Any] | None = None,
) -> FastAPI:
    """Build the FastAPI app. The model loads in the background on start-up (``503 model_loading`` meanwhile).

    ``predictor_factory`` replaces the default ``MVectorPredictor(config.model_path, ...)`` (tests use it to make
    loading slow or to wrap the predictor).
    """
    if predictor_factory is None:
        if not config.model_path:
            raise ConfigError("model_path is required (mvector serve --model_path DIR)")

        def predictor_factory() -> Any:
            from mvector.inference.predictor import MVectorPredictor

            return MVectorPredictor(
                model_path=config.model_path,
                audio_db_path=config.audio_db_path,
                use_gpu=config.use_gpu,
                threshold=config.threshold,
                backend=config.backend,
                keep_audio=config.keep_audio,
            )

    def load() -> Any:
        predictor = predictor_factory()
        len(predictor.db)  # open the speaker database now: a database of another model fails the start-up
        return predictor

    store = KeyStore(config.audio_db_path, retention_days=config.audit_retention_days)
    budget = AudioBudget(config.max_audio_bytes, wait_s=config.audio_wait)
    worker = ModelWorker(load, max_queue=config.max_queue, max_batch=config.max_batch, threads=config.threads)
    decode_limiter = anyio.CapacityLimiter(config.decode_threads)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        if not store.list(include_revoked=False):
            log.warning(
                "no API keys yet: every /v1 route answers 401. Create one with: "
                "mvector keys create --audio_db_path %s --scope admin",
                config.audio_db_path,
            )
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(worker.close)
            store.close()

    app = FastAPI(
        title="mvector verification service",
        version=__version__,
        description=(
            "Speaker verification and identification over an mvector model. Send `Authorization: Bearer KEY` "
            "(create keys with `mvector keys create`). Scopes: read (embed, verify, identify, list), write (also "
            "enrol, delete), admin (also keys, audit). Errors are JSON `{code, message, field}`."
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs below is the package's own page (no CDN)
        redoc_url=None,
        responses={500: {"model": ErrorBody, "description": "internal_error"}},
    )
    app.state.config = config
    app.state.worker = worker
    app.state.keys = store
    app.state.audio_budget = budget
    refused: dict[str, int] = {}  # the guard's refusals by kind (401s have no key to audit them under)

    audio_routes = {
        ("POST", "/v1/embed"): 1,
        ("POST", "/v1/verify"): 2,
        ("POST", "/v1/identify"): 1,
        ("POST", "/v1/speakers"): config.max_files,
    }

    def body_limit(method: str, path: str) -> int:
        """The most bytes the body of ``method path`` may have (checked by the guard before and while reading)."""
        files = audio_routes.get((method, path))
        if files is None and method == "POST" and path.startswith("/v1/speakers/"):
            files = config.max_files if path.endswith("/recordings") else 1 if path.endswith("/verify") else None
        return _SMALL_BODY if files is None else config.max_upload_bytes * files + _FORM_OVERHEAD

    async def on_refusal(key: Any, client: str | None, method: str, path: str, status: int) -> None:
        if key is not None:  # an anonymous refusal has nobody to attribute it to: the guard counts it
            await anyio.to_thread.run_sync(
                lambda: _audit_safely(key, "refused", f"{method} {path}", status, "rate limited", client)
            )

    app.add_middleware(
        RequestGuard,
        authenticate=store.authenticate,
        body_limit=body_limit,
        max_requests=config.max_requests,
        body_timeout=config.body_timeout,
        refusal_limit=config.refusal_limit,
        budget=budget,
        on_refusal=on_refusal,
        counters=refused,
    )
    if config.cors_origins:  # added last, so it is outside the guard: preflight requests carry no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )

    # ------------------------------------------------------------------ errors
    def _json_error(err: ServiceError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, err: ServiceError) -> JSONResponse:
        return _json_error(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        code = codes.get(err.status_code, "bad_request")
        message = f"no route {request.method} {request.url.path}" if err.status_code == 404 else str(err.detail)
        status = err.status_code if code != "bad_request" else 400
        headers = dict(getattr(err, "headers", None) or {})
        if status == 405:  # Starlette names only the first matching route's methods; a path may have several
            headers["Allow"] = ", ".join(allowed_methods(request.url.path))
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
        return JSONResponse(error_body(code, message), status_code=status, headers=headers or None)

    def allowed_methods(path: str) -> list[str]:
        methods: set[str] = set()
        for route in app.router.routes:
            regex = getattr(route, "path_regex", None)
            if regex is not None and regex.match(path) and getattr(route, "methods", None):
                methods |= set(route.methods)
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = (err.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
        field_name = ".".join(loc) or None
        message = f"parameter {field_name!r}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body("invalid_parameter", message, field_name), status_code=400)

    folders = [Path(base) for base in (config.audio_db_path, config.model_path) if base]
    server_paths = sorted({str(p) for f in folders for p in (f, f.resolve())}, key=len, reverse=True)

    def public(message: str) -> str:
        """An error message without the server's folders (a client has no business knowing them)."""
        for path in server_paths:
            if path not in ("", "."):
                message = message.replace(path, Path(path).name)
        return message

    @app.exception_handler(MVectorError)
    async def _mvector_error(request: Request, err: MVectorError) -> JSONResponse:
        text = public(str(err))
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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "the server could not complete the request"), 500)

    # ------------------------------------------------------------------ auth
    bearer_dependency = Depends(HTTPBearer(auto_error=False, description="an API key from `mvector keys create`"))

    def _audit_safely(key: Any, action: str, target: str | None, status: int, detail: Any, client: str | None) -> None:
        try:
            store.audit(key, action, target, status, detail=detail, client=client)
        except KeyStoreError as err:  # the write itself happened; losing its audit line must be visible
            log.error("could not write the audit log: %s", err)

    def _audit(request: Request, key: KeyInfo | None, action: str, target: str | None, status: int, detail=None):
        _audit_safely(key, action, target, status, detail, client_of(request.scope))

    def require(scope: str, action: str | None = None):
        async def dependency(
            request: Request, credentials: Optional[HTTPAuthorizationCredentials] = bearer_dependency
        ) -> KeyInfo:
            # the guard checked the key before the body was read (its 401s never get here); ``credentials`` is
            # declared so that the OpenAPI description states the bearer scheme
            key = getattr(request.state, KEY_STATE, None)
            if key is None:  # only an app run without its guard
                raise ServiceError(401, "unauthorized", "no API key was checked for this request", "Authorization")
            if not scope_allows(key.scope, scope):
                if action is not None:
                    target = request.path_params.get("name") or request.path_params.get("key_id")
                    await anyio.to_thread.run_sync(lambda: _audit(request, key, action, target, 403, "scope"))
                raise ServiceError(
                    403,
                    "forbidden",
                    f"this route needs a key of scope '{scope}' or higher; key {key.key_id} has scope '{key.scope}'",
                    "Authorization",
                )
            return key

        return dependency

    read_key = Depends(require("read"))
    enrol_key = Depends(require("write", "enrol"))
    add_key = Depends(require("write", "add_recordings"))
    delete_key = Depends(require("write", "delete"))
    admin_key = Depends(require("admin"))
    create_key_key = Depends(require("admin", "create_key"))
    revoke_key_key = Depends(require("admin", "revoke_key"))

    # ------------------------------------------------------------------ request bodies
    async def read_body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ServiceError(400, "bad_request", "the Content-Length header is not a number") from None
            if size > limit:
                raise ServiceError(
                    413, "upload_too_large", f"the request body ({size / _MB:.1f} MB) is over the limit", "body"
                )
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ServiceError(413, "upload_too_large", "the request body is over the size limit", "body")
            await budget.reserve(request.scope["state"], len(chunk))  # held until the request ends
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_uploads(
        request: Request, files: dict[str, int], text: tuple[str, ...] = (), raw_field: str | None = None
    ) -> tuple[dict[str, list[bytes]], dict[str, str]]:
        """Uploaded files per field (``files``: field -> most allowed) and text fields, with every limit checked."""
        # only multipart bodies hold fields; anything else is one raw recording (curl --data-binary labels it
        # application/x-www-form-urlencoded, so that type is a raw recording too)
        multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
        if not multipart:
            if raw_field is None:
                raise ServiceError(
                    400,
                    "bad_request",
                    f"send the recordings as multipart/form-data fields: {', '.join(files)}",
                    next(iter(files)),
                )
            body = await read_body(request, config.max_upload_bytes)
            if not body:
                raise ServiceError(400, "missing_field", f"no recording: send a file field {raw_field!r} or a raw body")
            return {raw_field: [body]}, {}
        limit = config.max_upload_bytes * sum(files.values()) + _FORM_OVERHEAD
        body = await read_body(request, limit)
        await budget.reserve(request.scope["state"], len(body))  # the parsed parts are a second copy
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            parsed = Request(request.scope, receive)
            form = await parsed.form(max_files=100, max_fields=20, max_part_size=_FORM_OVERHEAD)
        except Exception as err:
            detail = getattr(err, "detail", None) or str(err) or type(err).__name__
            raise ServiceError(400, "bad_request", f"cannot parse the multipart body ({detail})") from None
        out: dict[str, list[bytes]] = {}
        try:
            for name, most in files.items():
                items = form.getlist(name)
                uploads = [f for f in items if not isinstance(f, str)]
                if len(uploads) > most:
                    raise ServiceError(
                        413, "too_many_files", f"field {name!r}: {len(uploads)} files, at most {most} per request", name
                    )
                out[name] = [await f.read() for f in uploads]
            fields = {name: form.get(name) for name in text if isinstance(form.get(name), str)}
        finally:
            await form.close()
        return out, fields

    async def decode(data: bytes, field_name: str) -> tuple[np.ndarray, int]:
        """Decode one upload once its decoded size (from the header) fits the shared audio budget."""
        rate = int(getattr(worker.predictor, "sample_rate", 16000) or 16000)
        plan = plan_upload(data, field_name, config, rate)
        owner = REQUEST_OWNER.get()
        if owner is not None:  # every request passes the guard, which releases the reservation when it ends
            await budget.reserve(owner, plan.peak_bytes)
        return await anyio.to_thread.run_sync(
            lambda: decode_upload(data, field_name, config, rate, plan=plan), limiter=decode_limiter
        )

    async def one_recording(request: Request) -> tuple[np.ndarray, int]:
        got, _ = await read_uploads(request, {"audio": 1}, raw_field="audio")
        if not got.get("audio"):
            raise ServiceError(400, "missing_field", "no recording: send a file field 'audio' or a raw body", "audio")
        return await decode(got["audio"][0], "audio")

    async def run_job(fn: Callable[[Any], Any]) -> Any:
        return await asyncio.wrap_future(worker.submit(fn))

    def checked_name(name: Any, field_name: str = "name") -> str:
        from mvector.inference.speaker_names import validate_name

        if name is None:
            message = f"field {field_name!r} (the speaker's name) is required"
            raise ServiceError(400, "missing_field", message, field_name)
        try:
            return validate_name(name)
        except SpeakerDBError as err:
            raise ServiceError(400, "invalid_name", f"field {field_name!r}: {err}", field_name) from None

    async def ready_predictor() -> Any:
        worker.check_ready()
        return worker.predictor

    async def known_speaker(predictor: Any, name: str) -> None:
        present = await anyio.to_thread.run_sync(lambda: name in predictor.db)
        if not present:
            raise ServiceError(404, "unknown_speaker", f"unknown speaker {name!r}: not enrolled", "name")

    # ------------------------------------------------------------------ public routes
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs_page() -> FileResponse:
        """The API reference: a page of this package rendering /openapi.json (no CDN, works offline)."""
        return FileResponse(STATIC_DIR / "docs.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", tags=["service"], summary="Liveness and readiness (no key needed)")
    async def health() -> JSONResponse:
        status = {"ready": "ok", "loading": "loading", "failed": "failed"}.get(worker.state, "stopping")
        return JSONResponse(
            {"status": status, "version": __version__}, status_code=200 if status == "ok" else 503
        )

    # ------------------------------------------------------------------ read routes
    @app.get("/v1/model", tags=["model"], summary="Model and threshold information", responses=_errors())
    async def model_info(key: KeyInfo = read_key) -> dict[str, Any]:
        if worker.state == "failed":
            raise ServiceError(503, "model_failed", public(f"the model could not be loaded: {worker.error}"))
        p = await ready_predictor()
        conf = p.configs
        count = await anyio.to_thread.run_sync(lambda: len(p.db))
        calibration = getattr(p, "calibration", None)
        return {
            "model": {
                "name": f"{conf.get('use_model')}_{(conf.get('preprocess_conf') or {}).get('feature_method')}",
                "backend": p.backend,
                "fingerprint": p.fingerprint,
                "embedding_size": p.embd_dim,
                "sample_rate": p.sample_rate,
                "max_duration_used": p.max_duration,
                "load_seconds": worker.load_seconds,
            },
            "threshold": _scrubbed(_threshold_info(p, config), public),
            "calibrated": calibration is not None,
            "score": "cosine similarity of speaker embeddings, -1..1; same speaker when score >= threshold",
            "speakers": count,
            "limits": {
                "max_upload_mb": config.max_upload_mb,
                "max_files": config.max_files,
                "max_duration_s": config.max_duration,
                "min_duration_s": config.min_duration,
                "max_queue": config.max_queue,
                "max_audio_mb": config.max_audio_mb,
                "max_requests": config.max_requests,
                "refusal_limit_per_minute": config.refusal_limit,
            },
            "audio_memory": {"held_mb": round(budget.held / _MB, 1), "refused": budget.refused},
            "refused_since_start": dict(refused),
            "queue": {"waiting": worker.queued, "jobs_done": worker.jobs_done, "batches": worker.batches},
            "threads": worker.threads or default_threads(),
            "uptime_s": round(time.time() - started, 1),
            "key": {"id": key.key_id, "scope": key.scope},
        }

    @app.post(
        "/v1/embed",
        tags=["verification"],
        summary="The speaker embedding of one recording",
        responses=_errors(400, 413),
        openapi_extra=_audio_body({"audio": "a recording"}, raw=True),
    )
    async def embed(request: Request, key: KeyInfo = read_key) -> dict[str, Any]:
        await ready_predictor()
        audio = await one_recording(request)
        emb = (await asyncio.wrap_future(worker.submit_embed([audio])))[0]
        return {"embedding": [float(x) for x in emb], "size": int(emb.shape[0])}

    @app.post(
        "/v1/verify",
        tags=["verification"],
        summary="Are two recordings the same speaker?",
        response_model=Verification,
        response_model_exclude_unset=True,
        responses=_errors(400, 413),
        openapi_extra=_audio_body({"audio1": "first recording", "audio2": "second recording"}, raw=False),
    )
    async def verify(
        request: Request,
        threshold: Optional[float] = Query(None, description="decision threshold (default: the model's)"),
        key: KeyInfo = read_key,
    ) -> dict[str, Any]:
        p = await ready_predictor()
        got, _ = await read_uploads(request, {"audio1": 1, "audio2": 1})
        for name in ("audio1", "audio2"):
            if not got.get(name):
                raise ServiceError(400, "missing_field", f"field {name!r} (a recording) is required", name)
        a = await decode(got["audio1"][0], "audio1")
        b = await decode(got["audio2"][0], "audio2")
        limit = p.threshold if threshold is None else _finite(threshold, "threshold")
        result = await run_job(lambda pr: pr.contrast(a, b, threshold=limit))
        score, same = result[0], result[1]
        return {"score": float(score), "same_speaker": bool(same), "threshold": float(limit), **_extras(result)}

    @app.post(
        "/v1/identify",
        tags=["identification"],
        summary="Who is speaking? The best enrolled speaker (or unknown) and the top-k candidates",
        response_model=Identification,
        response_model_exclude_unset=True,
        responses=_errors(400, 413),
        openapi_extra=_audio_body({"audio": "a recording"}, raw=True),
    )
    async def identify(
        request: Request,
        top_k: int = Query(1, ge=1, le=100, description="how many candidates to list"),
        threshold: Optional[float] = Query(None, description="decision threshold (default: the model's)"),
        key: KeyInfo = read_key,
    ) -> dict[str, Any]:
        p = await ready_predictor()
        audio = await one_recording(request)
        given = None if threshold is None else _finite(threshold, "threshold")

        def job(pr: Any) -> tuple[Any, list, int]:
            count = len(pr.db)
            if count == 0:
                return None, [], 0
            # the predictor's open-set rule decides (posterior / FPIR at this gallery size) unless a threshold is given
            best = pr.recognize(audio, threshold=given, candidates=top_k if top_k > 1 else 0)
            return best, (best.candidates if top_k > 1 else None), count

        best, hits, count = await run_job(job)
        if best is None:
            limit = p.threshold if given is None else given
            return {"name": None, "score": None, "unknown": True, "threshold": limit, "candidates": [], "enrolled": 0}
        name, score = best[0], float(best[1])
        if hits is None:  # top_k == 1: the answer is the only candidate (none when unknown)
            hits = [(name, score)] if name is not None else []
        extras = _extras(best)
        for key in ("rule", "promise", "gallery_size", "expected_fpir", "p_unknown"):
            value = getattr(best, key, None)
            if value is not None:
                extras[key] = value if isinstance(value, str) else float(value) if key != "gallery_size" else int(value)
        if getattr(best, "posteriors", None) is not None:
            extras["posteriors"] = {str(k): float(v) for k, v in best.posteriors.items()}
        return {
            "name": name,
            "score": score,
            "unknown": bool(extras.pop("unknown", name is None)),
            "threshold": float(best.threshold if best.threshold is not None else p.threshold),
            "candidates": [{"name": n, "score": float(s)} for n, s in hits],
            "enrolled": count,
            **extras,
        }

    @app.get(
        "/v1/speakers",
        tags=["speakers"],
        summary="Enrolled speakers",
        response_model=list[Speaker],
        response_model_exclude_none=True,
        responses=_errors(),
    )
    async def speakers(key: KeyInfo = read_key) -> list[dict[str, Any]]:
        p = await ready_predictor()

        def rows() -> list[dict[str, Any]]:
            out = []
            for n in p.db.names():
                try:
                    out.append({"name": n, "recordings": p.db.num_utterances(n)})
                except SpeakerDBError:  # removed meanwhile
                    continue
            return out

        return await anyio.to_thread.run_sync(rows)

    @app.get(
        "/v1/speakers/{name}",
        tags=["speakers"],
        summary="One enrolled speaker",
        response_model=Speaker,
        response_model_exclude_none=True,
        responses=_errors(400, 404),
    )
    async def speaker(name: str, key: KeyInfo = read_key) -> dict[str, Any]:
        p = await ready_predictor()
        name = checked_name(name)
        await known_speaker(p, name)
        return {"name": name, "recordings": await anyio.to_thread.run_sync(p.db.num_utterances, name)}

    @app.post(
        "/v1/speakers/{name}/verify",
        tags=["verification"],
        summary="Is this recording the enrolled speaker {name}?",
        response_model=Verification,
        response_model_exclude_unset=True,
        responses=_errors(400, 404, 413),
        openapi_extra=_audio_body({"audio": "a recording"}, raw=True),
    )
    async def verify_speaker(
        name: str,
        request: Request,
        threshold: Optional[float] = Query(None, description="decision threshold (default: the model's)"),
        key: KeyInfo = read_key,
    ) -> dict[str, Any]:
        p = await ready_predictor()
        name = checked_name(name)
        await known_speaker(p, name)
        audio = await one_recording(request)
        emb = (await asyncio.wrap_future(worker.submit_embed([audio])))[0]
        try:
            mean = await anyio.to_thread.run_sync(p.db.mean_embedding, name)
        except SpeakerDBError:  # removed while the recording was embedded
            raise ServiceError(404, "unknown_speaker", f"unknown speaker {name!r}: not enrolled", "name") from None
        limit = None if threshold is None else _finite(threshold, "threshold")
        result = p.decide(float(p.pair_score(emb, mean)), limit)  # calibrated LLR / probability when available
        return {
            "score": result.score,
            "same_speaker": result.same,
            "threshold": float(result.threshold),
            "speaker": name,
            **_extras(result),
        }

    # ------------------------------------------------------------------ write routes
    idempotency_header = idempotency_header_param()

    def not_enrolled(name: str) -> ServiceError:
        return ServiceError(404, "unknown_speaker", f"unknown speaker {name!r}: not enrolled", "name")

    def speaker_answer(name: str, notes: Callable[[], list[str]]) -> Callable[[int], dict[str, Any]]:
        def answer(count: int) -> dict[str, Any]:
            warned = [public(n) for n in notes()]
            return {"name": name, "recordings": count, **({"warnings": warned} if warned else {})}

        return answer

    async def enrol_recordings(request: Request, name_from_path: str | None) -> tuple[str, list[bytes]]:
        """The speaker's name (checked) and the uploaded recordings (not decoded yet)."""
        got, fields = await read_uploads(request, {"audio": config.max_files}, text=("name",), raw_field="audio")
        raw_name = name_from_path
        if raw_name is None:
            raw_name = fields.get("name", request.query_params.get("name"))
        request.state.raw_name = raw_name  # for the audit log, also when the name is refused
        name = checked_name(raw_name)
        if not got.get("audio"):
            raise ServiceError(400, "missing_field", "field 'audio' (one or more recordings) is required", "audio")
        return name, got["audio"]

    async def decode_all(uploads: list[bytes]) -> list:
        audios = []
        for i, data in enumerate(uploads):
            audios.append(await decode(data, "audio" if len(uploads) == 1 else f"audio[{i}]"))
        return audios

    async def write_speaker(
        p: Any, key: KeyInfo, idem: str | None, name: str, uploads: list[bytes], path: str, mode: str, status: int
    ) -> JSONResponse | dict[str, Any]:
        """Enrol (``mode="create"``) or add recordings (``"append"``): replay a stored answer, else decode, embed
        and write, with the existence check and the idempotency record in the write's transaction."""
        digest = request_hash("POST", path, [name.encode("utf-8"), *uploads])
        replay = await stored_answer(p.db, key.key_id, idem, digest)
        if replay is not None:
            return replay
        audios = await decode_all(uploads)

        def job(pr: Any) -> dict[str, Any]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")

                def notes() -> list[str]:
                    return list(dict.fromkeys(str(w.message) for w in caught))

                record, built = write_record(key.key_id, idem, digest, status, speaker_answer(name, notes))
                pr.register(name, audios, mode=mode, record=record)
            return built

        try:
            return await run_job(job)
        except Replayed as replayed:  # a retry with this key committed while this one was embedding
            return replay_or_refuse(replayed.stored, digest)
        except SpeakerExistsError:
            raise ServiceError(
                409,
                "speaker_exists",
                f"speaker {name!r} is already enrolled; add recordings with "
                f"POST /v1/speakers/{{name}}/recordings or delete it first",
                "name",
            ) from None
        except UnknownSpeakerError:  # removed before this write could take the lock
            raise not_enrolled(name) from None

    def answered(result: JSONResponse | dict[str, Any], request: Request) -> int | None:
        """The status of a replayed answer (for the audit log), or None for a fresh write."""
        if isinstance(result, JSONResponse):
            request.state.replayed = True
            return result.status_code
        return None

    @app.post(
        "/v1/speakers",
        tags=["speakers"],
        summary="Enrol a new speaker from one or more recordings",
        status_code=201,
        response_model=Speaker,
        response_model_exclude_none=True,
        responses=_errors(400, 403, 409, 413, 422),
        openapi_extra={
            **_audio_body(
                {"audio": "one or more recordings (repeat the field)"}, raw=True, text={"name": "the speaker's name"}
            ),
            "parameters": [
                {
                    "name": "name",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "the speaker's name when the body is one raw recording (else the form field)",
                }
            ],
        },
    )
    async def enrol(
        request: Request, key: KeyInfo = enrol_key, idempotency_key: Optional[str] = idempotency_header
    ) -> Any:
        target = None
        status = 500
        try:
            p = await ready_predictor()
            name, uploads = await enrol_recordings(request, None)
            target = name
            result = await write_speaker(p, key, idempotency_key, name, uploads, "/v1/speakers", "create", 201)
            status = answered(result, request) or 201
            return result
        except ServiceError as err:
            status = err.status
            raise
        finally:
            detail = "idempotent replay" if getattr(request.state, "replayed", False) else None
            await anyio.to_thread.run_sync(
                lambda: _audit(request, key, "enrol", target or _printable(request), status, detail)
            )

    @app.post(
        "/v1/speakers/{name}/recordings",
        tags=["speakers"],
        summary="Add recordings to an enrolled speaker",
        response_model=Speaker,
        response_model_exclude_none=True,
        responses=_errors(400, 403, 404, 413, 422),
        openapi_extra=_audio_body({"audio": "one or more recordings (repeat the field)"}, raw=True),
    )
    async def add_recordings(
        name: str,
        request: Request,
        key: KeyInfo = add_key,
        idempotency_key: Optional[str] = idempotency_header,
    ) -> Any:
        status = 500
        try:
            p = await ready_predictor()
            name = checked_name(name)
            if idempotency_key is None:  # a fast 404 (a retry of a committed write may find the speaker removed)
                await known_speaker(p, name)
            name, uploads = await enrol_recordings(request, name)
            path = f"/v1/speakers/{name}/recordings"
            result = await write_speaker(p, key, idempotency_key, name, uploads, path, "append", 200)
            status = answered(result, request) or 200
            return result
        except ServiceError as err:
            status = err.status
            raise
        finally:
            detail = "idempotent replay" if getattr(request.state, "replayed", False) else None
            await anyio.to_thread.run_sync(lambda: _audit(request, key, "add_recordings", name, status, detail))

    @app.delete(
        "/v1/speakers/{name}",
        tags=["speakers"],
        summary="Remove an enrolled speaker",
        responses=_errors(400, 403, 404, 422),
    )
    async def delete_speaker(
        name: str,
        request: Request,
        key: KeyInfo = delete_key,
        idempotency_key: Optional[str] = idempotency_header,
    ) -> Any:
        status = 500
        request_name = name
        try:
            p = await ready_predictor()
            name = checked_name(name)
            digest = request_hash("DELETE", f"/v1/speakers/{name}", [])
            result = await stored_answer(p.db, key.key_id, idempotency_key, digest)
            if result is None:
                record, built = write_record(key.key_id, idempotency_key, digest, 200, lambda _: {"removed": name})

                def remove() -> dict[str, Any]:
                    p.remove(name, record=record)
                    return built

                try:
                    result = await anyio.to_thread.run_sync(remove)
                except Replayed as replayed:
                    result = replay_or_refuse(replayed.stored, digest)
                except UnknownSpeakerError:
                    raise not_enrolled(name) from None
            status = answered(result, request) or 200
            return result
        except ServiceError as err:
            status = err.status
            raise
        finally:
            detail = "idempotent replay" if getattr(request.state, "replayed", False) else None
            await anyio.to_thread.run_sync(lambda: _audit(request, key, "delete", request_name, status, detail))

    # ------------------------------------------------------------------ admin routes
    @app.get("/v1/keys", tags=["keys"], summary="List API keys (never the keys themselves)", responses=_errors(403))
    async def list_keys(key: KeyInfo = admin_key) -> list[dict[str, Any]]:
        return [k.as_dict() for k in await anyio.to_thread.run_sync(store.list)]

    @app.post(
        "/v1/keys",
        tags=["keys"],
        summary="Create an API key (the key is shown once, in this response)",
        status_code=201,
        responses=_errors(400, 403),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": NewKey.model_json_schema()}},
            }
        },
    )
    async def create_key(request: Request, key: KeyInfo = create_key_key) -> dict[str, Any]:
        # the body is read here, after the key and its scope were checked (a declared body is read by FastAPI
        # before any dependency runs), and the guard caps it at 16 kB
        body = await new_key_body(request)
        try:
            info, token = await anyio.to_thread.run_sync(
                lambda: store.create(body.scope, body.name, created_by=key.key_id)
            )
        except KeyStoreError as err:
            reason = str(err)
            field_name = "scope" if "scope" in reason else "name"
            await anyio.to_thread.run_sync(lambda: _audit(request, key, "create_key", None, 400, reason))
            raise ServiceError(400, "invalid_parameter", f"field {field_name!r}: {reason}", field_name) from None
        await anyio.to_thread.run_sync(lambda: _audit(request, key, "create_key", info.key_id, 201, info.scope))
        return {**info.as_dict(), "key": token}

    async def new_key_body(request: Request) -> NewKey:
        raw = await read_body(request, _SMALL_BODY)
        try:
            return NewKey.model_validate_json(raw or b"null")
        except ValueError as err:
            errors = getattr(err, "errors", lambda: [])() or [{}]
            loc = ".".join(str(x) for x in errors[0].get("loc", ())) or None
            what = errors[0].get("msg", "not a JSON object with 'scope' and 'name'")
            raise ServiceError(
                400, "invalid_parameter", f"{'field ' + repr(loc) if loc else 'the JSON body'}: {what}", loc
            ) from None

    @app.delete(
        "/v1/keys/{key_id}",
        tags=["keys"],
        summary="Revoke an API key (not the one making the request)",
        responses=_errors(403, 404, 409),
    )
    async def revoke_key(key_id: str, request: Request, key: KeyInfo = revoke_key_key) -> dict[str, Any]:
        if key_id == key.key_id or key_id.startswith(f"mvk_{key.key_id}_"):  # never lock the caller out
            await anyio.to_thread.run_sync(lambda: _audit(request, key, "revoke_key", key_id, 409, "own key"))
            raise ServiceError(
                409,
                "key_in_use",
                "a key cannot revoke itself over HTTP (use another admin key, or: mvector keys revoke)",
                "key_id",
            )
        try:
            info = await anyio.to_thread.run_sync(store.revoke, key_id)
        except KeyStoreError:
            await anyio.to_thread.run_sync(lambda: _audit(request, key, "revoke_key", key_id, 404))
            raise ServiceError(404, "unknown_key", f"no API key with id {key_id!r}", "key_id") from None
        await anyio.to_thread.run_sync(lambda: _audit(request, key, "revoke_key", key_id, 200))
        return info.as_dict()

    @app.get("/v1/audit", tags=["keys"], summary="The audit log of writes, newest first", responses=_errors(403))
    async def audit_log(
        limit: int = Query(100, ge=1, le=10000),
        action: Optional[str] = Query(None, description="only this action (enrol, delete, create_key, ...)"),
        outcome: Literal["done", "refused", "all"] = Query(
            "done",
            description="writes that happened (default), refused requests (one row per key, client, action and "
            "status per hour, with a count), or both",
        ),
        key: KeyInfo = admin_key,
    ) -> list[dict[str, Any]]:
        entries = await anyio.to_thread.run_sync(lambda: store.audit_log(limit, action, outcome))
        return [e.as_dict() for e in entries]

    app.openapi = _stated_openapi(app)  # type: ignore[method-assign]
    return app


def _scrubbed(value: Any, public: Callable[[str], str]) -> Any:
    """``value`` with ``public`` applied to every string in it (no server paths in answers)."""
    if isinstance(value, str):
        return public(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v, public) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v, public) for v in value]
    return value


#: What the OpenAPI schema states about path parameters (the server checks them; see ``checked_name``).
_PATH_RULES: dict[str, dict[str, Any]] = {
    "name": {
        "pattern": r"^[^/\\\u0000-\u001f\u007f-\u009f]+$",
        "description": "a speaker name: 1..100 characters once surrounding white space is trimmed; no '/', "
        "'\\', control characters; not '.' or '..'; invisible, bidi-control and look-alike names are refused "
        "(400 invalid_name)",
    },
    "key_id": {"description": "the 12-hex-digit id of a key (as listed), or the whole key"},
}


def _stated_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with the rules of :data:`_PATH_RULES` written into every path parameter."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    for param in op.get("parameters", []):
                        rule = _PATH_RULES.get(param.get("name")) if param.get("in") == "path" else None
                        if rule:
                            param.setdefault("schema", {}).update({k: v for k, v in rule.items() if k != "description"})
                            param["description"] = rule["description"]
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _printable(request: Request) -> str | None:
    """The name a refused enrolment asked for, as a printable string (control characters escaped)."""
    raw = getattr(request.state, "raw_name", None)
    if raw is None:
        return request.query_params.get("name")
    return repr(raw)[1:-1] if not str(raw).isprintable() else str(raw)


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ServiceError(400, "invalid_parameter", f"parameter {name!r} must be a finite number", name)
    return value
