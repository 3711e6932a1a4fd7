"""The folder store: galleries, keys and audit as SQLite files in one folder (the default; the layout of earlier
versions, unchanged).

Layout::

    <folder>/speakers.sqlite                 the gallery "default" (+ -wal, -shm)     0600
    <folder>/<speaker folder>/*.wav          its kept audio (mvector.inference.speaker_files)
    <folder>/service.sqlite                  API keys and the audit log               0600
    <folder>/galleries/<name>/speakers.sqlite    every other gallery, with its kept audio beside it

Each gallery is its own SQLite database in WAL mode: writes run in ``BEGIN IMMEDIATE`` transactions (the gallery's
write lock, for every process on this machine) with a busy timeout; every write bumps the version in ``meta``.
A database written before galleries existed is the gallery ``default`` as it is.

>>> import tempfile, numpy as np
>>> store = SQLiteStore(tempfile.mkdtemp())
>>> home = store.gallery("home")
>>> home.open("model-a", 2)
>>> with home.write() as w:
...     first = w.allocate_ids(1)
...     w.insert_speakers(np.array([first]), ["alice"], np.array([[1.0, 0.0]], "float32"), np.array([1]), 0.0)
>>> home.names(), store.gallery_names()
(['alice'], ['home'])
>>> store.close()
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mvector.errors import SpeakerDBError, StoreError
from mvector.store import base
from mvector.store.base import (
    DEFAULT_GALLERY,
    AuditRow,
    Changes,
    GalleryStore,
    GalleryWrite,
    KeyBackend,
    KeyRow,
    Store,
    StoredAnswer,
)
from mvector.store.bulk_read import read_sqlite
from mvector.store.sql import audit_filter, audit_row, blobs, check_owner, record_audit, utterance_rows
from mvector.utils.files import PRIVATE_FILE_MODE, create_private_file, private_mkdir

__all__ = ["DB_FILENAME", "GALLERIES_DIR", "SERVICE_DB", "SQLiteGallery", "SQLiteKeys", "SQLiteStore"]

DB_FILENAME = "speakers.sqlite"
SERVICE_DB = "service.sqlite"
GALLERIES_DIR = "galleries"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE IF NOT EXISTS speakers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    mean BLOB NOT NULL,
    n_utts INTEGER NOT NULL CHECK (n_utts >= 1),
    updated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS speakers_updated ON speakers (updated);
CREATE TABLE IF NOT EXISTS utterances (
    id INTEGER PRIMARY KEY,
    speaker_id INTEGER NOT NULL REFERENCES speakers (id),
    embedding BLOB NOT NULL,
    audio TEXT
);
CREATE INDEX IF NOT EXISTS utterances_speaker ON utterances (speaker_id);
CREATE TABLE IF NOT EXISTS removed (version INTEGER NOT NULL, speaker_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_version ON removed (version);
CREATE TABLE IF NOT EXISTS cohort (id INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS speaker_times (
    speaker_id INTEGER PRIMARY KEY,
    enrolled REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (owner TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL,
    status INTEGER NOT NULL, answer TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (owner, key));
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);
"""

