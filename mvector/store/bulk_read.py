"""Reading a whole gallery's means fast and lean: the cold start of a replica (every mean into one matrix).

A naive read makes one Python object per row and column (a million ``bytes`` means, tuples, ints): slow (11 s from
PostgreSQL at a million speakers), and the freed row objects leave the heap fragmented, so the process keeps far
more memory than the matrix it built. These readers avoid both:

* PostgreSQL (:func:`read_postgres`): one binary ``COPY`` of ``id, mean, name`` read with libpq's own calls; the
  fixed-size head of every row (id and mean) is read by numpy as an array of records, a batch at a time, and the
  names are decoded a batch at a time. It runs in the caller's snapshot transaction (``REPEATABLE READ``);
* SQLite (:func:`read_sqlite`): ids and names first, then the means in chunks (the chunk's blobs are freed before the
  next one is read, so no long-lived object sits between them);
* then :func:`mvector.utils.heap.release_free_memory` hands the freed heap back to the system (glibc
  ``malloc_trim``; a no-op elsewhere).

>>> import sqlite3, numpy as np
>>> conn = sqlite3.connect(":memory:")
>>> _ = conn.execute("CREATE TABLE speakers (id INTEGER PRIMARY KEY, name TEXT, mean BLOB)")
>>> _ = conn.execute("INSERT INTO speakers VALUES (4, 'ann', ?)", (np.ones(2, "float32").tobytes(),))
>>> ids, names, means = read_sqlite(conn, "SELECT id, name FROM speakers ORDER BY id",
...                                 "SELECT mean FROM speakers ORDER BY id", 1, 2, "demo")
>>> ids.tolist(), names, means.tolist()
([4], ['ann'], [[1.0, 1.0]])
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from mvector.errors import SpeakerDBError
from mvector.store.pg_wire import copy_rows
from mvector.utils.heap import release_free_memory

__all__ = ["read_postgres", "read_sqlite"]

_CHUNK = 65536
#: rows of a PostgreSQL COPY parsed at once (about 6 MB of 192-d means)
_COPY_ROWS = 8192


def read_sqlite(
    conn: Any, names_sql: str, means_sql: str, total: int, dim: int, where: str
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(ids, names, means)`` of ``total`` speakers: ``names_sql`` selects ``id, name`` and ``means_sql`` the
    ``mean`` blobs, both in the same order, inside the caller's read transaction."""
    ids = np.empty(total, np.int64)
    names: list[str] = []
    at = 0
    cursor = conn.execute(names_sql)
    while chunk := cursor.fetchmany(_CHUNK):
        if at + len(chunk) > total:
            raise SpeakerDBError(f"{where}: the speaker table changed while it was read")
        ids[at : at + len(chunk)] = [r[0] for r in chunk]
        names.extend(r[1] for r in chunk)
        at += len(chunk)
    means = np.empty((at, dim), np.float32)
    row_bytes, done = 4 * dim, 0
    cursor = conn.execute(means_sql)
    while chunk := cursor.fetchmany(_CHUNK):
        joined = b"".join(r[0] for r in chunk)
        if done + len(chunk) > at or len(joined) != row_bytes * len(chunk):
            raise SpeakerDBError(f"{where}: damaged database (a mean embedding has the wrong size)")
        means[done : done + len(chunk)] = np.frombuffer(joined, np.float32).reshape(len(chunk), dim)
        done += len(chunk)
        del joined, chunk
    if done != at:
        raise SpeakerDBError(f"{where}: the speaker table changed while it was read")
    release_free_memory()
    return ids[:at], names, means


def read_postgres(
    conn: Any, table: str, gallery: str, capacity: int, dim: int, where: str
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(ids, names, means)`` of the speakers of ``gallery`` in ``table`` (columns ``gallery, id, name, mean``),
    inside the caller's ``REPEATABLE READ`` transaction; ``capacity`` is at least their number (the gallery's next
    id less one: ids are never given out twice).

    One binary ``COPY`` of ``id, mean, name``, read with libpq's own calls (psycopg's row iterator costs a Python
    generator round trip per row). Each row arrives whole: its first ``2 + (4 + 8) + (4 + 4·dim)`` bytes have one
    layout, so numpy reads a batch of them as an array of records; the names that end the rows are joined and
    decoded once a batch. The arrays are sized by ``capacity`` and the pages past the last row are never touched
    (no memory is used for them); when far fewer rows came, they are copied to their size. Rows come back ordered
    by id."""
    from psycopg import sql

    record = np.dtype([("fields", ">i2"), ("id_size", ">i4"), ("id", ">i8"), ("mean_size", ">i4"),
                       ("mean", "<f4", (dim,)), ("name_size", ">i4")])  # fmt: skip
    ids = np.empty(capacity, np.int64)
    means = np.empty((capacity, dim), np.float32)
    names: list[str] = []
    query = sql.SQL("COPY (SELECT id, mean, name FROM {} WHERE gallery = {}) TO STDOUT (FORMAT BINARY)").format(
        sql.Identifier(table), sql.Literal(gallery)
    )
    at = 0
    with contextlib.closing(copy_rows(conn, query.as_bytes(conn), _COPY_ROWS)) as batches:
        for batch in batches:
            fixed = b"".join([row[: record.itemsize] for row in batch])
            if len(fixed) != record.itemsize * len(batch):
                raise SpeakerDBError(f"{where}: damaged gallery (a mean embedding has the wrong size)")
            rows = np.frombuffer(fixed, record)
            bad = (rows["fields"] != 3) | (rows["id_size"] != 8) | (rows["mean_size"] != 4 * dim)
            if bad.any():
                raise SpeakerDBError(f"{where}: damaged gallery (a mean embedding has the wrong size)")
            if at + len(batch) > capacity:
                raise SpeakerDBError(f"{where}: the speaker table changed while it was read")
            ids[at : at + len(batch)] = rows["id"]
            means[at : at + len(batch)] = rows["mean"]
            at += len(batch)
            names.extend(_batch_names([row[record.itemsize :] for row in batch]))
            del rows, fixed, batch
    if at < capacity * 3 // 4:  # many ids were given out and removed: do not keep their room
        ids, means = ids[:at].copy(), means[:at].copy()
    ids, means = ids[:at], means[:at]
    if at > 1 and not bool(np.all(ids[1:] > ids[:-1])):  # rows rewritten since they were enrolled: by id, as stored
        order = np.argsort(ids, kind="stable")
        ids, means, names = ids[order], means[order], [names[i] for i in order.tolist()]
    release_free_memory()
    return ids, names, means


def _batch_names(encoded: list[Any]) -> list[str]:
    """The names ending a batch of rows (UTF-8 bytes each): decoded at once, joined by newlines; a name holding a
    newline itself (a legacy name) makes the batch decode name by name."""
    joined = b"\n".join(encoded).decode("utf-8")
    names = joined.split("\n")
    if len(names) != len(encoded):
        names = [bytes(name).decode("utf-8") for name in encoded]
    return names
