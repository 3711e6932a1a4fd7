"""The PostgreSQL store: galleries, keys and audit in one PostgreSQL database that several processes on several
machines share (``pip install mvector[postgres]``; psycopg 3).

Location: ``postgresql://user:password@host:5432/dbname`` (any libpq URL; its own parameters, such as
``connect_timeout`` or ``sslmode``, are kept). Tables (created on first use, under an advisory lock so two replicas
starting together do not race): ``mvector_galleries`` (one row per gallery: model fingerprint, embedding size,
version counter, next speaker id, cohort source), ``mvector_speakers``, ``mvector_utterances``, ``mvector_removed``,
``mvector_cohort``, ``mvector_idempotency`` (all keyed by gallery), ``mvector_api_keys`` and ``mvector_audit``.

Rules, the same as the folder store's:

* a write holds its gallery's row lock (``SELECT ... FOR UPDATE``) from its checks to its commit, so writes to one
  gallery from every replica happen one after the other, and every write raises the gallery's version by one;
* a reader asks for the version (one indexed row) and, when it moved, for the rows changed since its own version
  in one ``REPEATABLE READ`` snapshot;
* a process killed mid-write leaves nothing of that write (the transaction never committed).

Faults: every connection has a connect timeout and statement, lock and idle-in-transaction timeouts (unless the URL
sets them), and TCP keepalives, so no call waits without bound. A lost or refused connection becomes a
:class:`~mvector.errors.StoreUnavailableError` (the service answers 503) and the next call connects again, so the
process recovers by itself when the database is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mvector.errors import SpeakerDBError, StoreError, StoreUnavailableError
from mvector.store import base
from mvector.store.base import AuditRow, Changes, GalleryStore, GalleryWrite, KeyBackend, KeyRow, Store, StoredAnswer
from mvector.store.bulk_read import read_postgres
from mvector.store.pg_wire import one_value
from mvector.store.sql import audit_filter, audit_row, blobs, check_owner, record_audit, utterance_rows

try:  # an optional dependency: the folder store works without it
    import psycopg
    from psycopg import conninfo as _conninfo
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    psycopg = None

__all__ = ["DEFAULT_TIMEOUTS", "PostgresGallery", "PostgresKeys", "PostgresStore"]

#: Connection settings used unless the URL gives its own: seconds to connect, milliseconds a statement, a lock
#: wait or an idle transaction may take, and TCP keepalives that notice a vanished server within ~10 s.
DEFAULT_TIMEOUTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
}
_SERVER_SETTINGS = {
    "statement_timeout": "15000",
    "lock_timeout": "15000",
    "idle_in_transaction_session_timeout": "60000",
}
_SCHEMA_LOCK = 0x6D766563  # advisory lock id held while creating the tables ("mvec")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mvector_galleries (
    name TEXT PRIMARY KEY,
    model_fingerprint TEXT NOT NULL,
    embd_dim INTEGER NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    next_id BIGINT NOT NULL DEFAULT 1,
    cohort_source TEXT
);
CREATE TABLE IF NOT EXISTS mvector_speakers (
    gallery TEXT NOT NULL REFERENCES mvector_galleries (name),
    id BIGINT NOT NULL,
    name TEXT NOT NULL,
    mean BYTEA NOT NULL,
    n_utts INTEGER NOT NULL CHECK (n_utts >= 1),
    updated BIGINT NOT NULL,
    enrolled_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION,
    PRIMARY KEY (gallery, id),
    UNIQUE (gallery, name)
);
CREATE INDEX IF NOT EXISTS mvector_speakers_updated ON mvector_speakers (gallery, updated);
CREATE TABLE IF NOT EXISTS mvector_utterances (
    id BIGSERIAL PRIMARY KEY,
    gallery TEXT NOT NULL,
    speaker_id BIGINT NOT NULL,
    embedding BYTEA NOT NULL,
    audio TEXT,
    FOREIGN KEY (gallery, speaker_id) REFERENCES mvector_speakers (gallery, id)
);
CREATE INDEX IF NOT EXISTS mvector_utterances_speaker ON mvector_utterances (gallery, speaker_id);
CREATE TABLE IF NOT EXISTS mvector_removed (gallery TEXT NOT NULL, version BIGINT NOT NULL, speaker_id BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS mvector_removed_version ON mvector_removed (gallery, version);
CREATE TABLE IF NOT EXISTS mvector_cohort (
    id BIGSERIAL PRIMARY KEY,
    gallery TEXT NOT NULL REFERENCES mvector_galleries (name),
    embedding BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS mvector_cohort_gallery ON mvector_cohort (gallery, id);
CREATE TABLE IF NOT EXISTS mvector_idempotency (
    gallery TEXT NOT NULL,
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    answer TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (gallery, owner, key)
);
CREATE INDEX IF NOT EXISTS mvector_idempotency_created ON mvector_idempotency (gallery, created);
CREATE TABLE IF NOT EXISTS mvector_api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    hash TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    created_by TEXT,
    revoked DOUBLE PRECISION,
    galleries TEXT
);
CREATE TABLE IF NOT EXISTS mvector_audit (
    id BIGSERIAL PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    key_id TEXT,
    key_name TEXT,
    action TEXT NOT NULL,
    target TEXT,
    status INTEGER NOT NULL,
    detail TEXT,
    client TEXT,
    count INTEGER NOT NULL DEFAULT 1,
    last DOUBLE PRECISION,
    replica TEXT,
    gallery TEXT
);
CREATE INDEX IF NOT EXISTS mvector_audit_time ON mvector_audit ((COALESCE(last, time)));
"""
#: the tables and indexes :data:`_SCHEMA` creates (all present: nothing to create)
_SCHEMA_OBJECTS = re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", _SCHEMA)