_KEY_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    created_by TEXT,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key_id TEXT,
    key_name TEXT,
    action TEXT NOT NULL,
    target TEXT,
    status INTEGER NOT NULL,
    detail TEXT,
    client TEXT
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_status ON audit (status, id);
"""
#: Columns added to the key file after its first version (name, declaration), added on open when missing.
_KEY_COLUMNS = {
    "audit": (("count", "INTEGER NOT NULL DEFAULT 1"), ("last", "REAL"), ("replica", "TEXT"), ("gallery", "TEXT")),
    "api_keys": (("galleries", "TEXT"),),
}


def retry_while_locked(action: Callable[[], Any], seconds: float = 60.0) -> Any:
    """Run ``action``, retrying with a short back-off while SQLite reports the database locked or busy.

    >>> retry_while_locked(lambda: 3)
    3
    """
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as err:
            text = str(err).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection, fail: Callable[[sqlite3.DatabaseError], Exception] | None = None) -> Iterator[
    sqlite3.Connection
]:
    """``BEGIN IMMEDIATE`` (the file's write lock) ... ``COMMIT``; any error rolls back, and an SQLite error becomes
    ``fail(err)`` when given.

    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> with immediate(conn) as c:
    ...     _ = c.execute("CREATE TABLE t (x)")
    >>> conn.in_transaction
    False
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as err:
        if fail is None:
            raise
        raise fail(err) from None


def _truncated(path: Path, wait: float = 2.0) -> bool:
    """True when ``path`` is a 0-byte file that stays so: a truncated database, not one another process is
    creating right now (SQLite creates the file empty and writes its header a moment later)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if path.stat().st_size > 0:
                return False
        except FileNotFoundError:
            return False
        if any(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-journal")):
            return False  # an open (or being created) database
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.02)


class _Write(GalleryWrite):
    """A write transaction on one gallery file (the connection is inside ``BEGIN IMMEDIATE``)."""

    def __init__(self, gallery: SQLiteGallery, conn: sqlite3.Connection, version: int) -> None:
        self._gallery, self._conn, self.version = gallery, conn, version

    def snapshot(self, since: int | None) -> Changes | None:
        return self._gallery._changes(self._conn, since)

    def answer(self, owner: str, key: str, not_before: float) -> StoredAnswer | None:
        return _answer(self._conn, owner, key, not_before)

    def keep_answer(self, owner: str, key: str, request_hash: str, status: int, answer: str, now: float) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO idempotency (owner, key, request_hash, status, answer, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (owner, key, request_hash, int(status), answer, now),
        )

    def purge_answers(self, before: float) -> int:
        return self._conn.execute("DELETE FROM idempotency WHERE created < ?", (before,)).rowcount

    def allocate_ids(self, count: int) -> int:
        first = int(self._conn.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0])
        if count:
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (first + int(count),))
        return first

    def insert_speakers(
        self, ids: np.ndarray, names: Sequence[str], means: np.ndarray, counts: np.ndarray, now: float
    ) -> None:
        conn, version = self._conn, self.version
        conn.executemany(
            "INSERT INTO speakers (id, name, mean, n_utts, updated) VALUES (?, ?, ?, ?, ?)",
            ((int(i), n, m.tobytes(), int(c), version) for i, n, m, c in zip(ids, names, means, counts)),
        )
        conn.executemany(
            "INSERT OR REPLACE INTO speaker_times (speaker_id, enrolled, updated) VALUES (?, ?, ?)",
            ((int(i), now, now) for i in ids),
        )

    def update_speakers(self, ids: np.ndarray, means: np.ndarray, counts: np.ndarray, now: float | None) -> None:
        conn, version = self._conn, self.version
        conn.executemany(
            "UPDATE speakers SET mean = ?, n_utts = ?, updated = ? WHERE id = ?",
            ((m.tobytes(), int(c), version, int(i)) for i, m, c in zip(ids, means, counts)),
        )
        if now is not None:
            conn.executemany(
                "INSERT INTO speaker_times (speaker_id, enrolled, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (speaker_id) DO UPDATE SET updated = excluded.updated",
                ((int(i), now, now) for i in ids),
            )

    def add_utterances(self, owners: np.ndarray, embeddings: np.ndarray) -> None:
        self._conn.executemany(
            "INSERT INTO utterances (speaker_id, embedding) VALUES (?, ?)",
            zip(np.asarray(owners).tolist(), (row.tobytes() for row in embeddings)),
        )

    def add_utterance(self, owner: int, embedding: np.ndarray) -> int:
        cur = self._conn.execute(
            "INSERT INTO utterances (speaker_id, embedding) VALUES (?, ?)", (int(owner), embedding.tobytes())
        )
        return int(cur.lastrowid)

    def set_audio(self, utterance_id: int, relative: str) -> None:
        self._conn.execute("UPDATE utterances SET audio = ? WHERE id = ?", (relative, int(utterance_id)))

    def utterances(self, speaker_id: int) -> tuple[list[int], np.ndarray, list[str | None]]:
        rows = self._conn.execute(
            "SELECT id, embedding, audio FROM utterances WHERE speaker_id = ? ORDER BY id", (int(speaker_id),)
        ).fetchall()
        return [int(r[0]) for r in rows], blobs(rows, self._gallery.embd_dim, 1), [r[2] for r in rows]

    def every_utterance(self) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        cursor = self._conn.execute("SELECT speaker_id, embedding, audio FROM utterances ORDER BY speaker_id, id")
        return utterance_rows(cursor, self._gallery.embd_dim)

    def every_time(self) -> dict[int, tuple[float, float]]:
        rows = self._conn.execute("SELECT speaker_id, enrolled, updated FROM speaker_times")
        return {int(r[0]): (float(r[1]), float(r[2])) for r in rows}

    def remove_speaker(self, speaker_id: int) -> list[str]:
        conn, sid = self._conn, int(speaker_id)
        kept = [r[0] for r in conn.execute("SELECT audio FROM utterances WHERE speaker_id = ? AND audio IS NOT NULL",
                                           (sid,))]
        conn.execute("DELETE FROM utterances WHERE speaker_id = ?", (sid,))
        conn.execute("DELETE FROM speakers WHERE id = ?", (sid,))
        conn.execute("DELETE FROM speaker_times WHERE speaker_id = ?", (sid,))
        conn.execute("INSERT INTO removed (version, speaker_id) VALUES (?, ?)", (self.version, sid))
        conn.execute("DELETE FROM removed WHERE version <= ?", (self.version - base.REMOVALS_KEPT,))
        return kept

    def remove_utterance(self, utterance_id: int) -> None:
        self._conn.execute("DELETE FROM utterances WHERE id = ?", (int(utterance_id),))

    def replace_cohort(self, embeddings: np.ndarray | None, source: str | None) -> None:
        self._conn.execute("DELETE FROM cohort")
        if embeddings is not None:
            self._conn.executemany("INSERT INTO cohort (embedding) VALUES (?)", ((r.tobytes(),) for r in embeddings))
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('cohort_source', ?)", ("" if source is None else source,)
        )

    def all_audio_paths(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT audio FROM utterances WHERE audio IS NOT NULL")]

    def has_name(self, name: str) -> bool:
        return self._conn.execute("SELECT 1 FROM speakers WHERE name = ?", (name,)).fetchone() is not None


def _answer(conn: sqlite3.Connection, owner: str, key: str, not_before: float) -> StoredAnswer | None:
    row = conn.execute(
        "SELECT request_hash, status, answer, created FROM idempotency WHERE owner = ? AND key = ? AND created >= ?",
        (owner, key, not_before),
    ).fetchone()
    return None if row is None else StoredAnswer(str(row[0]), int(row[1]), json.loads(row[2]), float(row[3]))


class SQLiteGallery(GalleryStore):
    """One gallery: the SQLite file ``speakers.sqlite`` in ``folder`` (kept audio beside it).

    >>> import tempfile
    >>> gallery = SQLiteGallery(Path(tempfile.mkdtemp()), "default")
    >>> gallery.open("m", 4); gallery.count(), gallery.snapshot(None).version
    (0, 0)
    >>> gallery.close()
    """

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.files_dir = Path(folder)
        self.path = self.files_dir / DB_FILENAME
        self.where = str(self.path)
        self.embd_dim = 0
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ opening
    def open(self, model_fingerprint: str, embd_dim: int) -> None:
        with self._lock:
            if self._conn is not None:
                self._check_owner(model_fingerprint, embd_dim)
                return
            try:
                private_mkdir(self.files_dir)
            except OSError as err:
                raise SpeakerDBError(f"cannot create the database folder {self.files_dir}: {err}") from None
            if _truncated(self.path):
                raise SpeakerDBError(
                    f"{self.path}: the database file is empty (0 bytes: truncated or damaged); restore it from a "
                    "backup, or delete the file to start a new, empty database"
                )
            new = not self.path.exists()
            try:
                conn = self._conn = sqlite3.connect(
                    str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False
                )
                if new:  # private before anything is written to it; SQLite gives its -wal and -shm files the same mode
                    os.chmod(self.path, PRIVATE_FILE_MODE)
                conn.execute("PRAGMA busy_timeout = 60000")
                # Switching a new file to WAL needs an exclusive lock, and SQLite may answer "locked" there without
                # waiting on the busy timeout when another process opens the same new database at that moment.
                retry_while_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
                conn.execute("PRAGMA synchronous = NORMAL")
                retry_while_locked(lambda: self._init_schema(model_fingerprint, embd_dim))
            except (sqlite3.DatabaseError, OSError) as err:
                self.close()
                raise SpeakerDBError(f"{self.path}: cannot open the speaker database ({err})") from None
            except BaseException:
                self.close()
                raise

    def owner(self) -> tuple[str, int] | None:
        with self._lock:
            if self._conn is None and not self.path.is_file():
                return None
            try:
                conn = self._conn or sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60.0)
                try:
                    meta = dict(conn.execute(
                        "SELECT key, value FROM meta WHERE key IN ('model_fingerprint', 'embd_dim')").fetchall())
                finally:
                    if conn is not self._conn:
                        conn.close()
            except sqlite3.DatabaseError as err:
                raise SpeakerDBError(f"{self.path}: cannot read the speaker database ({err})") from None
            if "model_fingerprint" not in meta:
                return None
            return str(meta["model_fingerprint"]), int(meta["embd_dim"])

    def _init_schema(self, model_fingerprint: str, embd_dim: int) -> None:
        with immediate(self._db) as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            defaults = {
                "schema": SCHEMA_VERSION,
                "model_fingerprint": model_fingerprint,
                "embd_dim": int(embd_dim),
                "version": 0,
                "next_id": 1,
            }
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", list(defaults.items()))
        self._check_owner(model_fingerprint, embd_dim)

    def _check_owner(self, model_fingerprint: str, embd_dim: int) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if int(meta["schema"]) > SCHEMA_VERSION:
            raise SpeakerDBError(
                f"{self.path}: the database uses schema {meta['schema']}, newer than this mvector "
                f"understands ({SCHEMA_VERSION}); upgrade mvector"
            )
        self.embd_dim = check_owner(
            self.where, str(meta["model_fingerprint"]), int(meta["embd_dim"]), model_fingerprint, embd_dim
        )

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpeakerDBError(f"{self.path}: the speaker database is closed")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------ reads
    def _changes(self, conn: sqlite3.Connection, since: int | None) -> Changes | None:
        version = int(conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
        if since is not None and version == since:
            return None
        dim = self.embd_dim
        if since is not None and since < version - base.REMOVALS_KEPT:  # its removals may be forgotten: reload all
            since = None
        if since is None:  # everything: names first, then the means in chunks (mvector.store.bulk_read)
            total = int(conn.execute("SELECT COUNT(*) FROM speakers").fetchone()[0])
            ids, names, means = read_sqlite(
                conn, "SELECT id, name FROM speakers ORDER BY id", "SELECT mean FROM speakers ORDER BY id", total, dim,
                str(self.path),
            )
            return Changes(version, [], ids, names, means, full=True)
        gone = [int(r[0]) for r in conn.execute("SELECT speaker_id FROM removed WHERE version > ?", (since,))]
        rows = conn.execute("SELECT id, name, mean FROM speakers WHERE updated > ? ORDER BY id", (since,)).fetchall()
        return Changes(
            version, gone, np.array([r[0] for r in rows], np.int64), [r[1] for r in rows], blobs(rows, dim, 2).copy()
        )

    def snapshot(self, since: int | None) -> Changes | None:
        with self._lock:
            conn = self._db
            conn.execute("BEGIN")  # one read snapshot for the version and the changes
            try:
                return self._changes(conn, since)
            finally:
                conn.execute("COMMIT")

    def version(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM speakers").fetchone()[0])

    def names(self, limit: int | None = None) -> list[str]:
        with self._lock:
            sql = "SELECT name FROM speakers ORDER BY id" + ("" if limit is None else f" LIMIT {int(limit)}")
            return [r[0] for r in self._db.execute(sql)]

    def speaker(self, name: str) -> tuple[int, int, np.ndarray] | None:
        with self._lock:
            row = self._db.execute("SELECT id, n_utts, mean FROM speakers WHERE name = ?", (name,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), np.frombuffer(row[2], np.float32).copy())

    def times(self, speaker_id: int) -> tuple[float, float] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT enrolled, updated FROM speaker_times WHERE speaker_id = ?", (int(speaker_id),)
            ).fetchone()
        return None if row is None else (float(row[0]), float(row[1]))

    def utterance_embeddings(self, name: str) -> np.ndarray | None:
        with self._lock:
            rows = self._db.execute(
                "SELECT u.embedding FROM utterances u JOIN speakers s ON s.id = u.speaker_id "
                "WHERE s.name = ? ORDER BY u.id",
                (name,),
            ).fetchall()
        return blobs(rows, self.embd_dim) if rows else None

    def audio_paths(self, name: str | None) -> list[str]:
        with self._lock:
            if name is None:
                rows = self._db.execute("SELECT audio FROM utterances WHERE audio IS NOT NULL ORDER BY id")
            else:
                rows = self._db.execute(
                    "SELECT u.audio FROM utterances u JOIN speakers s ON s.id = u.speaker_id "
                    "WHERE s.name = ? AND u.audio IS NOT NULL ORDER BY u.id",
                    (name,),
                )
            return [r[0] for r in rows]

    def cohort(self) -> tuple[np.ndarray | None, str | None]:
        with self._lock:
            rows = self._db.execute("SELECT embedding FROM cohort ORDER BY id").fetchall()
            source = self._db.execute("SELECT value FROM meta WHERE key = 'cohort_source'").fetchone()
        text = str(source[0]) if source is not None and str(source[0]) else None
        return (blobs(rows, self.embd_dim) if rows else None), text

    def answer(self, owner: str, key: str, not_before: float) -> StoredAnswer | None:
        with self._lock:
            return _answer(self._db, owner, key, not_before)

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def write(self, before_commit: Callable[[], None] | None = None, bump: bool = True) -> Iterator[GalleryWrite]:
        def fail(err: sqlite3.DatabaseError) -> Exception:
            return SpeakerDBError(f"{self.path}: could not write to the speaker database ({err})")

        with self._lock, immediate(self._db, fail) as conn:
            version = int(conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            yield _Write(self, conn, version + 1 if bump else version)
            if bump:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (version + 1,))
            if before_commit is not None:
                before_commit()


class SQLiteKeys(KeyBackend):
    """API keys and the audit log in ``<folder>/service.sqlite`` (WAL mode; one transaction per change).

    >>> import tempfile
    >>> keys = SQLiteKeys(Path(tempfile.mkdtemp()))
    >>> keys.exists(), keys.add_key(KeyRow("0123456789ab", "ci", "read", "0" * 64, 1.0, None, None)), keys.exists()
    (False, True, True)
    >>> keys.close()
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / SERVICE_DB
        self.where = str(self.path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    def exists(self) -> bool:
        return self._conn is not None or self.path.is_file()

    @property
    def _db(self) -> sqlite3.Connection:
        with self._lock:
            if self._conn is None:
                self._connect()
            assert self._conn is not None
            return self._conn

    def _connect(self) -> None:
        try:  # private whatever the umask: the file holds key hashes and the audit log (-wal/-shm follow its mode)
            private_mkdir(self.folder)
            create_private_file(self.path)
        except OSError as err:
            raise StoreError(f"cannot create the folder {self.folder}: {err}") from None
        try:
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn = conn
            conn.execute("PRAGMA busy_timeout = 30000")
            retry_while_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), 30.0)
            conn.execute("PRAGMA synchronous = NORMAL")
            retry_while_locked(self._init_schema, 30.0)
        except sqlite3.DatabaseError as err:
            self.close()
            raise StoreError(f"{self.path}: cannot open the key database ({err})") from None

    def _init_schema(self) -> None:
        assert self._conn is not None
        with immediate(self._conn) as conn:
            for statement in _KEY_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for table, columns in _KEY_COLUMNS.items():  # a file from an earlier version gains its new columns
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column, declaration in columns:
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _transaction(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        def fail(err: sqlite3.DatabaseError) -> Exception:
            return StoreError(f"{self.path}: could not write to the key database ({err})")

        with self._lock, immediate(self._db, fail) as conn:
            return body(conn)

    def add_key(self, row: KeyRow) -> bool:
        galleries = None if row.galleries is None else json.dumps(list(row.galleries))
        try:
            self._transaction(
                lambda conn: conn.execute(
                    "INSERT INTO api_keys (id, name, scope, hash, created, created_by, revoked, galleries) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.key_id, row.name, row.scope, row.hash, row.created, row.created_by, row.revoked, galleries),
                )
            )
        except StoreError as err:
            if "UNIQUE" in str(err):
                return False
            raise
        return True

    _KEY_COLUMNS_SQL = "id, name, scope, hash, created, created_by, revoked, galleries"

    @staticmethod
    def _key(row: tuple) -> KeyRow:
        galleries = None if row[7] is None else tuple(json.loads(row[7]))
        revoked = None if row[6] is None else float(row[6])
        return KeyRow(row[0], row[1], row[2], row[3], float(row[4]), row[5], revoked, galleries)

    def get_key(self, key_id: str) -> KeyRow | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._KEY_COLUMNS_SQL} FROM api_keys WHERE id = ?", (str(key_id),)
            ).fetchone()
        return None if row is None else self._key(row)

    def list_keys(self) -> list[KeyRow]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._KEY_COLUMNS_SQL} FROM api_keys ORDER BY created, id").fetchall()
        return [self._key(r) for r in rows]

    def revoke_key(self, key_id: str, when: float) -> None:
        self._transaction(
            lambda conn: conn.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                                      (when, key_id))
        )

    def audit(self, row: AuditRow, aggregate_since: float | None) -> None:
        self._transaction(lambda conn: record_audit(conn.execute, row, aggregate_since, "audit", "?", "IS"))

    def purge_audit(self, before: float) -> int:
        return self._transaction(
            lambda conn: conn.execute("DELETE FROM audit WHERE COALESCE(last, time) < ?", (before,)).rowcount
        )

    def audit_rows(self, limit: int, action: str | None, outcome: str) -> list[AuditRow]:
        sql = ("SELECT time, key_id, key_name, action, target, status, detail, client, count, last, replica, gallery "
               "FROM audit")
        where, params = audit_filter(action, outcome, "?")
        with self._lock:
            rows = self._db.execute(
                sql + where + " ORDER BY COALESCE(last, time) DESC, id DESC LIMIT ?", (*params, int(limit))
            ).fetchall()
        return [audit_row(r) for r in rows]


