"""Idempotent writes: a write tagged with a client's key is done once; a retry gets the first answer.

A client that lost the answer to a write (the connection dropped, the server died after the commit) retries with
the same ``Idempotency-Key``. The speaker database stores ``(owner, key) -> (request hash, status, answer)`` in the
*same transaction* as the write it answers, so a record exists exactly when the write committed:

* the key is new: the write happens and its answer is stored with it;
* the key is stored with the same request hash: nothing is written again, the stored status and answer are
  returned (:class:`Replayed` inside a write; :func:`lookup` before doing any work);
* the key is stored with another request hash: the key was reused for another request (the service answers 422).

Records are scoped per ``owner`` (the service uses the API key's id, so two clients cannot see or block each
other's keys) and kept :data:`RETENTION_SECONDS` (24 hours); older ones are purged by later writes.

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:", isolation_level=None)
>>> create_table(conn)
>>> record = IdempotentWrite("key1", "retry-7", request_hash("POST", "/v1/speakers", [b"alice"]), 201,
...                          lambda count: {"name": "alice", "recordings": count})
>>> store(conn, record, record.answer(2), now=1000.0)
>>> found = lookup(conn, "key1", "retry-7", now=1000.0 + 60)
>>> found.status, found.answer, found.matches(record.request_hash)
(201, {'name': 'alice', 'recordings': 2}, True)
>>> lookup(conn, "key2", "retry-7", now=1060.0) is None  # another API key: another scope
True
>>> lookup(conn, "key1", "retry-7", now=1000.0 + RETENTION_SECONDS + 1) is None  # expired
True
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from mvector.errors import SpeakerDBError

__all__ = [
    "RETENTION_SECONDS",
    "IdempotentWrite",
    "Replayed",
    "StoredAnswer",
    "create_table",
    "lookup",
    "purge",
    "request_hash",
    "store",
]

#: How long a stored answer is replayed (seconds).
RETENTION_SECONDS = 24 * 3600

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS idempotency (owner TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, "
    "status INTEGER NOT NULL, answer TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (owner, key))",
    "CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created)",
)


@dataclass(frozen=True)
class StoredAnswer:
    """The answer stored for an idempotency key: the request's hash, the HTTP status and the JSON answer."""

    request_hash: str
    status: int
    answer: dict[str, Any]
    created: float

    def matches(self, request_hash: str) -> bool:
        """Whether ``request_hash`` is the request this answer was stored for."""
        return self.request_hash == request_hash


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


def create_table(conn: sqlite3.Connection) -> None:
    """Create the table (inside the caller's transaction, if any)."""
    for statement in _SCHEMA:
        conn.execute(statement)


def lookup(conn: sqlite3.Connection, owner: str, key: str, now: float) -> StoredAnswer | None:
    """The unexpired answer stored for ``(owner, key)``, or None."""
    row = conn.execute(
        "SELECT request_hash, status, answer, created FROM idempotency WHERE owner = ? AND key = ? AND created >= ?",
        (owner, key, now - RETENTION_SECONDS),
    ).fetchone()
    if row is None:
        return None
    return StoredAnswer(str(row[0]), int(row[1]), json.loads(row[2]), float(row[3]))


def store(conn: sqlite3.Connection, record: IdempotentWrite, answer: dict[str, Any], now: float) -> None:
    """Store ``answer`` under ``record``'s key (inside the write's transaction), replacing an expired record."""
    if record.key is None:
        return
    text = json.dumps(answer, ensure_ascii=False, allow_nan=False)
    conn.execute(
        "INSERT OR REPLACE INTO idempotency (owner, key, request_hash, status, answer, created) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (record.owner, record.key, record.request_hash, int(record.status), text, now),
    )


def purge(conn: sqlite3.Connection, now: float) -> int:
    """Delete the records older than :data:`RETENTION_SECONDS`; returns how many went."""
    return conn.execute("DELETE FROM idempotency WHERE created < ?", (now - RETENTION_SECONDS,)).rowcount
