"""Questions about recordings: ``POST /v1/embed`` (one recording's embedding), ``POST /v1/verify`` (are two
recordings the same speaker?) and ``POST /v1/identify`` (who among the enrolled speakers is this?). All need a
``read`` key; the model work runs on the service's model worker.

>>> sorted(route.path for route in router.routes)
['/v1/embed', '/v1/identify', '/v1/verify']
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

from fastapi import APIRouter, Depends, Query, Request

from mvector.service.auth import require
from mvector.service.errors import ServiceError
from mvector.service.galleries import among_names, among_param, use_gallery
from mvector.service.keys import KeyInfo
from mvector.service.results import finite_parameter, result_extras, threshold_query
from mvector.service.schemas import Identification, Verification, audio_body, error_responses
from mvector.service.state import service_state
from mvector.service.uploads import decode, one_recording, read_uploads

__all__ = ["router", "identification_answer"]

router = APIRouter()
_READ = Depends(require("read"))
_GALLERY = use_gallery()
_AMONG = among_param()


@router.post(
    "/v1/embed",
    tags=["verification"],
    summary="The speaker embedding of one recording",
    responses=error_responses(400, 413),
    openapi_extra=audio_body({"audio": "a recording"}, raw=True),
)
async def embed(request: Request, key: KeyInfo = _READ) -> dict[str, Any]:
    state = service_state(request)
    await state.ready_predictor()
    audio = await one_recording(request)
    emb = (await asyncio.wrap_future(state.worker.submit_embed([audio])))[0]
    return {"embedding": [float(x) for x in emb], "size": int(emb.shape[0])}


@router.post(
    "/v1/verify",
    tags=["verification"],
    summary="Are two recordings the same speaker?",
    response_model=Verification,
    response_model_exclude_unset=True,
    responses=error_responses(400, 413),
    openapi_extra=audio_body({"audio1": "first recording", "audio2": "second recording"}, raw=False),
)
async def verify(
    request: Request, threshold: Optional[float] = threshold_query(), key: KeyInfo = _READ
) -> dict[str, Any]:
    state = service_state(request)
    p = await state.ready_predictor()
    limit = p.threshold if threshold is None else finite_parameter(threshold, "threshold")  # before the uploads
    got, _ = await read_uploads(request, {"audio1": 1, "audio2": 1})
    for name in ("audio1", "audio2"):
        if not got.get(name):
            raise ServiceError(400, "missing_field", f"field {name!r} (a recording) is required", name)
    a = await decode(request, got["audio1"][0], "audio1")
    b = await decode(request, got["audio2"][0], "audio2")
    result = await state.run_job(lambda pr: pr.contrast(a, b, threshold=limit))
    score, same = result[0], result[1]
    extras = result_extras(result, state.public)
    return {"score": float(score), "same_speaker": bool(same), "threshold": float(limit), **extras}


@router.post(
    "/v1/identify",
    tags=["identification"],
    summary="Who is speaking? The best enrolled speaker (or unknown) and the top-k candidates",
    response_model=Identification,
    response_model_exclude_unset=True,
    responses=error_responses(400, 403, 404, 413),
    openapi_extra=audio_body({"audio": "a recording"}, raw=True),
)
async def identify(
    request: Request,
    top_k: int = Query(1, ge=1, le=100, description="how many candidates to list"),
    threshold: Optional[float] = threshold_query(),
    among: Optional[list[str]] = _AMONG,
    key: KeyInfo = _READ,
    gallery: str = _GALLERY,
) -> dict[str, Any]:
    state = service_state(request)
    p = await state.ready_predictor()
    names = among_names(among)
    audio = await one_recording(request)
    given = None if threshold is None else finite_parameter(threshold, "threshold")

    def job(pr: Any) -> tuple[Any, list, int]:
        count = len(pr.gallery_db(gallery))
        if count == 0:
            return None, [], 0
        # the predictor's open-set rule decides (posterior / FPIR at this gallery size) unless a threshold is given
        top = top_k if top_k > 1 else 0
        best = pr.recognize(audio, threshold=given, candidates=top, gallery=gallery, among=names)
        return best, (best.candidates if top_k > 1 else None), count

    best, hits, count = await state.run_job(job)
    if best is None:
        limit = p.threshold if given is None else given
        return {"name": None, "score": None, "unknown": True, "threshold": limit, "candidates": [], "enrolled": 0}
    return identification_answer(best, hits, count, p.threshold, state.public)


def identification_answer(
    best: Any, hits: list | None, count: int, default_threshold: float, public: Callable[[str], str] = str
) -> dict[str, Any]:
    """The JSON of a recognition ``best`` over ``count`` enrolled speakers (``hits``: its candidates, None for
    top-1), with the open-set rule's attributes where the result has them; texts pass through ``public``."""
    name, score = best[0], float(best[1])
    if hits is None:  # top_k == 1: the answer is the only candidate (none when unknown)
        hits = [(name, score)] if name is not None else []
    extras = result_extras(best, public)
    for attr in ("rule", "promise", "gallery_size", "expected_fpir", "p_unknown"):
        value = getattr(best, attr, None)
        if isinstance(value, str):
            extras[attr] = public(value)
        elif value is not None:
            extras[attr] = int(value) if attr == "gallery_size" else float(value)
    if getattr(best, "posteriors", None) is not None:
        extras["posteriors"] = {str(k): float(v) for k, v in best.posteriors.items()}
    return {
        "name": name,
        "score": score,
        "unknown": bool(extras.pop("unknown", name is None)),
        "threshold": float(best.threshold if best.threshold is not None else default_threshold),
        "candidates": [{"name": n, "score": float(s)} for n, s in hits],
        "enrolled": count,
        **extras,
    }
