"""Reading a whole gallery's means fast and lean: the cold start of a replica (every mean into one matrix).

A naive read makes one Python object per row and column (a million ``bytes`` means, tuples, ints): slow (11 s from
PostgreSQL at a million speakers), and the freed row objects leave the heap fragmented, so the process keeps far
more memory than the matrix it built. These readers avoid both:

* PostgreSQL (:func:`read_postgres`): the server joins each chunk of 65 536 ids into three values (``string_agg``
  of the ids, the means' bytes and the names), sent in binary form: the client turns them into numpy arrays without
  one object per row. It runs in the caller's snapshot transaction (``REPEATABLE READ``), so the chunks agree;
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

import re
from typing import Any

import numpy as np

from mvector.errors import SpeakerDBError
from mvector.utils.heap import release_free_memory

__all__ = ["read_postgres", "read_sqlite"]

_CHUNK = 65536


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
    mean``), inside the caller's ``REPEATABLE READ`` transaction (both reads see one snapshot).

    The ids and means come as one binary ``COPY``: every row is ``2 + (4 + 8) + (4 + 4·dim)`` bytes, so numpy
    reads the stream as an array of fixed-size records (no object per row, no sort on the server); the names come
    as a second, text ``COPY`` of ``id, name`` and are put in the same order; rows come back ordered by id."""
    from psycopg import sql

    record = np.dtype([("fields", ">i2"), ("id_size", ">i4"), ("id", ">i8"), ("mean_size", ">i4"),
                       ("mean", "<f4", (dim,))])  # fmt: skip
    ids = np.empty(total, np.int64)
    means = np.empty((total, dim), np.float32)
    source = sql.SQL("(SELECT {} FROM {} WHERE gallery = {})")
    with conn.cursor() as cur:
        query = source.format(sql.SQL("id, mean"), sql.Identifier(table), sql.Literal(gallery))
        with cur.copy(sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(query)) as copy:
            at = _read_records(copy, record, ids, means, where)
        query = source.format(sql.SQL("id, name"), sql.Identifier(table), sql.Literal(gallery))
        with cur.copy(sql.SQL("COPY {} TO STDOUT").format(query)) as copy:
            text = b"".join(bytes(block) for block in copy).decode("utf-8")
    ids, means = ids[:at], means[:at]
    if at > 1 and not bool(np.all(ids[1:] > ids[:-1])):  # rows rewritten since they were enrolled: by id, as stored
        order = np.argsort(ids, kind="stable")
        ids, means = ids[order], means[order]
    names = _names_in_order(text, ids, where)
    del text
    release_free_memory()
    return ids, names, means


#: bytes of a binary COPY stream gathered before they are parsed (records cut across blocks wait for the rest)
_COPY_BATCH = 4 << 20
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _read_records(copy: Any, record: np.dtype, ids: np.ndarray, means: np.ndarray, where: str) -> int:
    """Fill ``ids`` and ``means`` from a binary ``COPY`` of ``id, mean`` rows, a few MB at a time; returns the
    number of rows. A row of another shape (a mean of the wrong size) is refused as a damaged gallery."""
    pending = bytearray()
    at, header = 0, None
    for block in copy:
        pending += block
        if header is None:
            if len(pending) < 19:
                continue
            if bytes(pending[:11]) != _COPY_SIGNATURE:
                raise SpeakerDBError(f"{where}: PostgreSQL sent no binary COPY stream")
            header = 19 + int.from_bytes(pending[15:19], "big")
            if len(pending) < header:
                continue
            del pending[:header]
        if len(pending) >= _COPY_BATCH:
            at = _take_records(pending, record, ids, means, at, where)
    at = _take_records(pending, record, ids, means, at, where)
    if bytes(pending) != b"\xff\xff":  # the trailer: what is left is not a whole row
        raise SpeakerDBError(f"{where}: damaged gallery (a mean embedding has the wrong size)")
    return at


def _take_records(
    pending: bytearray, record: np.dtype, ids: np.ndarray, means: np.ndarray, at: int, where: str
) -> int:
    """Move the whole records at the head of ``pending`` into the arrays (in place); returns the new row count."""
    n = len(pending) // record.itemsize  # the 2-byte trailer, shorter than any record, stays in pending
    if n == 0:
        return at
    rows = np.frombuffer(pending, record, count=n)
    bad = (rows["fields"] != 2) | (rows["id_size"] != 8) | (rows["mean_size"] != record["mean"].itemsize)
    if bad.any():
        raise SpeakerDBError(f"{where}: damaged gallery (a mean embedding has the wrong size)")
    if at + n > len(ids):
        raise SpeakerDBError(f"{where}: the speaker table changed while it was read")
    ids[at : at + n] = rows["id"]
    means[at : at + n] = rows["mean"]
    del rows
    del pending[: n * record.itemsize]
    return at + n


_TEXT_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "v": "\v"}


def _names_in_order(text: str, ids: np.ndarray, where: str) -> list[str]:
    """The names of a text ``COPY`` of ``id, name`` rows, in the order of ``ids`` (a name holding a backslash or a
    control character comes escaped, as COPY writes it, and is read back)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(ids):
        raise SpeakerDBError(f"{where}: the speaker table changed while it was read")
    by_id: dict[int, str] = {}
    for line in lines:
        key, _, name = line.partition("\t")
        if "\\" in name:
            name = re.sub(r"\\(.)", lambda m: _TEXT_ESCAPES.get(m.group(1), m.group(1)), name)
        by_id[int(key)] = name
    try:
        return [by_id[i] for i in ids.tolist()]
    except KeyError:
        raise SpeakerDBError(f"{where}: the speaker table changed while it was read") from None