class SQLiteStore(Store):
    """The folder store (see the module docstring). ``folder`` is created when a gallery or key is first written.

    >>> import tempfile
    >>> store = SQLiteStore(tempfile.mkdtemp())
    >>> store.gallery().where.endswith("speakers.sqlite"), store.gallery_names()
    (True, [])
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__(str(folder))
        self.folder = Path(folder)
        self._keys: SQLiteKeys | None = None

    @property
    def where(self) -> str:
        return str(self.folder)

    def check(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise StoreError(f"{self.folder} is not a folder: give a database folder or a postgresql:// URL")

    def _make_gallery(self, name: str) -> GalleryStore:
        folder = self.folder if name == DEFAULT_GALLERY else self.folder / GALLERIES_DIR / name
        return SQLiteGallery(folder, name)

    def gallery_names(self) -> list[str]:
        found = [DEFAULT_GALLERY] if (self.folder / DB_FILENAME).is_file() else []
        extra = self.folder / GALLERIES_DIR
        if extra.is_dir():
            found += [p.name for p in extra.iterdir() if (p / DB_FILENAME).is_file() and p.name != DEFAULT_GALLERY]
        return sorted(found)

    def keys(self) -> KeyBackend:
        if self._keys is None:
            self._keys = SQLiteKeys(self.folder)
        return self._keys

    def close(self) -> None:
        super().close()
        if self._keys is not None:
            self._keys.close()
            self._keys = None
