"""Idempotent writes: a write tagged with a client's key is done once; a retry gets the first answer.

A client that lost the answer to a write (the connection dropped, the server died after the commit) retries with
the same ``Idempotency-Key``. The speaker database stores ``(owner, key) -> (request hash, status, answer)`` in the
*same transaction* as the write it answers, so a record exists exactly when the write committed:

* the key is new: the write happens and its answer is stored with it;
* the key is stored with the same request hash: nothing is written again, the stored status and answer are
  returned (:class:`Replayed` inside a write; the store's ``answer`` before doing any work);
* the key is stored with another request hash: the key was reused for another request (the service answers 422).

Records are scoped per ``owner`` (the service uses the API key's id, so two clients cannot see or block each
other's keys) and kept :data:`RETENTION_SECONDS` (24 hours); older ones are purged by later writes.

>>> record = IdempotentWrite("key1", "retry-7", request_hash("POST", "/v1/speakers", [b"alice"]), 201,
...                          lambda count: {"name": "alice", "recordings": count})
>>> record.answer(2)
{'name': 'alice', 'recordings': 2}
>>> request_hash("POST", "/v1/speakers", [b"alice"]) == record.request_hash
True

The records are kept by the gallery store (:mod:`mvector.store`): :meth:`~mvector.store.base.GalleryWrite.answer`
and :meth:`~mvector.store.base.GalleryWrite.keep_answer` inside the write's transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from mvector.errors import SpeakerDBError
from mvector.store.base import StoredAnswer

__all__ = [
    "RETENTION_SECONDS",
    "IdempotentWrite",
    "Replayed",
    "StoredAnswer",
    "request_hash",
]

#: How long a stored answer is replayed (seconds).
RETENTION_SECONDS = 24 * 3600


@dataclass(frozen=True)
class IdempotentWrite:
    """What a write stores with itself: ``answer(count)`` builds the answer from the speaker's recording count
    after the write (0 after a removal), inside the write's transaction. With ``key=None`` the answer is built
    but nothing is stored (a caller that wants the count as the write saw it, without a key)."""

    owner: str
    key: str | None
    request_hash: str
    status: int
    answer: Callable[[int], dict[str, Any]]


class Replayed(SpeakerDBError):
    """Raised inside a write whose idempotency key is already stored (the write is rolled back): ``.stored``."""

    def __init__(self, stored: StoredAnswer) -> None:
        super().__init__("this idempotency key was already used; the stored answer is replayed")
        self.stored = stored


def request_hash(method: str, path: str, parts: Iterable[bytes]) -> str:
    """SHA-256 over the method, the path and the request's parts (each length-prefixed, so parts cannot shift).

    >>> request_hash("POST", "/v1/speakers", [b"ab", b"c"]) == request_hash("POST", "/v1/speakers", [b"a", b"bc"])
    False
    """
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode("utf-8"), *parts):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()

