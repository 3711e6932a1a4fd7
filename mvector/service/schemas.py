"""What the OpenAPI description states: the JSON bodies of answers and requests, the error answers of a route and
the request body of routes that read their uploads themselves.

>>> sorted(error_responses(404))
[400, 401, 404, 408, 413, 429, 503]
>>> list(audio_body({"audio": "a recording"}, raw=True)["requestBody"]["content"])
['multipart/form-data', 'application/octet-stream']
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from mvector.service.errors import ERROR_CODES

__all__ = [
    "ErrorBody",
    "Verification",
    "Candidate",
    "Identification",
    "Speaker",
    "NewKey",
    "error_responses",
    "audio_body",
]


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
    galleries: Optional[list[str]] = Field(
        None, max_length=100, description="the only galleries a read or write key may use (default: every gallery)"
    )


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": ", ".join(c for c, (s, _) in ERROR_CODES.items() if s == status)}
    for status in (400, 401, 403, 404, 408, 409, 413, 422, 429, 503)
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route: the ones every ``/v1`` route may give (the guard's 400, 401, 408, 413, 429,
    503) and ``statuses``."""
    return {s: _ERROR_RESPONSES[s] for s in sorted({400, 401, 408, 413, 429, 503, *statuses})}


def audio_body(files: dict[str, str], raw: bool, text: dict[str, str] | None = None) -> dict[str, Any]:
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