#: the gallery's version, sent with libpq's own call so the caller can work before it reads the answer
_VERSION_SQL = b"SELECT version FROM mvector_galleries WHERE name = $1"
#: seconds the client waits for that answer at most (the server's statement timeout is 15 s)
_ANSWER_WAIT_S = 20.0


#: the statement timeout of a replica's full read of a gallery (every other statement: 15 s)
_FULL_READ_TIMEOUT_MS = 300_000


def _memory_bytes() -> int:
    """The machine's memory (what a full read's arrays may reserve without being used is checked against it)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not knowable here: assume 4 GB
        return 4 << 30


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class _Connection:
    """One lazily made connection with its lock; a broken one is replaced at the next call."""

    def __init__(self, url: str, where: str) -> None:
        self.url, self.where = url, where
        self.lock = threading.RLock()
        self._conn: Any = None
        #: reads the answer to a query sent ahead (:meth:`PostgresGallery.reading_version`): done before any other use
        self.pending: Callable[[], object] | None = None

    def _params(self) -> dict[str, Any]:
        given = _conninfo.conninfo_to_dict(self.url)
        params = {k: v for k, v in DEFAULT_TIMEOUTS.items() if k not in given}
        options = given.get("options") or ""
        extra = " ".join(f"-c {k}={v}" for k, v in _SERVER_SETTINGS.items() if k not in options)
        if extra:
            params["options"] = (options + " " + extra).strip()
        return params

    def get(self) -> Any:
        """The open connection (connecting now when there is none or it broke)."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            if self.pending is not None:
                try:
                    self.pending()
                except psycopg.Error as err:
                    self.drop()
                    raise StoreUnavailableError(
                        f"{self.where}: reading the gallery's version failed, the database is unreachable or timed "
                        f"out ({_first_line(err)}); retry shortly"
                    ) from None
            return self._conn
        self.drop()
        try:
            self._conn = psycopg.connect(self.url, autocommit=True, **self._params())
        except psycopg.Error as err:
            raise StoreUnavailableError(f"{self.where}: cannot connect ({_first_line(err)})") from None
        return self._conn

    def drop(self) -> None:
        """Close and forget the connection (after an error that may have broken it)."""
        conn, self._conn, self.pending = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def guard(self, what: str, error: type[StoreError] | type[SpeakerDBError] = StoreError) -> Iterator[Any]:
        """Hold the lock and the connection; turn psycopg errors into the store's (unreachable: the connection is
        dropped and the next call connects again)."""
        with self.lock:
            conn = self.get()
            try:
                yield conn
            except psycopg.OperationalError as err:
                self.drop()
                raise StoreUnavailableError(f"{self.where}: {what} failed, the database is unreachable or timed out "
                                            f"({_first_line(err)}); retry shortly") from None
            except psycopg.Error as err:
                if conn.broken:
                    self.drop()
                raise error(f"{self.where}: {what} failed ({_first_line(err)})") from None


