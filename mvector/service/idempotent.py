"""The service side of idempotent writes: the ``Idempotency-Key`` header, replaying a stored answer, 422 on reuse.

The records themselves live in the speaker database, written in the same transaction as the write they answer
(:mod:`mvector.inference.idempotency`); this module turns them into HTTP answers.

>>> from mvector.inference.idempotency import StoredAnswer
>>> answer = replay_or_refuse(StoredAnswer("h1", 201, {"name": "alice", "recordings": 1}, 0.0), "h1")
>>> answer.status_code, answer.headers["Idempotent-Replayed"]
(201, 'true')
>>> replay_or_refuse(StoredAnswer("h1", 201, {}, 0.0), "h2")
Traceback (most recent call last):
...
mvector.service.errors.ServiceError: this Idempotency-Key was already used with another request (another method, \
path or body); use a new key for a new request
"""

from __future__ import annotations

from typing import Any, Callable

import anyio
from fastapi import Header
from fastapi.responses import JSONResponse

from mvector.inference.idempotency import RETENTION_SECONDS, IdempotentWrite, StoredAnswer
from mvector.service.errors import ServiceError

__all__ = ["HEADER", "idempotency_header", "replay_or_refuse", "stored_answer", "write_record"]

HEADER = "Idempotency-Key"


def idempotency_header() -> Any:
    """The optional ``Idempotency-Key`` header parameter of a write route (documented in the OpenAPI schema)."""
    return Header(
        None,
        alias=HEADER,
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description=(
            "a client-chosen key (1-255 visible ASCII characters, e.g. a UUID) that makes this write idempotent: "
            "a retry with the same key and the same request gets the first answer (header Idempotent-Replayed: "
            f"true) and writes nothing again; the same key with another request gets 422. Kept "
            f"{RETENTION_SECONDS // 3600} h, per API key"
        ),
    )


def replay_or_refuse(stored: StoredAnswer, digest: str) -> JSONResponse:
    """The answer a retry gets: the stored one, or 422 ``idempotency_key_reused`` for another request."""
    if not stored.matches(digest):
        raise ServiceError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with another request (another method, path or body); "
            "use a new key for a new request",
            HEADER,
        )
    return JSONResponse(stored.answer, status_code=stored.status, headers={"Idempotent-Replayed": "true"})


async def stored_answer(db: Any, owner: str, key: str | None, digest: str) -> JSONResponse | None:
    """Before any work: the replayed answer (or 422) when ``key`` was stored with a committed write, else None."""
    if key is None:
        return None
    stored = await anyio.to_thread.run_sync(db.idempotent_answer, owner, key)
    return None if stored is None else replay_or_refuse(stored, digest)


def write_record(
    owner: str, key: str | None, digest: str, status: int, answer: Callable[[int], dict[str, Any]]
) -> tuple[IdempotentWrite, dict[str, Any]]:
    """The record a write carries, and the dict its answer lands in: the answer is built inside the write's
    transaction (from the speaker's recording count as the write left it) and stored there when ``key`` is given.

    >>> record, built = write_record("key-1", None, "h", 200, lambda n: {"recordings": n})
    >>> record.answer(3), built
    ({'recordings': 3}, {'recordings': 3})
    """
    built: dict[str, Any] = {}

    def build(count: int) -> dict[str, Any]:
        built.update(answer(count))
        return dict(built)

    return IdempotentWrite(owner, key, digest, status, build), built
