"""Reading uploads: the request body under its size cap, multipart fields or one raw recording, and each
recording's header check and bounded decode, with the audio memory it needs reserved in the shared budget first.

:func:`body_limit` is the cap the request guard applies to each route before a byte is read; :func:`read_uploads`
checks it again while reading. Every refusal is a :class:`ServiceError` naming the field.

>>> from mvector.service.settings import ServiceConfig
>>> limit = body_limit(ServiceConfig(max_upload_mb=1, max_files=3))
>>> limit("POST", "/v1/verify") == 2 * MB + FORM_OVERHEAD, limit("GET", "/v1/speakers") == SMALL_BODY
(True, True)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import anyio
import numpy as np
from fastapi import Request

from mvector.errors import AudioError
from mvector.service.budget import REQUEST_OWNER
from mvector.service.errors import ServiceError
from mvector.service.settings import FORM_OVERHEAD, MB, SMALL_BODY, ServiceConfig
from mvector.service.state import service_state

__all__ = [
    "plan_upload",
    "decode_upload",
    "body_limit",
    "read_body",
    "read_uploads",
    "decode",
    "decode_all",
    "one_recording",
]


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
            f"field {field!r}: {len(data) / MB:.1f} MB is over the {config.max_upload_mb:g} MB limit",
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


def body_limit(config: ServiceConfig) -> Callable[[str, str], int]:
    """The guard's ``body_limit(method, path)``: the most bytes the body of a route may have (uploads: their
    count times ``max_upload_mb`` plus the form's overhead; any other route :data:`SMALL_BODY`)."""
    audio_routes = {
        ("POST", "/v1/embed"): 1,
        ("POST", "/v1/verify"): 2,
        ("POST", "/v1/identify"): 1,
        ("POST", "/v1/speakers"): config.max_files,
    }

    def limit(method: str, path: str) -> int:
        files = audio_routes.get((method, path))
        if files is None and method == "POST" and path.startswith("/v1/speakers/"):
            files = config.max_files if path.endswith("/recordings") else 1 if path.endswith("/verify") else None
        return SMALL_BODY if files is None else config.max_upload_bytes * files + FORM_OVERHEAD

    return limit


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refused (413 ``upload_too_large``) past ``limit`` bytes, declared or sent; every
    chunk is reserved in the audio budget until the request ends."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ServiceError(400, "bad_request", "the Content-Length header is not a number") from None
        if size > limit:
            raise ServiceError(
                413, "upload_too_large", f"the request body ({size / MB:.1f} MB) is over the limit", "body"
            )
    budget = service_state(request).budget
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
    config = service_state(request).config
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
    body = await read_body(request, config.max_upload_bytes * sum(files.values()) + FORM_OVERHEAD)
    await service_state(request).budget.reserve(request.scope["state"], len(body))  # the parsed parts: a 2nd copy
    form = await _parse_form(request, body)
    out: dict[str, list[bytes]] = {}
    try:
        for name, most in files.items():
            uploads = [f for f in form.getlist(name) if not isinstance(f, str)]
            if len(uploads) > most:
                raise ServiceError(
                    413, "too_many_files", f"field {name!r}: {len(uploads)} files, at most {most} per request", name
                )
            out[name] = [await f.read() for f in uploads]
        fields = {name: form.get(name) for name in text if isinstance(form.get(name), str)}
    finally:
        await form.close()
    return out, fields


async def _parse_form(request: Request, body: bytes) -> Any:
    """The multipart form in ``body`` (already read and capped), or 400 ``bad_request`` naming what is wrong."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        parsed = Request(request.scope, receive)
        return await parsed.form(max_files=100, max_fields=20, max_part_size=FORM_OVERHEAD)
    except Exception as err:
        detail = getattr(err, "detail", None) or str(err) or type(err).__name__
        raise ServiceError(400, "bad_request", f"cannot parse the multipart body ({detail})") from None


async def decode(request: Request, data: bytes, field_name: str) -> tuple[np.ndarray, int]:
    """Decode one upload once its decoded size (from the header) fits the shared audio budget."""
    state = service_state(request)
    rate = int(getattr(state.worker.predictor, "sample_rate", 16000) or 16000)
    plan = plan_upload(data, field_name, state.config, rate)
    owner = REQUEST_OWNER.get()
    if owner is not None:  # every request passes the guard, which releases the reservation when it ends
        await state.budget.reserve(owner, plan.peak_bytes)
    return await anyio.to_thread.run_sync(
        lambda: decode_upload(data, field_name, state.config, rate, plan=plan), limiter=state.decode_limiter
    )


async def decode_all(request: Request, uploads: list[bytes]) -> list[tuple[np.ndarray, int]]:
    """Decode several uploads of the field ``audio`` (named ``audio[i]`` in errors when there are several)."""
    audios = []
    for i, data in enumerate(uploads):
        audios.append(await decode(request, data, "audio" if len(uploads) == 1 else f"audio[{i}]"))
    return audios


async def one_recording(request: Request) -> tuple[np.ndarray, int]:
    """The one recording of a route (file field ``audio`` or the raw body), decoded."""
    got, _ = await read_uploads(request, {"audio": 1}, raw_field="audio")
    if not got.get("audio"):
        raise ServiceError(400, "missing_field", "no recording: send a file field 'audio' or a raw body", "audio")
    return await decode(request, got["audio"][0], "audio")