class _Write(GalleryWrite):
    """A write transaction on one gallery (its row locked ``FOR UPDATE``)."""

    def __init__(self, gallery: PostgresGallery, conn: Any, version: int) -> None:
        self._g, self._conn, self.version = gallery, conn, version
        self._name = gallery.name

    def _q(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, (self._name, *params))

    def snapshot(self, since: int | None) -> Changes | None:
        return self._g._changes(self._conn, since)

    def answer(self, owner: str, key: str, not_before: float) -> StoredAnswer | None:
        return _answer(self._conn, self._name, owner, key, not_before)

    def keep_answer(self, owner: str, key: str, request_hash: str, status: int, answer: str, now: float) -> None:
        self._q(
            "INSERT INTO mvector_idempotency (gallery, owner, key, request_hash, status, answer, created) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (gallery, owner, key) DO UPDATE SET "
            "request_hash = excluded.request_hash, status = excluded.status, answer = excluded.answer, "
            "created = excluded.created",
            (owner, key, request_hash, int(status), answer, now),
        )

    def purge_answers(self, before: float) -> int:
        return self._q("DELETE FROM mvector_idempotency WHERE gallery = %s AND created < %s", (before,)).rowcount

    def allocate_ids(self, count: int) -> int:
        first = self._conn.execute(
            "UPDATE mvector_galleries SET next_id = next_id + %s WHERE name = %s RETURNING next_id - %s",
            (int(count), self._name, int(count)),
        ).fetchone()[0]
        return int(first)

    def insert_speakers(
        self, ids: np.ndarray, names: Sequence[str], means: np.ndarray, counts: np.ndarray, now: float
    ) -> None:
        with self._conn.cursor() as cur, cur.copy(
            "COPY mvector_speakers (gallery, id, name, mean, n_utts, updated, enrolled_at, updated_at) FROM STDIN"
        ) as copy:
            for i, n, m, c in zip(ids.tolist(), names, means, counts.tolist()):
                copy.write_row((self._name, i, n, m.tobytes(), c, self.version, now, now))

    def update_speakers(self, ids: np.ndarray, means: np.ndarray, counts: np.ndarray, now: float | None) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(
                "UPDATE mvector_speakers SET mean = %s, n_utts = %s, updated = %s, "
                "updated_at = COALESCE(%s, updated_at), enrolled_at = COALESCE(enrolled_at, %s) "
                "WHERE gallery = %s AND id = %s",
                [(m.tobytes(), int(c), self.version, now, now, self._name, int(i))
                 for i, m, c in zip(ids, means, counts)],
            )

    def add_utterances(self, owners: np.ndarray, embeddings: np.ndarray) -> None:
        with self._conn.cursor() as cur, cur.copy(
            "COPY mvector_utterances (gallery, speaker_id, embedding) FROM STDIN"
        ) as copy:
            for owner, row in zip(np.asarray(owners).tolist(), embeddings):
                copy.write_row((self._name, owner, row.tobytes()))

    def add_utterance(self, owner: int, embedding: np.ndarray) -> int:
        return int(self._q(
            "INSERT INTO mvector_utterances (gallery, speaker_id, embedding) VALUES (%s, %s, %s) RETURNING id",
            (int(owner), embedding.tobytes()),
        ).fetchone()[0])

    def set_audio(self, utterance_id: int, relative: str) -> None:
        self._conn.execute(
            "UPDATE mvector_utterances SET audio = %s WHERE gallery = %s AND id = %s",
            (relative, self._name, int(utterance_id)),
        )

    def utterances(self, speaker_id: int) -> tuple[list[int], np.ndarray, list[str | None]]:
        rows = self._q(
            "SELECT id, embedding, audio FROM mvector_utterances WHERE gallery = %s AND speaker_id = %s ORDER BY id",
            (int(speaker_id),),
        ).fetchall()
        return [int(r[0]) for r in rows], blobs(rows, self._g.embd_dim, 1), [r[2] for r in rows]

    def every_utterance(self) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        with self._conn.cursor(name="mvector_every_utterance") as cursor:  # server-side: read a chunk at a time
            cursor.execute(
                "SELECT speaker_id, embedding, audio FROM mvector_utterances WHERE gallery = %s "
                "ORDER BY speaker_id, id", (self._name,),
            )
            return utterance_rows(cursor, self._g.embd_dim)

    def every_time(self) -> dict[int, tuple[float, float]]:
        rows = self._q(
            "SELECT id, enrolled_at, updated_at FROM mvector_speakers WHERE gallery = %s AND enrolled_at IS NOT NULL"
        )
        return {int(r[0]): (float(r[1]), float(r[2])) for r in rows}

    def remove_speaker(self, speaker_id: int) -> list[str]:
        sid = int(speaker_id)
        kept = [r[0] for r in self._q(
            "SELECT audio FROM mvector_utterances WHERE gallery = %s AND speaker_id = %s AND audio IS NOT NULL "
            "ORDER BY id", (sid,))]
        self._q("DELETE FROM mvector_utterances WHERE gallery = %s AND speaker_id = %s", (sid,))
        self._q("DELETE FROM mvector_speakers WHERE gallery = %s AND id = %s", (sid,))
        self._q("INSERT INTO mvector_removed (gallery, version, speaker_id) VALUES (%s, %s, %s)", (self.version, sid))
        expired = self.version - base.REMOVALS_KEPT
        self._q("DELETE FROM mvector_removed WHERE gallery = %s AND version <= %s", (expired,))
        return kept

    def remove_utterance(self, utterance_id: int) -> None:
        self._q("DELETE FROM mvector_utterances WHERE gallery = %s AND id = %s", (int(utterance_id),))

    def replace_cohort(self, embeddings: np.ndarray | None, source: str | None) -> None:
        self._q("DELETE FROM mvector_cohort WHERE gallery = %s")
        if embeddings is not None:
            with self._conn.cursor() as cur, cur.copy("COPY mvector_cohort (gallery, embedding) FROM STDIN") as copy:
                for row in embeddings:
                    copy.write_row((self._name, row.tobytes()))
        self._conn.execute("UPDATE mvector_galleries SET cohort_source = %s WHERE name = %s", (source, self._name))

    def all_audio_paths(self) -> list[str]:
        return [r[0] for r in self._q(
            "SELECT audio FROM mvector_utterances WHERE gallery = %s AND audio IS NOT NULL")]

    def has_name(self, name: str) -> bool:
        found = self._q("SELECT 1 FROM mvector_speakers WHERE gallery = %s AND name = %s", (name,)).fetchone()
        return found is not None


