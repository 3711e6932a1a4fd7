"""Reads on a psycopg connection with libpq's own calls, for the two places where psycopg's per-call machinery is
the cost: a query sent now and answered later (a replica's version read, overlapped with its search) and a large
binary ``COPY`` (a replica's cold start: psycopg's row iterator costs a Python generator round trip per row).

Every wait is bounded (:data:`STALL_S` without a byte from the server); a lost connection, a server error or a
stall raises ``psycopg.OperationalError``, which the store turns into its unavailable error. Each reader leaves the
connection idle (every result read), also when its caller stops early, so psycopg can use it again.

>>> result_message(None, "no result")
'no result'
"""

from __future__ import annotations

import contextlib
import select
from typing import Any, Iterator

__all__ = ["STALL_S", "copy_rows", "finish", "next_result", "one_value", "result_message"]

#: seconds a read may wait without a byte from the server (the server's own statement timeout is usually shorter)
STALL_S = 60.0
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _error(message: str) -> Exception:
    import psycopg

    return psycopg.OperationalError(message)


def _wait_readable(pgconn: Any, stall_s: float) -> None:
    """Wait until the server sent more (at most ``stall_s``), then read it into libpq's buffer."""
    if not select.select([pgconn.socket], [], [], stall_s)[0]:
        raise _error(f"no answer from the server within {stall_s:.0f} s")
    pgconn.consume_input()


def next_result(pgconn: Any, stall_s: float = STALL_S) -> Any:
    """The next result of the command running on ``pgconn`` (waiting for it), or None when there are no more."""
    pgconn.consume_input()
    while pgconn.is_busy():
        _wait_readable(pgconn, stall_s)
    return pgconn.get_result()


def result_message(result: Any, default: str) -> str:
    """The server's error message of ``result`` (``default`` when it has none)."""
    text = b"" if result is None else (result.error_message or b"")
    return text.decode("utf-8", "replace").strip() or default


def finish(pgconn: Any, raise_errors: bool = True, stall_s: float = STALL_S) -> None:
    """Read the command's remaining results, so the connection is idle again; with ``raise_errors`` a failed one
    raises ``psycopg.OperationalError``."""
    from psycopg import pq

    failure = None
    while (result := next_result(pgconn, stall_s)) is not None:
        if result.status == pq.ExecStatus.FATAL_ERROR and failure is None:
            failure = result_message(result, "the command failed")
    if failure is not None and raise_errors:
        raise _error(failure)


def one_value(pgconn: Any, stall_s: float = STALL_S) -> bytes | None:
    """The first column of the one row a query sent on ``pgconn`` returns (text form), None when it returned no
    row; the connection is idle afterwards."""
    from psycopg import pq

    result = next_result(pgconn, stall_s)
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        finish(pgconn, raise_errors=False, stall_s=stall_s)
        raise _error(result_message(result, "the query failed"))
    value = result.get_value(0, 0) if result.ntuples else None
    finish(pgconn, stall_s=stall_s)
    return value


def copy_rows(conn: Any, query: bytes, batch_rows: int) -> Iterator[list[Any]]:
    """The rows of ``COPY ... TO STDOUT (FORMAT BINARY)`` run on psycopg connection ``conn``, in batches of
    ``batch_rows`` (one buffer a row, as the server sent it; the stream's header and trailer left out). When the
    caller stops early, the rest is read and dropped."""
    from psycopg import pq

    pgconn = conn.pgconn
    pgconn.send_query(query)
    result = next_result(pgconn)
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        finish(pgconn, raise_errors=False)
        raise _error(result_message(result, "COPY did not start"))
    finished = False
    try:
        batch: list[Any] = []
        header = True
        while True:
            size, row = pgconn.get_copy_data(1)
            if size > 0:
                if header:  # the first row carries the stream's signature and header
                    if bytes(row[:11]) != _COPY_SIGNATURE:
                        raise _error("the server sent no binary COPY stream")
                    row = row[19 + int.from_bytes(row[15:19], "big") :]
                    header = False
                if len(row) <= 2:  # the trailer (-1 as two bytes), or a header sent alone
                    continue
                batch.append(row)
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
            elif size == 0:
                _wait_readable(pgconn, STALL_S)
            else:
                break
        finished = True
        if batch:
            yield batch
    finally:
        if not finished:
            with contextlib.suppress(Exception):
                while pgconn.get_copy_data(0)[0] >= 0:
                    pass
        finish(pgconn, raise_errors=finished)
