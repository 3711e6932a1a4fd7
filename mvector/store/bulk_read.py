"""Reading a whole gallery's means fast and lean: the cold start of a replica (every mean into one matrix).

A naive read makes one Python object per row and column (a million ``bytes`` means, tuples, ints): slow (11 s from
PostgreSQL at a million speakers), and the freed row objects leave the heap fragmented, so the process keeps far
more memory than the matrix it built. These readers avoid both:

* PostgreSQL (:func:`read_postgres`): the server joins each chunk of 65 536 ids into three values (``string_agg``
  of the ids, the means' bytes and the names), sent in binary form: the client turns them into numpy arrays without
  one object per row. It runs in the caller's snapshot transaction (``REPEATABLE READ``), so the chunks agree;
* SQLite (:func:`read_sqlite`): ids and names first, then the means in chunks (the chunk's blobs are freed before the
  next one is read, so no long-lived object sits between them);
* then :func:`release_free_memory` hands the freed heap back to the system (glibc ``malloc_trim``; a no-op
  elsewhere).

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

import ctypes
import ctypes.util
from typing import Any

import numpy as np

from mvector.errors import SpeakerDBError

__all__ = ["read_postgres", "read_sqlite", "release_free_memory"]

_CHUNK = 65536


def release_free_memory() -> bool:
    """Return the heap memory freed by a bulk read to the system (glibc ``malloc_trim(0)``); False where there is
    no such call (another C library or platform).

    >>> isinstance(release_free_memory(), bool)
    True
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


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
    conn: Any, table: str, gallery: str, total: int, dim: int, where: str
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(ids, names, means)`` of the ``total`` speakers of ``gallery`` in ``table`` (columns ``gallery, id, name,
    mean``), inside the caller's ``REPEATABLE READ`` transaction. Each chunk (a range of ids) comes back as one
    row of values the server concatenated (``string_agg``): the ids as 8-byte big-endian integers, the means' bytes
    and the names joined by newlines, in binary form, so the client makes no per-row objects."""
    ids = np.empty(total, np.int64)
    means = np.empty((total, dim), np.float32)
    names: list[str] = []
    at = 0
    # Chunks are id ranges (the stores give ids out one after the other), so no chunk needs a sort: an ORDER BY
    # ... LIMIT over a freshly loaded table, before PostgreSQL has statistics, sorts every remaining row on disk for
    # each chunk. The three aggregates consume the same rows in the same sequence: ids, means and names stay aligned.
    sql = (
        "SELECT count(*), string_agg(int8send(id), ''::bytea), string_agg(mean, ''::bytea), "
        f"string_agg(name, E'\\n') FROM {table} WHERE gallery = %s AND id >= %s AND id < %s"
    )
    with conn.cursor(binary=True) as cur:
        low, high = cur.execute(f"SELECT min(id), max(id) FROM {table} WHERE gallery = %s", (gallery,)).fetchone()
        for start in range(int(low or 0), int(high or -1) + 1, _CHUNK):
            count, id_bytes, mean_bytes, joined = cur.execute(sql, (gallery, start, start + _CHUNK)).fetchone()
            count = int(count)
            if not count:
                continue
            if at + count > total:
                raise SpeakerDBError(f"{where}: the speaker table changed while it was read")
            if len(mean_bytes) != 4 * dim * count or len(id_bytes) != 8 * count:
                raise SpeakerDBError(f"{where}: damaged gallery (a mean embedding has the wrong size)")
            chunk_ids = np.frombuffer(id_bytes, ">i8")
            ids[at : at + count] = chunk_ids
            means[at : at + count] = np.frombuffer(mean_bytes, np.float32).reshape(count, dim)
            chunk_names = joined.split("\n")
            if len(chunk_names) != count:  # a name holding a newline (written before the name rule): by id
                found = dict(cur.execute(
                    f"SELECT id, name FROM {table} WHERE gallery = %s AND id >= %s AND id < %s",
                    (gallery, start, start + _CHUNK),
                ).fetchall())
                chunk_names = [found[i] for i in chunk_ids.tolist()]
            names.extend(chunk_names)
            at += count
            del id_bytes, mean_bytes, joined
    release_free_memory()
    return ids[:at], names, means[:at]