def _answer(conn: Any, gallery: str, owner: str, key: str, not_before: float) -> StoredAnswer | None:
    row = conn.execute(
        "SELECT request_hash, status, answer, created FROM mvector_idempotency "
        "WHERE gallery = %s AND owner = %s AND key = %s AND created >= %s",
        (gallery, owner, key, not_before),
    ).fetchone()
    return None if row is None else StoredAnswer(str(row[0]), int(row[1]), json.loads(row[2]), float(row[3]))


class PostgresGallery(GalleryStore):
    """One gallery of a PostgreSQL store (rows keyed by the gallery's name; no files)."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        self.name = name
        self.files_dir = None
        self.where = f"{store.where} (gallery {name})"
        self.embd_dim = 0
        self._store = store
        self._conn = _Connection(store.location, self.where)

    def open(self, model_fingerprint: str, embd_dim: int) -> None:
        self._store.ensure_schema()
        with self._conn.guard("opening the gallery", SpeakerDBError) as conn:
            conn.execute(
                "INSERT INTO mvector_galleries (name, model_fingerprint, embd_dim) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (self.name, model_fingerprint, int(embd_dim)),
            )
            row = conn.execute(
                "SELECT model_fingerprint, embd_dim FROM mvector_galleries WHERE name = %s", (self.name,)
            ).fetchone()
        self.embd_dim = check_owner(self.where, str(row[0]), int(row[1]), model_fingerprint, embd_dim)

    def owner(self) -> tuple[str, int] | None:
        self._store.ensure_schema()
        row = self._one("SELECT model_fingerprint, embd_dim FROM mvector_galleries WHERE name = %s")
        return None if row is None else (str(row[0]), int(row[1]))

    def close(self) -> None:
        with self._conn.lock:
            self._conn.drop()

    def _changes(self, conn: Any, since: int | None) -> Changes | None:
        version, next_id = conn.execute(
            "SELECT version, next_id FROM mvector_galleries WHERE name = %s", (self.name,)
        ).fetchone()
        version = int(version)
        if since is not None and version == since:
            return None
        dim = self.embd_dim
        if since is not None and since < version - base.REMOVALS_KEPT:  # its removals may be forgotten: reload all
            since = None
        if since is None:  # everything: one binary COPY (mvector.store.bulk_read)
            timeout = conn.execute("SHOW statement_timeout").fetchone()[0]
            conn.execute(f"SET LOCAL statement_timeout = {_FULL_READ_TIMEOUT_MS}")  # a large gallery takes a while
            capacity = max(0, int(next_id) - 1)  # ids are given out once: no more rows than that
            if capacity * dim * 4 > _memory_bytes() // 2:  # most of them removed long ago: count instead
                capacity = int(conn.execute("SELECT COUNT(*) FROM mvector_speakers WHERE gallery = %s",
                                            (self.name,)).fetchone()[0])
            ids, names, means = read_postgres(conn, "mvector_speakers", self.name, capacity, dim, self.where)
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (timeout,))  # a write goes on as before
            return Changes(version, [], ids, names, means, full=True)
        gone = [int(r[0]) for r in conn.execute(
            "SELECT speaker_id FROM mvector_removed WHERE gallery = %s AND version > %s", (self.name, since))]
        rows = conn.execute(
            "SELECT id, name, mean FROM mvector_speakers WHERE gallery = %s AND updated > %s ORDER BY id",
            (self.name, since),
        ).fetchall()
        return Changes(
            version, gone, np.array([r[0] for r in rows], np.int64), [r[1] for r in rows], blobs(rows, dim, 2).copy()
        )

    def version(self) -> int:
        return int(self._one("SELECT version FROM mvector_galleries WHERE name = %s")[0])

    @contextlib.contextmanager
    def reading_version(self) -> Iterator[Callable[[], int]]:
        """The version query goes out on entering; the block's function waits for its answer. The connection is
        held until the block ends; the answer is read before any other use of it, and at the end if nobody asked."""
        with self._conn.guard("reading the gallery", SpeakerDBError) as conn:
            pgconn = conn.pgconn
            pgconn.send_query_params(_VERSION_SQL, [self.name.encode()])
            answer: list[int] = []

            def version_now() -> int:
                if not answer:
                    self._conn.pending = None
                    value = one_value(pgconn, _ANSWER_WAIT_S)
                    if value is None:
                        raise SpeakerDBError(f"{self.where}: the gallery is missing from the database")
                    answer.append(int(value))
                return answer[0]

            self._conn.pending = version_now
            try:
                yield version_now
            finally:
                if not answer:  # the block ended early: the answer is still read, so the connection stays usable
                    try:
                        version_now()
                    except Exception:
                        self._conn.drop()

    def snapshot(self, since: int | None) -> Changes | None:
        with self._conn.guard("reading the gallery", SpeakerDBError) as conn:
            if since is not None:  # the common case: one indexed row says nothing changed
                row = conn.execute("SELECT version FROM mvector_galleries WHERE name = %s", (self.name,)).fetchone()
                if int(row[0]) == since:
                    return None
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return self._changes(conn, since)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._conn.guard("reading the gallery", SpeakerDBError) as conn:
            return conn.execute(sql, (self.name, *params)).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._conn.guard("reading the gallery", SpeakerDBError) as conn:
            return conn.execute(sql, (self.name, *params)).fetchall()

    def count(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM mvector_speakers WHERE gallery = %s")[0])

    def names(self, limit: int | None = None) -> list[str]:
        sql = "SELECT name FROM mvector_speakers WHERE gallery = %s ORDER BY id"
        return [r[0] for r in self._all(sql + ("" if limit is None else f" LIMIT {int(limit)}"))]

    def speaker(self, name: str) -> tuple[int, int, np.ndarray] | None:
        row = self._one("SELECT id, n_utts, mean FROM mvector_speakers WHERE gallery = %s AND name = %s", (name,))
        return None if row is None else (int(row[0]), int(row[1]), np.frombuffer(bytes(row[2]), np.float32).copy())

    def times(self, speaker_id: int) -> tuple[float, float] | None:
        row = self._one(
            "SELECT enrolled_at, updated_at FROM mvector_speakers WHERE gallery = %s AND id = %s", (int(speaker_id),)
        )
        return None if row is None or row[0] is None else (float(row[0]), float(row[1]))

    def utterance_embeddings(self, name: str) -> np.ndarray | None:
        rows = self._all(
            "SELECT u.embedding FROM mvector_utterances u JOIN mvector_speakers s "
            "ON s.gallery = u.gallery AND s.id = u.speaker_id WHERE s.gallery = %s AND s.name = %s ORDER BY u.id",
            (name,),
        )
        return blobs(rows, self.embd_dim) if rows else None

    def audio_paths(self, name: str | None) -> list[str]:
        if name is None:
            rows = self._all(
                "SELECT audio FROM mvector_utterances WHERE gallery = %s AND audio IS NOT NULL ORDER BY id"
            )
        else:
            rows = self._all(
                "SELECT u.audio FROM mvector_utterances u JOIN mvector_speakers s ON s.gallery = u.gallery "
                "AND s.id = u.speaker_id WHERE s.gallery = %s AND s.name = %s AND u.audio IS NOT NULL ORDER BY u.id",
                (name,),
            )
        return [r[0] for r in rows]

    def cohort(self) -> tuple[np.ndarray | None, str | None]:
        rows = self._all("SELECT embedding FROM mvector_cohort WHERE gallery = %s ORDER BY id")
        source = self._one("SELECT cohort_source FROM mvector_galleries WHERE name = %s")
        text = source[0] if source is not None and source[0] else None
        return (blobs(rows, self.embd_dim) if rows else None), text

    def answer(self, owner: str, key: str, not_before: float) -> StoredAnswer | None:
        with self._conn.guard("reading the gallery", SpeakerDBError) as conn:
            return _answer(conn, self.name, owner, key, not_before)

    @contextlib.contextmanager
    def write(self, before_commit: Callable[[], None] | None = None, bump: bool = True) -> Iterator[GalleryWrite]:
        with self._conn.guard("writing to the gallery", SpeakerDBError) as conn:
            with conn.transaction():
                row = conn.execute(
                    "SELECT version FROM mvector_galleries WHERE name = %s FOR UPDATE", (self.name,)
                ).fetchone()
                if row is None:
                    raise SpeakerDBError(f"{self.where}: the gallery does not exist (it was deleted)")
                version = int(row[0])
                yield _Write(self, conn, version + 1 if bump else version)
                if bump:
                    conn.execute("UPDATE mvector_galleries SET version = %s WHERE name = %s", (version + 1, self.name))
                if before_commit is not None:
                    before_commit()


class PostgresKeys(KeyBackend):
    """API keys and the audit log in the tables ``mvector_api_keys`` and ``mvector_audit``."""

    def __init__(self, store: PostgresStore) -> None:
        self.where = store.where
        self._store = store
        self._conn = _Connection(store.location, store.where)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[Any]:
        self._store.ensure_schema()
        with self._conn.guard(what) as conn:
            yield conn

    def exists(self) -> bool:
        return True

    def add_key(self, row: KeyRow) -> bool:
        galleries = None if row.galleries is None else json.dumps(list(row.galleries))
        with self._guard("storing a key") as conn:
            cur = conn.execute(
                "INSERT INTO mvector_api_keys (id, name, scope, hash, created, created_by, revoked, galleries) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (row.key_id, row.name, row.scope, row.hash, row.created, row.created_by, row.revoked, galleries),
            )
            return cur.rowcount == 1

    _COLUMNS = "id, name, scope, hash, created, created_by, revoked, galleries"

    @staticmethod
    def _key(r: Sequence[Any]) -> KeyRow:
        galleries = None if r[7] is None else tuple(json.loads(r[7]))
        return KeyRow(r[0], r[1], r[2], r[3], float(r[4]), r[5], None if r[6] is None else float(r[6]), galleries)

    def get_key(self, key_id: str) -> KeyRow | None:
        with self._guard("reading a key") as conn:
            row = conn.execute(f"SELECT {self._COLUMNS} FROM mvector_api_keys WHERE id = %s", (key_id,)).fetchone()
        return None if row is None else self._key(row)

    def list_keys(self) -> list[KeyRow]:
        with self._guard("listing keys") as conn:
            rows = conn.execute(f"SELECT {self._COLUMNS} FROM mvector_api_keys ORDER BY created, id").fetchall()
        return [self._key(r) for r in rows]

    def revoke_key(self, key_id: str, when: float) -> None:
        with self._guard("revoking a key") as conn:
            conn.execute("UPDATE mvector_api_keys SET revoked = %s WHERE id = %s AND revoked IS NULL", (when, key_id))

    def audit(self, row: AuditRow, aggregate_since: float | None) -> None:
        with self._guard("writing the audit log") as conn, conn.transaction():
            record_audit(conn.execute, row, aggregate_since, "mvector_audit", "%s", "IS NOT DISTINCT FROM")

    def purge_audit(self, before: float) -> int:
        with self._guard("purging the audit log") as conn:
            return conn.execute("DELETE FROM mvector_audit WHERE COALESCE(last, time) < %s", (before,)).rowcount

    def audit_rows(self, limit: int, action: str | None, outcome: str) -> list[AuditRow]:
        where, params = audit_filter(action, outcome, "%s")
        with self._guard("reading the audit log") as conn:
            rows = conn.execute(
                "SELECT time, key_id, key_name, action, target, status, detail, client, count, last, replica, gallery "
                f"FROM mvector_audit{where} ORDER BY COALESCE(last, time) DESC, id DESC LIMIT %s",
                (*params, int(limit)),
            ).fetchall()
        return [audit_row(r) for r in rows]

    def close(self) -> None:
        with self._conn.lock:
            self._conn.drop()


class PostgresStore(Store):
    """The PostgreSQL store at ``url`` (see the module docstring); nothing connects until first use or
    :meth:`check`."""

    def __init__(self, url: str) -> None:
        if psycopg is None:
            raise StoreError(
                "a postgresql:// location needs psycopg 3: pip install 'mvector[postgres]' (or psycopg[binary])"
            )
        super().__init__(url)
        from mvector.store import redact

        self._where = redact(url)
        try:
            _conninfo.conninfo_to_dict(url)
        except psycopg.Error as err:
            raise StoreError(f"{self._where}: not a valid PostgreSQL URL ({_first_line(err)})") from None
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._admin = _Connection(url, self._where)
        self._keys: PostgresKeys | None = None

    @property
    def where(self) -> str:
        return self._where

    def check(self) -> None:
        self.ensure_schema()

    def ensure_schema(self) -> None:
        """Create the tables when missing (once per process and store; under an advisory lock)."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            with self._admin.guard("creating the tables") as conn, conn.transaction():
                # Every table and index there already (a replica's start): no DDL. A CREATE INDEX, even IF NOT
                # EXISTS, waits for an autovacuum ANALYZE of its table: seconds after a bulk enrolment.
                found = conn.execute("SELECT count(to_regclass(n)) FROM unnest(%s::text[]) AS n", (_SCHEMA_OBJECTS,))
                if int(found.fetchone()[0]) != len(_SCHEMA_OBJECTS):
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
            self._admin.drop()
            self._schema_ready = True

    def _make_gallery(self, name: str) -> GalleryStore:
        return PostgresGallery(self, name)

    def gallery_names(self) -> list[str]:
        self.ensure_schema()
        with self._admin.guard("listing galleries") as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM mvector_galleries ORDER BY name")]
        return names

    def keys(self) -> KeyBackend:
        if self._keys is None:
            self._keys = PostgresKeys(self)
        return self._keys

    def close(self) -> None:
        super().close()
        self._admin.drop()
        if self._keys is not None:
            self._keys.close()
            self._keys = None
