"""SQL both stores share: the audit log's aggregation and listing, and the check that a gallery belongs to the model.

The statements differ between SQLite and PostgreSQL only in the parameter marker (``?`` / ``%s``), the table name
and the null-safe equality (``IS`` / ``IS NOT DISTINCT FROM``), which are arguments here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from mvector.errors import SpeakerDBError
from mvector.store.base import AuditRow

__all__ = ["audit_filter", "audit_row", "blobs", "check_owner", "record_audit", "utterance_rows"]


def blobs(rows: Sequence[Sequence[Any]], dim: int, column: int = 0) -> np.ndarray:
    """The float32 embeddings stored as bytes in ``column`` of ``rows``, as one ``[n, dim]`` array.

    >>> blobs([(np.ones(2, np.float32).tobytes(),)], 2).tolist()
    [[1.0, 1.0]]
    """
    joined = b"".join(bytes(r[column]) for r in rows)
    if len(joined) != 4 * dim * len(rows):
        raise SpeakerDBError("damaged gallery (an embedding has the wrong size)")
    return np.frombuffer(joined, dtype=np.float32).reshape(len(rows), dim)


def utterance_rows(cursor: Any, dim: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Rows ``(speaker id, embedding bytes, audio path)`` of an executed ``cursor``, read ``chunk`` at a time, as
    ``(ids [n] int64, embeddings [n, dim] float32, audio paths)``: no Python object per row outlives its chunk.

    >>> import sqlite3
    >>> conn = sqlite3.connect(":memory:")
    >>> ids, emb, audio = utterance_rows(conn.execute("SELECT 3, ?, NULL", (np.ones(2, np.float32).tobytes(),)), 2)
    >>> ids.tolist(), emb.tolist(), audio
    ([3], [[1.0, 1.0]], [None])
    """
    owners: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    audio: list[str | None] = []
    while True:
        rows = cursor.fetchmany(chunk)
        if not rows:
            break
        owners.append(np.fromiter((int(r[0]) for r in rows), np.int64, len(rows)))
        parts.append(blobs(rows, dim, 1))
        audio.extend(r[2] for r in rows)
    if not parts:
        return np.empty(0, np.int64), np.empty((0, dim), np.float32), audio
    return np.concatenate(owners), np.concatenate(parts), audio


def check_owner(where: str, stored_fp: str, stored_dim: int, model_fingerprint: str, embd_dim: int) -> int:
    """The gallery's embedding size when it was made by this model, else a :class:`SpeakerDBError` naming both.

    >>> check_owner("db", "fp", 4, "fp", 4)
    4
    """
    if stored_fp != model_fingerprint or int(stored_dim) != int(embd_dim):
        raise SpeakerDBError(
            f"{where}: the database was made by another model (fingerprint {stored_fp[:12]}, "
            f"embedding size {stored_dim}); this model has fingerprint {model_fingerprint[:12]}, "
            f"embedding size {embd_dim}. Use the matching model, or a new database folder "
            f"for this model"
        )
    return int(stored_dim)


def audit_filter(action: str | None, outcome: str, mark: str) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (with ``mark`` as the parameter marker) and parameters of an audit listing.

    >>> audit_filter("enrol", "refused", "%s")
    (' WHERE action = %s AND status >= 400', ['enrol'])
    """
    where, params = [], []
    if action is not None:
        where.append(f"action = {mark}")
        params.append(action)
    if outcome != "all":
        where.append("status >= 400" if outcome == "refused" else "status < 400")
    return (" WHERE " + " AND ".join(where) if where else ""), params


def audit_row(r: Sequence[Any]) -> AuditRow:
    """An :class:`AuditRow` from the columns ``time .. gallery`` of an audit listing."""
    last = None if r[9] is None else float(r[9])
    return AuditRow(float(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], int(r[8]), last, r[10], r[11])


def record_audit(
    execute: Callable[..., Any], row: AuditRow, aggregate_since: float | None, table: str, mark: str, same: str
) -> None:
    """Inside a transaction: add ``row`` to the audit ``table``, or (with ``aggregate_since``) count it into the
    row of the same status, action, key, client and replica opened since then. ``execute`` is the connection's;
    ``same`` is the null-safe equality of its SQL dialect."""
    found = None
    if aggregate_since is not None:
        found = execute(
            f"SELECT id FROM {table} WHERE status = {mark} AND action = {mark} AND key_id {same} {mark} "
            f"AND client {same} {mark} AND replica {same} {mark} AND time >= {mark} ORDER BY id DESC LIMIT 1",
            (row.status, row.action, row.key_id, row.client, row.replica, aggregate_since),
        ).fetchone()
    if found is not None:
        execute(
            f"UPDATE {table} SET count = count + 1, last = {mark}, target = {mark}, detail = {mark} WHERE id = {mark}",
            (row.time, row.target, row.detail, found[0]),
        )
        return
    marks = ", ".join([mark] * 12)
    execute(  # a given row's count and last time are kept (a copied, aggregated row stays whole)
        f"INSERT INTO {table} (time, key_id, key_name, action, target, status, detail, client, replica, gallery, "
        f"count, last) VALUES ({marks})",
        (row.time, row.key_id, row.key_name, row.action, row.target, row.status, row.detail, row.client,
         row.replica, row.gallery, int(row.count), row.last),
    )
