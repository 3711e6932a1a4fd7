"""The steps of the speaker routes: the name check, the existence check, reading an enrolment's recordings, and the
idempotent write (enrol or add recordings) with its stored answer for a retry.

>>> checked_name("  Alice ")
'Alice'
>>> checked_name(None)
Traceback (most recent call last):
...
mvector.service.errors.ServiceError: field 'name' (the speaker's name) is required
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse

from mvector.errors import SpeakerDBError, SpeakerExistsError, UnknownSpeakerError
from mvector.inference.idempotency import Replayed, request_hash
from mvector.service.errors import ServiceError
from mvector.service.idempotent import replay_or_refuse, stored_answer, write_record
from mvector.service.keys import KeyInfo
from mvector.service.state import service_state
from mvector.service.uploads import decode_all, read_uploads

__all__ = [
    "checked_name",
    "not_enrolled",
    "known_speaker",
    "enrol_recordings",
    "write_speaker",
    "printable_name",
]


def checked_name(name: Any, field_name: str = "name") -> str:
    """``name`` checked by the speaker-name rule, or 400 (``missing_field`` / ``invalid_name``) naming the field."""
    from mvector.inference.speaker_names import validate_name

    if name is None:
        message = f"field {field_name!r} (the speaker's name) is required"
        raise ServiceError(400, "missing_field", message, field_name)
    try:
        return validate_name(name)
    except SpeakerDBError as err:
        raise ServiceError(400, "invalid_name", f"field {field_name!r}: {err}", field_name) from None


def not_enrolled(name: str) -> ServiceError:
    """The 404 ``unknown_speaker`` answer for ``name``."""
    return ServiceError(404, "unknown_speaker", f"unknown speaker {name!r}: not enrolled", "name")


async def known_speaker(predictor: Any, name: str, gallery: str) -> None:
    """Nothing when ``name`` is enrolled in ``gallery``, else 404 ``unknown_speaker``."""
    present = await anyio.to_thread.run_sync(lambda: name in predictor.gallery_db(gallery))
    if not present:
        raise not_enrolled(name)


async def enrol_recordings(request: Request, name_from_path: str | None) -> tuple[str, list[bytes]]:
    """The speaker's name (checked) and the uploaded recordings (not decoded yet)."""
    max_files = service_state(request).config.max_files
    got, fields = await read_uploads(request, {"audio": max_files}, text=("name",), raw_field="audio")
    raw_name = name_from_path
    if raw_name is None:
        raw_name = fields.get("name", request.query_params.get("name"))
    request.state.raw_name = raw_name  # for the audit log, also when the name is refused
    name = checked_name(raw_name)
    if not got.get("audio"):
        raise ServiceError(400, "missing_field", "field 'audio' (one or more recordings) is required", "audio")
    return name, got["audio"]


def _speaker_answer(
    name: str, notes: Callable[[], list[str]], public: Callable[[str], str]
) -> Callable[[int], dict[str, Any]]:
    def answer(count: int) -> dict[str, Any]:
        warned = [public(n) for n in notes()]
        return {"name": name, "recordings": count, **({"warnings": warned} if warned else {})}

    return answer


async def write_speaker(
    request: Request, key: KeyInfo, idem: str | None, name: str, uploads: list[bytes], mode: str, status: int,
    gallery: str,
) -> JSONResponse | dict[str, Any]:
    """Enrol (``mode="create"``) or add recordings (``"append"``) in ``gallery``: replay a stored answer, else
    decode, embed and write, with the existence check and the idempotency record in the write's transaction."""
    state = service_state(request)
    path = "/v1/speakers" if mode == "create" else f"/v1/speakers/{name}/recordings"
    digest = request_hash("POST", path, [name.encode("utf-8"), *uploads])
    db = await anyio.to_thread.run_sync(state.worker.predictor.gallery_db, gallery)
    replay = await stored_answer(db, key.key_id, idem, digest)
    if replay is not None:
        return replay
    audios = await decode_all(request, uploads)

    def job(pr: Any) -> dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            def notes() -> list[str]:
                return list(dict.fromkeys(str(w.message) for w in caught))

            answer = _speaker_answer(name, notes, state.public)
            record, built = write_record(key.key_id, idem, digest, status, answer)
            pr.register(name, audios, mode=mode, record=record, gallery=gallery)
        return built

    try:
        return await state.run_job(job)
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


def printable_name(request: Request) -> str | None:
    """The name a refused enrolment asked for, as a printable string (control characters escaped)."""
    raw = getattr(request.state, "raw_name", None)
    if raw is None:
        return request.query_params.get("name")
    return repr(raw)[1:-1] if not str(raw).isprintable() else str(raw)
