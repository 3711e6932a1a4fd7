"""The enrolled speakers: list and show them (``read``), verify a recording against one (``read``), enrol, add
recordings and delete (``write``, audited, idempotent with an ``Idempotency-Key``).

>>> sorted({route.path for route in router.routes})
['/v1/speakers', '/v1/speakers/{name}', '/v1/speakers/{name}/recordings', '/v1/speakers/{name}/verify']
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import anyio
from fastapi import APIRouter, Depends, Request

from mvector.errors import SpeakerDBError, UnknownSpeakerError
from mvector.inference.idempotency import Replayed, request_hash
from mvector.service.auth import audited_write, require
from mvector.service.galleries import use_gallery
from mvector.service.idempotent import idempotency_header, replay_or_refuse, stored_answer, write_record
from mvector.service.keys import KeyInfo
from mvector.service.results import finite_parameter, result_extras, threshold_query
from mvector.service.schemas import Speaker, Verification, audio_body, error_responses
from mvector.service.speaker_ops import (
    checked_name,
    enrol_recordings,
    known_speaker,
    not_enrolled,
    printable_name,
    write_speaker,
)
from mvector.service.state import service_state
from mvector.service.uploads import one_recording

__all__ = ["router"]

router = APIRouter()
_READ = Depends(require("read"))
_ENROL = Depends(require("write", "enrol"))
_ADD = Depends(require("write", "add_recordings"))
_DELETE = Depends(require("write", "delete"))
_IDEMPOTENCY = idempotency_header()
_GALLERY = use_gallery()  # reads: the gallery must exist
_GALLERY_ENROL = use_gallery("enrol", must_exist=False)  # an enrolment creates its gallery
_GALLERY_ADD = use_gallery("add_recordings")
_GALLERY_DELETE = use_gallery("delete")
_ENROL_BODY = {
    **audio_body({"audio": "one or more recordings (repeat the field)"}, raw=True, text={"name": "the speaker's name"}),
    "parameters": [
        {
            "name": "name",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "the speaker's name when the body is one raw recording (else the form field)",
        }
    ],
}


@router.get(
    "/v1/speakers",
    tags=["speakers"],
    summary="Enrolled speakers",
    response_model=list[Speaker],
    response_model_exclude_none=True,
    responses=error_responses(403, 404),
)
async def speakers(request: Request, key: KeyInfo = _READ, gallery: str = _GALLERY) -> list[dict[str, Any]]:
    p = await service_state(request).ready_predictor()

    def rows() -> list[dict[str, Any]]:
        db = p.gallery_db(gallery)
        out = []
        for n in db.names():
            try:
                out.append({"name": n, "recordings": db.num_utterances(n)})
            except SpeakerDBError:  # removed meanwhile
                continue
        return out

    return await anyio.to_thread.run_sync(rows)


@router.get(
    "/v1/speakers/{name}",
    tags=["speakers"],
    summary="One enrolled speaker",
    response_model=Speaker,
    response_model_exclude_none=True,
    responses=error_responses(400, 403, 404),
)
async def speaker(name: str, request: Request, key: KeyInfo = _READ, gallery: str = _GALLERY) -> dict[str, Any]:
    p = await service_state(request).ready_predictor()
    name = checked_name(name)
    await known_speaker(p, name, gallery)
    count = await anyio.to_thread.run_sync(lambda: p.gallery_db(gallery).num_utterances(name))
    return {"name": name, "recordings": count}


@router.post(
    "/v1/speakers/{name}/verify",
    tags=["verification"],
    summary="Is this recording the enrolled speaker {name}?",
    response_model=Verification,
    response_model_exclude_unset=True,
    responses=error_responses(400, 403, 404, 413),
    openapi_extra=audio_body({"audio": "a recording"}, raw=True),
)
async def verify_speaker(
    name: str,
    request: Request,
    threshold: Optional[float] = threshold_query(),
    key: KeyInfo = _READ,
    gallery: str = _GALLERY,
) -> dict[str, Any]:
    state = service_state(request)
    p = await state.ready_predictor()
    name = checked_name(name)
    limit = None if threshold is None else finite_parameter(threshold, "threshold")  # before any audio is read
    await known_speaker(p, name, gallery)
    audio = await one_recording(request)
    emb = (await asyncio.wrap_future(state.worker.submit_embed([audio])))[0]
    try:
        mean = await anyio.to_thread.run_sync(lambda: p.gallery_db(gallery).mean_embedding(name))
    except SpeakerDBError:  # removed while the recording was embedded
        raise not_enrolled(name) from None
    result = p.decide(float(p.pair_score(emb, mean)), limit)  # calibrated LLR / probability when available
    return {
        "score": result.score,
        "same_speaker": result.same_speaker,
        "threshold": float(result.threshold),
        "speaker": name,
        **result_extras(result, state.public),
    }


@router.post(
    "/v1/speakers",
    tags=["speakers"],
    summary="Enrol a new speaker from one or more recordings",
    status_code=201,
    response_model=Speaker,
    response_model_exclude_none=True,
    responses=error_responses(400, 403, 409, 413, 422),
    openapi_extra=_ENROL_BODY,
)
async def enrol(
    request: Request,
    key: KeyInfo = _ENROL,
    gallery: str = _GALLERY_ENROL,
    idempotency_key: Optional[str] = _IDEMPOTENCY,
) -> Any:
    async with audited_write(request, key, "enrol", fallback=lambda: printable_name(request)) as write:
        await service_state(request).ready_predictor()
        name, uploads = await enrol_recordings(request, None)
        write.target = name
        result = await write_speaker(request, key, idempotency_key, name, uploads, "create", 201, gallery)
        return write.answered(result, 201)


@router.post(
    "/v1/speakers/{name}/recordings",
    tags=["speakers"],
    summary="Add recordings to an enrolled speaker",
    response_model=Speaker,
    response_model_exclude_none=True,
    responses=error_responses(400, 403, 404, 413, 422),
    openapi_extra=audio_body({"audio": "one or more recordings (repeat the field)"}, raw=True),
)
async def add_recordings(
    name: str,
    request: Request,
    key: KeyInfo = _ADD,
    gallery: str = _GALLERY_ADD,
    idempotency_key: Optional[str] = _IDEMPOTENCY,
) -> Any:
    async with audited_write(request, key, "add_recordings", name) as write:
        p = await service_state(request).ready_predictor()
        name = write.target = checked_name(name)
        if idempotency_key is None:  # a fast 404 (a retry of a committed write may find the speaker removed)
            await known_speaker(p, name, gallery)
        name, uploads = await enrol_recordings(request, name)
        result = await write_speaker(request, key, idempotency_key, name, uploads, "append", 200, gallery)
        return write.answered(result, 200)


@router.delete(
    "/v1/speakers/{name}",
    tags=["speakers"],
    summary="Remove an enrolled speaker",
    responses=error_responses(400, 403, 404, 422),
)
async def delete_speaker(
    name: str,
    request: Request,
    key: KeyInfo = _DELETE,
    gallery: str = _GALLERY_DELETE,
    idempotency_key: Optional[str] = _IDEMPOTENCY,
) -> Any:
    async with audited_write(request, key, "delete", name) as write:
        p = await service_state(request).ready_predictor()
        checked = checked_name(name)
        digest = request_hash("DELETE", f"/v1/speakers/{checked}", [])
        db = await anyio.to_thread.run_sync(p.gallery_db, gallery)
        result = await stored_answer(db, key.key_id, idempotency_key, digest)
        if result is None:
            record, built = write_record(key.key_id, idempotency_key, digest, 200, lambda _: {"removed": checked})

            def remove() -> dict[str, Any]:
                p.remove(checked, record=record, gallery=gallery)
                return built

            try:
                result = await anyio.to_thread.run_sync(remove)
            except Replayed as replayed:
                result = replay_or_refuse(replayed.stored, digest)
            except UnknownSpeakerError:
                raise not_enrolled(checked) from None
        return write.answered(result, 200)
