"""The cold-start readers (mvector.store.bulk_read) give exactly what a row-by-row read gives, across chunk
boundaries, with legacy names holding a newline or a backslash, on SQLite and on a real PostgreSQL; a damaged mean
is refused with an error naming the store."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from mvector.errors import SpeakerDBError
from mvector.inference.speaker_db import SpeakerDatabase
from mvector.store import bulk_read, open_store

DIM = 6
NAMES = [f"spk{i:03d}" for i in range(25)] + ["back\\slash", "new\nline", "tab\tname", "Zoë"]


def rows(n: int) -> np.ndarray:
    x = np.random.default_rng(9).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sqlite_reader_matches_rows_and_checks_sizes(monkeypatch):
    monkeypatch.setattr(bulk_read, "_CHUNK", 4)  # many chunks
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE speakers (id INTEGER PRIMARY KEY, name TEXT, mean BLOB)")
    means = rows(len(NAMES))
    conn.executemany("INSERT INTO speakers VALUES (?, ?, ?)",
                     [(3 * i + 1, n, m.tobytes()) for i, (n, m) in enumerate(zip(NAMES, means))])
    names_sql, means_sql = "SELECT id, name FROM speakers ORDER BY id", "SELECT mean FROM speakers ORDER BY id"
    ids, names, got = bulk_read.read_sqlite(conn, names_sql, means_sql, len(NAMES), DIM, "test.sqlite")
    assert ids.tolist() == [3 * i + 1 for i in range(len(NAMES))] and names == NAMES
    np.testing.assert_array_equal(got, means)
    conn.execute("UPDATE speakers SET mean = ? WHERE id = 4", (b"\0" * 8,))
    with pytest.raises(SpeakerDBError, match="test.sqlite: damaged database"):
        bulk_read.read_sqlite(conn, names_sql, means_sql, len(NAMES), DIM, "test.sqlite")


def test_postgres_reader_matches_rows(postgres_url, monkeypatch):
    monkeypatch.setattr(bulk_read, "_COPY_ROWS", 4)  # many parsed batches, the legacy names in one of them
    means = rows(len(NAMES))
    store = open_store(postgres_url)
    gallery = store.gallery("house")
    gallery.open("fp", DIM)
    with gallery.write() as w:  # the names go in as stored: no name rule here, as in a gallery of an older version
        first = w.allocate_ids(len(NAMES))
        w.insert_speakers(np.arange(first, first + len(NAMES)), NAMES, means, np.ones(len(NAMES), np.int64), 0.0)
    other = store.gallery("other")  # another gallery's rows are never read
    other.open("fp", DIM)
    with other.write() as w:
        w.insert_speakers(np.array([w.allocate_ids(1)]), ["x"], rows(1), np.ones(1, np.int64), 0.0)
    full = gallery.snapshot(None)
    assert full.names == NAMES and full.ids.tolist() == list(range(first, first + len(NAMES)))
    np.testing.assert_array_equal(full.means, means)
    with SpeakerDatabase(postgres_url, "fp", DIM, gallery="house") as db:  # a replica's cold start uses it
        assert db.search(means[26])[0][0][0] == "new\nline"
    store.close()


def test_postgres_reader_keeps_id_order_and_refuses_a_damaged_mean(postgres_url):
    import psycopg

    store = open_store(postgres_url)
    gallery = store.gallery("damaged")
    gallery.open("fp", DIM)
    means = rows(40)
    with gallery.write() as w:
        first = w.allocate_ids(40)
        w.insert_speakers(np.arange(first, first + 40), [f"s{i}" for i in range(40)], means, np.ones(40, np.int64), 0.0)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # a rewritten row moves in the heap
        conn.execute("UPDATE mvector_speakers SET n_utts = 2 WHERE gallery = 'damaged' AND id = %s", (first,))
    full = gallery.snapshot(None)
    assert full.ids.tolist() == list(range(first, first + 40)) and full.names[0] == "s0"
    np.testing.assert_array_equal(full.means, means)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE mvector_speakers SET mean = '\\x0000' WHERE gallery = 'damaged' AND id = %s",
                     (first + 7,))  # fmt: skip
    with pytest.raises(SpeakerDBError, match="damaged gallery"):
        gallery.snapshot(None)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # mended: the same connection reads it whole
        conn.execute("UPDATE mvector_speakers SET mean = %s WHERE gallery = 'damaged' AND id = %s",
                     (means[7].tobytes(), first + 7))  # fmt: skip
    np.testing.assert_array_equal(gallery.snapshot(None).means, means)
    store.close()


def test_postgres_reader_sizes_its_arrays_by_the_rows_read(postgres_url, monkeypatch):
    """The arrays are sized by the ids given out; when most of those speakers were removed the rows are copied to
    their size, and where the ids given out would not fit in memory the rows are counted first."""
    store = open_store(postgres_url)
    gallery = store.gallery("sparse")
    gallery.open("fp", DIM)
    means = rows(5)
    with gallery.write() as w:
        first = w.allocate_ids(100)  # 100 ids given out, 5 speakers left
        w.insert_speakers(np.arange(first, first + 5), [f"s{i}" for i in range(5)], means, np.ones(5, np.int64), 0.0)
    full = gallery.snapshot(None)
    with gallery.write() as w:  # a write's first full read lifts the statement timeout for the read only
        assert w.snapshot(None).ids.tolist() == full.ids.tolist()
        assert w._conn.execute("SHOW statement_timeout").fetchone()[0] == "15s"
    assert full.ids.tolist() == list(range(first, first + 5)) and full.names == [f"s{i}" for i in range(5)]
    assert full.means.base is None or full.means.base.nbytes == means.nbytes  # its own 5 rows, not 100
    np.testing.assert_array_equal(full.means, means)
    from mvector.store import postgres

    monkeypatch.setattr(postgres, "_memory_bytes", lambda: 1000)  # 100 rows of 6 floats would not fit: count
    counted = []
    real = bulk_read.read_postgres
    monkeypatch.setattr(postgres, "read_postgres", lambda *a: counted.append(a[3]) or real(*a))
    np.testing.assert_array_equal(gallery.snapshot(None).means, means)
    assert counted == [5]
    store.close()
