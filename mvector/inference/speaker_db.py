"""The enrolled-speaker store used for identification: an SQLite database in a folder (default ``audio_db/``).

The file ``<db_dir>/speakers.sqlite`` holds, in one transactional database:

* every speaker (unique name) with its mean embedding: the L2-normalised mean of its L2-normalised utterance
  embeddings;
* every enrolled utterance embedding (float32 blobs), so a speaker can gain utterances later;
* the fingerprint and embedding size of the model that made the embeddings; opening the folder with another model
  is refused, because scores between two models' embeddings mean nothing;
* optionally a *cohort* (embeddings of speakers who are not enrolled, :meth:`SpeakerDatabase.set_cohort`) for
  adaptive score normalisation (AS-norm) at search time, so that scores do not depend on how many or which
  speakers are enrolled.

Because every utterance embedding is kept, one recording can be removed from a speaker
(:meth:`SpeakerDatabase.remove_utterance`) and the speaker's model rebuilt from the rest. A database written
before the cohort existed opens as it is (the cohort table is added on first open; it starts empty).

Several processes may enrol and search at once: writes run in ``BEGIN IMMEDIATE`` transactions in WAL mode with a
busy timeout, and every write bumps a version counter. Each process keeps the normalised mean matrix in memory and
brings it up to date before a search by fetching only the rows changed since its version, so a speaker enrolled by
another process is found on the next search. A process killed during a write leaves the database as it was before
that write (SQLite's atomic commit).

A write's checks and the write are one transaction: :meth:`SpeakerDatabase.add` with ``mode="append"`` (add to an
enrolled speaker) or ``mode="create"`` (a new speaker only) checks the speaker's existence after ``BEGIN IMMEDIATE``,
so an addition and a removal of one speaker, in one process or several, happen one after the other: a removal
during an addition wins or loses as a whole, and a removed speaker is never brought back by a late addition.
Embedding (the slow part) is done by the caller before the write. A write may carry an idempotency record
(:mod:`mvector.inference.idempotency`), stored in the same transaction.

Names follow one rule (:func:`mvector.inference.speaker_names.validate_name`: NFKC, no invisible or bidirectional
characters, no look-alike script mixes). With ``keep_audio=True`` the enrolled audio is also kept as 16 kHz WAV files
under ``<db_dir>/<folder>/`` (layout and folder names: :mod:`mvector.inference.speaker_files`), each written to a
temporary file and renamed into place inside the transaction that records it. The folder and every file the
database creates are private (0700 / 0600) whatever the umask. A removal deletes its files after its commit; opening a
folder removes what a killed writer left (temporary WAVs, WAVs no committed row names, an old ``.trash``).

>>> import tempfile, numpy as np
>>> rng = np.random.default_rng(0)
>>> alice, bob = rng.standard_normal((2, 8)).astype("float32")
>>> with tempfile.TemporaryDirectory() as folder:
...     db = SpeakerDatabase(folder, model_fingerprint="demo-model", embd_dim=8)
...     db.add("alice", alice)
...     db.add_many({"bob": np.stack([bob, bob + 0.1])})
...     print(db.names(), len(db))
...     (name, score), = db.search(alice + 0.05)[0]
...     print(name, round(score, 2))
...     db.close()
['alice', 'bob'] 2
alice 1.0
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np

from mvector.audio import load_audio
from mvector.errors import AudioError, InvalidNameError, SpeakerDBError, SpeakerExistsError, UnknownSpeakerError
from mvector.inference import idempotency
from mvector.inference.idempotency import IdempotentWrite, Replayed, StoredAnswer
from mvector.inference.speaker_files import clean_leftovers, folder_name, make_folder, write_wav
from mvector.inference.speaker_names import normalise_name, validate_name
from mvector.utils.files import PRIVATE_FILE_MODE, private_mkdir

__all__ = ["DB_FILENAME", "SAMPLE_RATE", "SCORE_NORMS", "WRITE_MODES", "SpeakerDatabase"]

DB_FILENAME = "speakers.sqlite"
SAMPLE_RATE = 16000
SCHEMA_VERSION = 1
#: What :meth:`SpeakerDatabase.add` does with a name: ``any`` (create or add to), ``create`` (refuse an enrolled
#: name), ``append`` (refuse a name that is not enrolled).
WRITE_MODES = ("any", "create", "append")
_LOAD_CHUNK = 65536
_SCORE_BLOCK = 1 << 24  # at most this many scores ([queries, speakers]) are held at once in a batch search

PathLike = Union[str, os.PathLike]

# Test hooks: _before_commit is called inside every write transaction just before COMMIT; _test_hook(point) at the
# points "wav_tmp" (a kept WAV's temporary file is complete), "wav_written", "before_commit", "after_commit" and
# "files_deleting" (a removal committed, its files not yet deleted), so a test can kill a process there.
_before_commit: Callable[[], None] | None = None
_test_hook: Callable[[str], None] | None = None


def _hook(point: str) -> None:
    if _test_hook is not None:
        _test_hook(point)

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
"""

#: Score normalisations :meth:`SpeakerDatabase.search` can apply.
SCORE_NORMS = (None, "as_norm")


def _as_embeddings(value: Any, embd_dim: int, what: str) -> np.ndarray:
    """``[D]`` or ``[n, D]`` finite, non-zero vectors as a float32 ``[n, D]`` array."""
    try:
        arr = np.asarray(_to_numpy(value), dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise SpeakerDBError(f"{what}: embeddings must be a numeric array ({err})") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != embd_dim:
        raise SpeakerDBError(
            f"{what}: embeddings must have shape [{embd_dim}] or [n, {embd_dim}] for this database, "
            f"got {list(np.shape(value))}"
        )
    if arr.shape[0] == 0:
        raise SpeakerDBError(f"{what}: no embeddings given")
    if not np.isfinite(arr).all():
        raise SpeakerDBError(f"{what}: embeddings contain NaN or infinite values")
    if not (np.abs(arr).max(axis=1) > 0).all():
        raise SpeakerDBError(f"{what}: an embedding is all zeros (it has no direction to compare)")
    return np.ascontiguousarray(arr)


def _to_numpy(value: Any) -> Any:
    """A torch tensor (on any device) as a numpy array; anything else unchanged (torch is never imported here)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return value


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _mean_of(utterances: np.ndarray) -> np.ndarray:
    """The speaker's mean: L2-normalised mean of the L2-normalised utterance embeddings (float32)."""
    mean = _normalise(utterances).sum(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-12:  # utterances pointing in opposite directions cancel out; keep any unit vector
        mean, norm = _normalise(utterances)[0], 1.0
    return (mean / norm).astype(np.float32)


def _top_k_stats(rows: np.ndarray, cohort: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each unit row's ``top_k`` highest cosine scores against the unit cohort."""
    k = min(int(top_k), cohort.shape[0])
    mean = np.empty(rows.shape[0], np.float64)
    std = np.empty(rows.shape[0], np.float64)
    step = max(1, _SCORE_BLOCK // max(1, cohort.shape[0]))
    for start in range(0, rows.shape[0], step):
        scores = rows[start : start + step] @ cohort.T
        top = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k :].astype(np.float64)
        mean[start : start + step] = top.mean(axis=1)
        std[start : start + step] = top.std(axis=1)
    return mean, np.maximum(std, 1e-6)


def _as_audio(wave: Any, sample_rate: int, what: str) -> np.ndarray:
    """A finite mono float32 waveform at 16 kHz, for keeping on disk (scaling, mono, resampling: mvector.audio)."""
    if isinstance(wave, np.ndarray) and (wave.ndim not in (1, 2) or wave.size == 0):
        raise SpeakerDBError(f"{what}: audio must be a non-empty 1-D waveform, got shape {list(np.shape(wave))}")
    try:
        return load_audio(np.asarray(wave), SAMPLE_RATE, source_sample_rate=int(sample_rate))
    except AudioError as err:
        raise SpeakerDBError(f"{what}: {err}") from err


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


def _remove_empty(folder: Path) -> None:
    """Remove ``folder`` when it is empty (and exists)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


class _MeanCache:
    """In-memory copy of the speakers' normalised means: one float32 matrix for a single vectorised scan."""

    def __init__(self, embd_dim: int, capacity: int = 0) -> None:
        self.matrix = np.empty((capacity, embd_dim), dtype=np.float32)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.names: list[str] = []
        self.row_of: dict[int, int] = {}  # speaker id -> row
        self.id_of: dict[str, int] = {}  # name -> speaker id
        self.count = 0

    def _grow(self, needed: int) -> None:
        if needed <= len(self.ids):
            return
        capacity = max(needed, int(len(self.ids) * 1.5) + 16)
        matrix = np.empty((capacity, self.matrix.shape[1]), dtype=np.float32)
        matrix[: self.count] = self.matrix[: self.count]
        ids = np.empty(capacity, dtype=np.int64)
        ids[: self.count] = self.ids[: self.count]
        self.matrix, self.ids = matrix, ids

    def upsert(self, ids: Sequence[int], names: Sequence[str], means: np.ndarray) -> None:
        self._grow(self.count + len(ids))
        for sid, name, mean in zip(ids, names, means):
            row = self.row_of.get(sid)
            if row is None:
                row = self.count
                self.count += 1
                self.row_of[sid] = row
                self.ids[row] = sid
                self.names.append(name)
                self.id_of[name] = sid
            self.matrix[row] = mean

    def append_block(self, ids: np.ndarray, names: list[str], means: np.ndarray) -> None:
        """Append speakers known to be new (bulk load path)."""
        start = self.count
        self._grow(start + len(ids))
        self.matrix[start : start + len(ids)] = means
        self.ids[start : start + len(ids)] = ids
        self.names.extend(names)
        self.row_of.update(zip(ids.tolist(), range(start, start + len(ids))))
        self.id_of.update(zip(names, ids.tolist()))
        self.count += len(ids)

    def remove(self, sid: int) -> None:
        row = self.row_of.pop(sid, None)
        if row is None:
            return
        last = self.count - 1
        del self.id_of[self.names[row]]
        if row != last:  # move the last row into the hole
            self.matrix[row] = self.matrix[last]
            self.ids[row] = self.ids[last]
            self.names[row] = self.names[last]
            self.row_of[int(self.ids[row])] = row
        self.names.pop()
        self.count = last


def _retry_while_locked(action, seconds: float = 60.0):
    """Run ``action``, retrying with a short back-off while SQLite reports the database locked or busy."""
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


class SpeakerDatabase:
    """Enrolled speakers of one model, stored in ``<db_dir>/speakers.sqlite``.

    Args:
        db_dir: the database folder (created when missing).
        model_fingerprint: identifies the model that makes the embeddings; a database made by another model is
            refused with :class:`~mvector.errors.SpeakerDBError`.
        embd_dim: the embedding size; must match the database's.
        keep_audio: also keep enrolled audio as 16 kHz WAV files under ``<db_dir>/<name>/``.

    >>> import tempfile, numpy as np
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with SpeakerDatabase(folder, "model-a", embd_dim=3) as db:
    ...         db.add("x", np.array([1.0, 0.0, 0.0]))
    ...         db.add("y", np.array([0.0, 1.0, 0.0]))
    ...         print([(n, round(s, 3)) for n, s in db.search(np.array([1.0, 0.2, 0.0]), top_k=2)[0]])
    [('x', 0.981), ('y', 0.196)]
    """

    def __init__(self, db_dir: PathLike, model_fingerprint: str, embd_dim: int, keep_audio: bool = False) -> None:
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise SpeakerDBError(f"model_fingerprint must be a non-empty string, got {model_fingerprint!r}")
        if isinstance(embd_dim, bool) or not isinstance(embd_dim, (int, np.integer)) or embd_dim < 1:
            raise SpeakerDBError(f"embd_dim must be a positive integer, got {embd_dim!r}")
        self.db_dir = Path(db_dir)
        self.path = self.db_dir / DB_FILENAME
        self.model_fingerprint = model_fingerprint
        self.embd_dim = int(embd_dim)
        self.keep_audio = bool(keep_audio)
        self._lock = threading.RLock()
        self._cache: _MeanCache | None = None
        self._version = -1
        self._conn: sqlite3.Connection | None = None
        # AS-norm state: unit cohort rows and the speakers' cohort statistics, valid for one database version.
        self._cohort_cache: tuple[int, np.ndarray | None] | None = None
        self._speaker_stats: tuple[int, tuple[int, str], np.ndarray, np.ndarray] | None = None
        try:
            private_mkdir(self.db_dir)
        except OSError as err:
            raise SpeakerDBError(f"cannot create the database folder {self.db_dir}: {err}") from None
        if _truncated(self.path):
            raise SpeakerDBError(
                f"{self.path}: the database file is empty (0 bytes: truncated or damaged); restore it from a backup, "
                "or delete the file to start a new, empty database"
            )
        new = not self.path.exists()
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
            if new:  # private before anything is written to it; SQLite gives its -wal and -shm files the same mode
                os.chmod(self.path, PRIVATE_FILE_MODE)
            self._conn.execute("PRAGMA busy_timeout = 60000")
            # Switching a new file to WAL needs an exclusive lock, and SQLite may answer "locked" there without
            # waiting on the busy timeout when another process opens the same new database at that moment.
            _retry_while_locked(lambda: self._conn.execute("PRAGMA journal_mode = WAL"))
            self._conn.execute("PRAGMA synchronous = NORMAL")
            _retry_while_locked(self._init_schema)
            _retry_while_locked(self._clean_leftovers)
        except (sqlite3.DatabaseError, OSError) as err:
            self.close()
            raise SpeakerDBError(f"{self.path}: cannot open the speaker database ({err})") from None
        except SpeakerDBError:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing
    def _init_schema(self) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            idempotency.create_table(conn)
            defaults = {
                "schema": SCHEMA_VERSION,
                "model_fingerprint": self.model_fingerprint,
                "embd_dim": self.embd_dim,
                "version": 0,
                "next_id": 1,
            }
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", list(defaults.items()))
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if int(meta["schema"]) > SCHEMA_VERSION:
            raise SpeakerDBError(
                f"{self.path}: the database uses schema {meta['schema']}, newer than this mvector "
                f"understands ({SCHEMA_VERSION}); upgrade mvector"
            )
        stored_fp, stored_dim = str(meta["model_fingerprint"]), int(meta["embd_dim"])
        if stored_fp != self.model_fingerprint or stored_dim != self.embd_dim:
            raise SpeakerDBError(
                f"{self.path}: the database was made by another model (fingerprint {stored_fp[:12]}, "
                f"embedding size {stored_dim}); this model has fingerprint {self.model_fingerprint[:12]}, "
                f"embedding size {self.embd_dim}. Use the matching model, or a new database folder "
                f"for this model"
            )

    def _clean_leftovers(self) -> None:
        """Remove what an earlier kill left (``.trash``, temporary and orphan WAVs, expired idempotency records)
        while holding the write lock, so the files of another process's write in progress are never taken."""
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            referenced = [r[0] for r in conn.execute("SELECT audio FROM utterances WHERE audio IS NOT NULL")]
            clean_leftovers(self.db_dir, referenced)
            idempotency.purge(conn, time.time())
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpeakerDBError(f"{self.path}: the speaker database is closed")
        return self._conn

    def close(self) -> None:
        """Close the connection (the in-memory index is dropped too). Safe to call twice.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     db = SpeakerDatabase(folder, "m", 4)
        ...     db.close(); db.close()
        """
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._cache = None
            self._version = -1
            self._cohort_cache = None
            self._speaker_stats = None

    def __enter__(self) -> SpeakerDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"SpeakerDatabase({str(self.db_dir)!r}, model_fingerprint={self.model_fingerprint[:12]!r}, " + (
            f"embd_dim={self.embd_dim}, keep_audio={self.keep_audio})"
        )

    def _refresh(self) -> None:
        """Bring the in-memory mean matrix up to date with the database (inside the caller's transaction or not).

        Only rows written since the cached version are fetched; the first call loads everything in chunks.
        """
        conn = self._db
        own_tx = not conn.in_transaction
        if own_tx:
            conn.execute("BEGIN")  # one read snapshot for the version and the changes
        try:
            version = int(conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            if version == self._version and self._cache is not None:
                return
            if self._cache is None:
                self._cache = self._load_all()
            else:
                gone = conn.execute("SELECT speaker_id FROM removed WHERE version > ?", (self._version,)).fetchall()
                for (sid,) in gone:
                    self._cache.remove(int(sid))
                rows = conn.execute(
                    "SELECT id, name, mean FROM speakers WHERE updated > ? ORDER BY id", (self._version,)
                ).fetchall()
                if rows:
                    means = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                    self._cache.upsert([int(r[0]) for r in rows], [r[1] for r in rows], means)
            self._version = version
        finally:
            if own_tx:
                conn.execute("COMMIT")

    def _load_all(self) -> _MeanCache:
        conn = self._db
        total = int(conn.execute("SELECT COUNT(*) FROM speakers").fetchone()[0])
        cache = _MeanCache(self.embd_dim, capacity=total)
        cursor = conn.execute("SELECT id, name, mean FROM speakers ORDER BY id")
        row_bytes = 4 * self.embd_dim
        while True:
            chunk = cursor.fetchmany(_LOAD_CHUNK)
            if not chunk:
                break
            ids, names, blobs = zip(*chunk)
            joined = b"".join(blobs)
            if len(joined) != row_bytes * len(chunk):
                raise SpeakerDBError(f"{self.path}: damaged database (a mean embedding has the wrong size)")
            means = np.frombuffer(joined, dtype=np.float32).reshape(len(chunk), self.embd_dim)
            cache.append_block(np.asarray(ids, dtype=np.int64), list(names), means)
        return cache

    def _begin_write(self) -> int:
        """Start a write transaction, refresh the cache, and return the version this write will commit."""
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._refresh()
            return self._version + 1
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _commit(self, version: int) -> None:
        conn = self._db
        conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (version,))
        if _before_commit is not None:
            _before_commit()
        _hook("before_commit")
        conn.execute("COMMIT")
        _hook("after_commit")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[tuple[sqlite3.Connection, int, list[Callable[[], None]]]]:
        """One write: ``BEGIN IMMEDIATE`` ... ``COMMIT``. Yields ``(connection, version, undo)``; on any error the
        transaction is rolled back, the ``undo`` actions (file moves to take back) run newest first, and an SQLite
        error becomes a :class:`SpeakerDBError` naming the database."""
        conn = self._db
        version = self._begin_write()
        undo: list[Callable[[], None]] = []
        try:
            yield conn, version, undo
            self._commit(version)
        except BaseException as err:
            for action in reversed(undo):  # files first, while the write lock is still held
                action()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(err, sqlite3.DatabaseError):
                raise SpeakerDBError(f"{self.path}: could not write to the speaker database ({err})") from None
            raise

    def _known_name(self, name: Any) -> str:
        """``name`` checked as a speaker name; an invalid one is reported as unknown (it cannot be enrolled), unless
        a database written before the name rule holds it exactly (so such a speaker can still be removed)."""
        try:
            return validate_name(name)
        except InvalidNameError:
            if isinstance(name, str) and self._db.execute(
                "SELECT 1 FROM speakers WHERE name = ?", (name.strip(),)
            ).fetchone():
                return name.strip()
            raise self._unknown(str(name)) from None

    def _lookup(self, name: Any) -> str:
        """The stored form of ``name`` for a read: normalised as enrolment normalises, or as given when a database
        written before the name rule holds it that way."""
        if not isinstance(name, str):
            return str(name)
        clean = normalise_name(name)
        if clean == name.strip():
            return clean
        found = self._db.execute("SELECT 1 FROM speakers WHERE name = ?", (clean,)).fetchone()
        return clean if found else name.strip()

    def _speaker_id(self, name: str) -> tuple[_MeanCache, int]:
        """Inside a write: the (refreshed) cache and the id of enrolled speaker ``name``, or an unknown-speaker
        error."""
        cache = self._cache  # brought up to date by the transaction's start
        assert cache is not None
        sid = cache.id_of.get(name)
        if sid is None:
            raise self._unknown(name)
        return cache, sid

    def _unknown(self, name: str) -> SpeakerDBError:
        known = [r[0] for r in self._db.execute("SELECT name FROM speakers ORDER BY id LIMIT 1000")]
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        shown = close or known[:5]
        total = len(self)
        hint = f"; known speakers include: {', '.join(shown)}" if shown else "; the database is empty"
        return UnknownSpeakerError(f"unknown speaker {name!r} in {self.path} ({total} enrolled){hint}")

    # ------------------------------------------------------------------ writes
    def add(
        self,
        name: str,
        embeddings: np.ndarray,
        audio: list[np.ndarray] | None = None,
        sample_rate: int = SAMPLE_RATE,
        mode: str = "any",
        record: IdempotentWrite | None = None,
    ) -> None:
        """Enrol ``name`` with one ``[D]`` or several ``[n, D]`` utterance embeddings.

        Adding to an existing speaker appends the utterances and recomputes its mean. With ``keep_audio=True``,
        ``audio`` may hold one waveform per embedding (at ``sample_rate``); they are stored as 16 kHz WAVs.
        ``mode="create"`` refuses an enrolled name (:class:`~mvector.errors.SpeakerExistsError`), ``"append"`` a
        name that is not enrolled (:class:`~mvector.errors.UnknownSpeakerError`); the check and the write are one
        transaction. ``record`` is stored in that transaction (:mod:`mvector.inference.idempotency`); when its key
        is stored already nothing is written and :class:`~mvector.inference.idempotency.Replayed` is raised.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.array([1.0, 0.0]))
        ...     db.add("a", np.array([0.0, 1.0]))
        ...     print(np.round(db.mean_embedding("a"), 3))
        [0.707 0.707]
        """
        if mode not in WRITE_MODES:
            raise SpeakerDBError(f"mode must be one of {', '.join(WRITE_MODES)}, got {mode!r}")
        with self._lock:
            name = validate_name(name) if mode != "append" else self._known_name(name)
            arr = _as_embeddings(embeddings, self.embd_dim, f"speaker {name!r}")
            waves = None
            if audio is not None:
                if not isinstance(audio, (list, tuple)) or len(audio) != len(arr):
                    count = len(audio) if isinstance(audio, (list, tuple)) else "not a list"
                    raise SpeakerDBError(
                        f"speaker {name!r}: give one waveform per embedding ({len(arr)} embeddings, audio: {count})"
                    )
                if self.keep_audio:
                    waves = [_as_audio(w, sample_rate, f"speaker {name!r} audio {i}") for i, w in enumerate(audio)]
            counts = np.array([len(arr)], dtype=np.int64)
            self._write([name], arr, counts, None if waves is None else [waves], mode, record)

    def add_many(self, items: Mapping[str, np.ndarray]) -> None:
        """Enrol many speakers in one transaction: ``{name: [D] or [n, D] embeddings}``.

        All names and embeddings are checked before anything is written; existing speakers gain utterances.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 4) as db:
        ...     db.add_many({f"spk{i}": np.eye(4)[i] for i in range(4)})
        ...     print(len(db), db.search(np.eye(4)[2])[0][0][0])
        4 spk2
        """
        with self._lock:
            if not isinstance(items, Mapping):
                raise SpeakerDBError(f"add_many expects a mapping name -> embeddings, got {type(items).__name__}")
            grouped: dict[str, list[np.ndarray]] = {}
            dim = self.embd_dim
            for raw_name, value in items.items():
                name = validate_name(raw_name)
                try:
                    arr = np.asarray(_to_numpy(value), np.float32)
                except (TypeError, ValueError) as err:
                    raise SpeakerDBError(f"speaker {name!r}: embeddings must be a numeric array ({err})") from None
                if arr.shape != (dim,) and (arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0):
                    _as_embeddings(arr, dim, f"speaker {name!r}")  # raises the detailed shape error
                grouped.setdefault(name, []).append(arr.reshape(-1, dim))  # "bob" and "bob " are one speaker
            if not grouped:
                return
            names = list(grouped)
            parts = [p[0] if len(p) == 1 else np.concatenate(p) for p in grouped.values()]
            counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
            embs = np.concatenate(parts) if len(parts) > 1 else parts[0]
            bad = ~np.isfinite(embs).all(axis=1) | ~(np.abs(embs).max(axis=1) > 0)
            if bad.any():
                owner = names[int(np.searchsorted(np.cumsum(counts), int(np.argmax(bad)), side="right"))]
                _as_embeddings(
                    np.concatenate(grouped[owner]), dim, f"speaker {owner!r}"
                )  # raises the detailed value error
            self._write(names, np.ascontiguousarray(embs), counts, None)

    def _check_record(self, conn: sqlite3.Connection, record: IdempotentWrite | None) -> None:
        """Inside a write: raise :class:`Replayed` when ``record``'s key is stored already."""
        if record is not None and record.key is not None:
            stored = idempotency.lookup(conn, record.owner, record.key, time.time())
            if stored is not None:
                raise Replayed(stored)

    def _store_record(self, conn: sqlite3.Connection, record: IdempotentWrite | None, count: int) -> None:
        if record is not None:
            answer = record.answer(count)
            if record.key is not None:
                now = time.time()
                idempotency.purge(conn, now)
                idempotency.store(conn, record, answer, now)

    def idempotent_answer(self, owner: str, key: str) -> StoredAnswer | None:
        """The unexpired answer stored for idempotency key ``key`` of ``owner``, or None.

        >>> import tempfile, numpy as np
        >>> from mvector.inference.idempotency import IdempotentWrite
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     record = IdempotentWrite("me", "k1", "hash", 201, lambda n: {"recordings": n})
        ...     db.add("a", np.ones((2, 2)), record=record)
        ...     db.idempotent_answer("me", "k1").answer
        {'recordings': 2}
        """
        with self._lock:
            return idempotency.lookup(self._db, owner, key, time.time())

    def _write(
        self,
        names: list[str],
        embs: np.ndarray,
        counts: np.ndarray,
        waves: list[list[np.ndarray]] | None,
        mode: str = "any",
        record: IdempotentWrite | None = None,
    ) -> None:
        """One write transaction: ``counts[i]`` rows of ``embs`` (in order) belong to ``names[i]``; afterwards
        ``counts[i]`` is the speaker's total recording count."""
        dim = self.embd_dim
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        with self._transaction() as (conn, version, undo):
            cache = self._cache  # brought up to date by the transaction's start
            assert cache is not None
            self._check_record(conn, record)
            for name in names:  # the existence checks, in the write's transaction
                if mode == "create" and name in cache.id_of:
                    raise SpeakerExistsError(f"speaker {name!r} is already enrolled in {self.path}")
                if mode == "append" and name not in cache.id_of:
                    raise self._unknown(name)
            # Brand-new speakers: their mean is the normalised mean of the given utterances (vectorised).
            is_new = np.fromiter((n not in cache.id_of for n in names), dtype=bool, count=len(names))
            new_idx = np.flatnonzero(is_new)
            next_id = int(conn.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0])
            ids = np.zeros(len(names), dtype=np.int64)
            ids[new_idx] = np.arange(next_id, next_id + len(new_idx))
            unit = embs / np.linalg.norm(embs, axis=1, keepdims=True)
            if len(embs) == len(names):  # one utterance each (the bulk case): the mean is the utterance
                means = unit.astype(np.float64)
            else:  # sum each speaker's consecutive rows
                running = np.cumsum(unit, axis=0, dtype=np.float64)
                ends = running[starts + counts - 1]
                means = ends - np.concatenate([np.zeros((1, dim)), running[starts[1:] - 1]])
            for i in np.flatnonzero(~is_new):  # existing speakers: the mean over old and new utterances
                ids[i] = cache.id_of[names[i]]
                old = conn.execute("SELECT embedding FROM utterances WHERE speaker_id = ?", (int(ids[i]),)).fetchall()
                old_arr = np.frombuffer(b"".join(r[0] for r in old), dtype=np.float32).reshape(-1, dim)
                means[i] += _normalise(old_arr).sum(axis=0)
                counts[i] += len(old_arr)
            norms = np.linalg.norm(means, axis=1, keepdims=True)
            cancelled = norms[:, 0] < 1e-12  # opposite utterances cancel out: fall back to the first one
            if cancelled.any():
                means[cancelled] = unit[starts[cancelled]]
                norms[cancelled] = 1.0
            means = (means / norms).astype(np.float32)
            conn.executemany(
                "INSERT INTO speakers (id, name, mean, n_utts, updated) VALUES (?, ?, ?, ?, ?)",
                ((int(ids[i]), names[i], means[i].tobytes(), int(counts[i]), version) for i in new_idx),
            )
            if len(new_idx):
                conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (next_id + len(new_idx),))
            conn.executemany(
                "UPDATE speakers SET mean = ?, n_utts = ?, updated = ? WHERE id = ?",
                ((means[i].tobytes(), int(counts[i]), version, int(ids[i])) for i in np.flatnonzero(~is_new)),
            )
            now = time.time()
            conn.executemany(  # when each speaker was first enrolled and last added to (for listings)
                "INSERT INTO speaker_times (speaker_id, enrolled, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (speaker_id) DO UPDATE SET updated = excluded.updated",
                ((int(sid), now, now) for sid in ids),
            )
            owners = np.repeat(ids, np.diff(np.append(starts, len(embs))))
            if waves is None:
                conn.executemany(
                    "INSERT INTO utterances (speaker_id, embedding) VALUES (?, ?)",
                    zip(owners.tolist(), (row.tobytes() for row in embs)),
                )
            else:  # audio is kept: one row at a time, each with its WAV file written before the commit
                for i, name in enumerate(names):
                    folder = folder_name(name)
                    created = not (self.db_dir / folder).exists()
                    make_folder(self.db_dir, folder)
                    if created:  # an empty folder of a write that does not happen goes too
                        undo.append(functools.partial(_remove_empty, self.db_dir / folder))
                    for row, wave in zip(embs[starts[i] : starts[i] + len(waves[i])], waves[i]):
                        cur = conn.execute(
                            "INSERT INTO utterances (speaker_id, embedding) VALUES (?, ?)", (int(ids[i]), row.tobytes())
                        )
                        utt_id = int(cur.lastrowid)
                        relative = f"{folder}/{utt_id}-{uuid.uuid4().hex[:8]}.wav"
                        # the audio of a write that does not happen is deleted again
                        undo.append(functools.partial((self.db_dir / relative).unlink, missing_ok=True))
                        write_wav(self.db_dir / relative, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, hook=_hook)
                        _hook("wav_written")
                        conn.execute("UPDATE utterances SET audio = ? WHERE id = ?", (relative, utt_id))
            if record is not None:
                self._store_record(conn, record, int(counts[0]) if len(names) == 1 else len(names))
        if len(new_idx) == len(names):
            cache.append_block(ids, names, means)
        else:
            cache.upsert(ids.tolist(), names, means)
        self._version = version

    def remove(self, name: str, record: IdempotentWrite | None = None) -> None:
        """Remove a speaker, its utterances and any kept audio (``record``: an idempotency record stored with it).

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.array([1.0, 0.0]))
        ...     db.remove("a")
        ...     print(len(db), "a" in db)
        0 False
        """
        with self._lock:
            name = self._known_name(name)
            with self._transaction() as (conn, version, _):
                self._check_record(conn, record)
                cache, sid = self._speaker_id(name)
                kept = [
                    r[0]
                    for r in conn.execute(
                        "SELECT audio FROM utterances WHERE speaker_id = ? AND audio IS NOT NULL", (sid,)
                    )
                ]
                conn.execute("DELETE FROM utterances WHERE speaker_id = ?", (sid,))
                conn.execute("DELETE FROM speakers WHERE id = ?", (sid,))
                conn.execute("DELETE FROM speaker_times WHERE speaker_id = ?", (sid,))
                conn.execute("INSERT INTO removed (version, speaker_id) VALUES (?, ?)", (version, sid))
                self._store_record(conn, record, 0)
            cache.remove(sid)
            self._version = version
            self._delete_files(kept)

    def _delete_files(self, relative: list[str]) -> None:
        """Delete the kept audio of a committed removal, and the folders it leaves empty.

        The files are deleted after the commit (a kill before the commit must leave them for the rows that still
        name them), in a second transaction that only holds the write lock, so no other writer is putting a new
        file into a folder being removed. A kill in between leaves orphans, which the next open removes. Only the
        files the rows named are deleted, so a folder shared in the layout before hashed names keeps the others.
        """
        if not relative:
            return
        _hook("files_deleting")
        conn = self._db
        try:
            _retry_while_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error:  # the removal has committed; its files are orphans the next open removes
            return
        try:
            for path in relative:
                with contextlib.suppress(OSError):
                    (self.db_dir / path).unlink(missing_ok=True)
            for folder in sorted({(self.db_dir / path).parent for path in relative}):
                if folder != self.db_dir:
                    _remove_empty(folder)
        finally:
            conn.execute("COMMIT")

    def remove_utterance(self, name: str, index: int) -> None:
        """Remove one enrolled recording of ``name`` (``index`` in enrolment order, negative from the end) and
        rebuild the speaker's model from the recordings left; its kept audio file goes too.

        Removing a speaker's only recording is refused (it would leave no model): use :meth:`remove`.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.array([[1.0, 0.0], [0.0, 1.0]]))
        ...     db.remove_utterance("a", 1)
        ...     db.num_utterances("a"), db.mean_embedding("a").tolist()
        (1, [1.0, 0.0])
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise SpeakerDBError(f"index must be an integer (the recording's position), got {index!r}")
        with self._lock:
            name = self._known_name(name)
            with self._transaction() as (conn, version, _):
                cache, sid = self._speaker_id(name)
                rows = conn.execute(
                    "SELECT id, embedding, audio FROM utterances WHERE speaker_id = ? ORDER BY id", (sid,)
                ).fetchall()
                n = len(rows)
                if not -n <= int(index) < n:
                    raise SpeakerDBError(
                        f"speaker {name!r} has {n} recording(s) (index 0..{n - 1}); there is no recording {index}"
                    )
                position = int(index) % n
                if n == 1:
                    raise SpeakerDBError(
                        f"speaker {name!r} has only this recording; removing it would leave no model. "
                        f"Remove the speaker instead (remove({name!r}))"
                    )
                utt_id, _, audio = rows[position]
                rest = b"".join(r[1] for i, r in enumerate(rows) if i != position)
                mean = _mean_of(np.frombuffer(rest, dtype=np.float32).reshape(n - 1, self.embd_dim))
                conn.execute("DELETE FROM utterances WHERE id = ?", (utt_id,))
                conn.execute(
                    "UPDATE speakers SET mean = ?, n_utts = ?, updated = ? WHERE id = ?",
                    (mean.tobytes(), n - 1, version, sid),
                )
            cache.upsert([sid], [name], mean[None])
            self._version = version
            self._delete_files([audio] if audio else [])

    def rebuild(self, name: str | None = None) -> int:
        """Recompute the model (normalised mean) of ``name``, or of every speaker, from its stored recordings.

        Returns the number of speakers rebuilt. Use it after editing recordings by hand, or to bring the means of a
        database written by another mvector version in line with this one's enrolment rule.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add_many({"a": np.ones(2), "b": np.array([1.0, 0.0])})
        ...     db.rebuild()
        2
        """
        with self._lock:
            with self._transaction() as (conn, version, _):
                cache = self._cache  # brought up to date by the transaction's start
                assert cache is not None
                if name is None:
                    targets = list(cache.id_of.items())
                else:
                    clean = self._lookup(name)
                    if clean not in cache.id_of:
                        raise self._unknown(clean)
                    targets = [(clean, cache.id_of[clean])]
                names, ids, means = [], [], []
                for spk, sid in targets:
                    rows = conn.execute("SELECT embedding FROM utterances WHERE speaker_id = ?", (sid,)).fetchall()
                    if not rows:
                        raise SpeakerDBError(f"{self.path}: damaged database (speaker {spk!r} has no recordings)")
                    embs = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(-1, self.embd_dim)
                    mean = _mean_of(embs)
                    conn.execute(
                        "UPDATE speakers SET mean = ?, n_utts = ?, updated = ? WHERE id = ?",
                        (mean.tobytes(), len(rows), version, sid),
                    )
                    names.append(spk)
                    ids.append(sid)
                    means.append(mean)
            if ids:
                cache.upsert(ids, names, np.stack(means))
            self._version = version
            return len(ids)

    def set_cohort(self, embeddings: np.ndarray, source: str | None = None) -> None:
        """Store the AS-norm cohort: ``[n, D]`` embeddings of speakers who are *not* enrolled (n >= 2), replacing
        any earlier cohort. ``source`` says where they came from (kept in the database's metadata).

        A cohort of a few hundred utterances from other speakers (e.g. the training data's) is typical.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 3) as db:
        ...     db.set_cohort(np.eye(3), source="three axes")
        ...     db.cohort().shape, db.cohort_source
        ((3, 3), 'three axes')
        """
        arr = _as_embeddings(embeddings, self.embd_dim, "cohort")
        if arr.shape[0] < 2:
            raise SpeakerDBError(f"cohort: give at least 2 embeddings, got {arr.shape[0]}")
        self._replace_cohort(arr, source)

    def clear_cohort(self) -> None:
        """Remove the stored cohort (searches with ``score_norm="as_norm"`` then fail with a clear error)."""
        self._replace_cohort(None, None)

    def _replace_cohort(self, arr: np.ndarray | None, source: str | None) -> None:
        with self._lock:
            with self._transaction() as (conn, version, _):
                conn.execute("DELETE FROM cohort")
                if arr is not None:
                    conn.executemany("INSERT INTO cohort (embedding) VALUES (?)", ((row.tobytes(),) for row in arr))
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('cohort_source', ?)",
                    ("" if source is None else str(source),),
                )
            self._version = version

    # ------------------------------------------------------------------ reads
    def cohort(self) -> np.ndarray | None:
        """The stored AS-norm cohort ``[n, D]`` (float32), or ``None`` when there is none.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     print(db.cohort())
        None
        """
        with self._lock:
            rows = self._db.execute("SELECT embedding FROM cohort ORDER BY id").fetchall()
            if not rows:
                return None
            return np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), self.embd_dim)

    @property
    def cohort_source(self) -> str | None:
        """Where the stored cohort came from (as given to :meth:`set_cohort`), or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'cohort_source'").fetchone()
            return str(row[0]) if row is not None and str(row[0]) else None

    def _cohort_unit(self) -> np.ndarray:
        """The unit-length cohort for the current version (cached), or a SpeakerDBError when there is none."""
        if self._cohort_cache is None or self._cohort_cache[0] != self._version:
            cohort = self.cohort()
            unit = None if cohort is None else (cohort / np.linalg.norm(cohort, axis=1, keepdims=True))
            self._cohort_cache = (self._version, None if unit is None else unit.astype(np.float32))
        unit = self._cohort_cache[1]
        if unit is None:
            raise SpeakerDBError(
                f"{self.path} holds no AS-norm cohort; store one with set_cohort(embeddings of non-enrolled "
                "speakers) or search without score_norm"
            )
        return unit

    def names(self) -> list[str]:
        """Enrolled speaker names, in enrolment order.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add_many({"b": np.ones(2), "a": np.ones(2)})
        ...     db.names()
        ['b', 'a']
        """
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM speakers ORDER BY id")]

    def enrolment_times(self, name: str) -> tuple[float | None, float | None]:
        """``(first enrolled, last added to)`` of ``name`` as Unix times; None for a speaker enrolled by an mvector
        that did not record them.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.array([1.0, 0.0]))
        ...     first, last = db.enrolment_times("a")
        ...     first is not None and first <= last
        True
        """
        with self._lock:
            self._refresh()
            assert self._cache is not None
            sid = self._cache.id_of.get(self._lookup(name))
            if sid is None:
                raise self._unknown(str(name))
            row = self._db.execute(
                "SELECT enrolled, updated FROM speaker_times WHERE speaker_id = ?", (int(sid),)
            ).fetchone()
            return (None, None) if row is None else (float(row[0]), float(row[1]))

    def __len__(self) -> int:
        """Number of enrolled speakers (``len(db)``)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM speakers").fetchone()[0])

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is enrolled (``"alice" in db``); an invalid name is simply not enrolled."""
        if not isinstance(name, str):
            return False
        with self._lock:
            row = self._db.execute("SELECT 1 FROM speakers WHERE name = ?", (self._lookup(name),)).fetchone()
            return row is not None

    def num_utterances(self, name: str) -> int:
        """How many utterances ``name`` was enrolled with.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.ones((3, 2)))
        ...     db.num_utterances("a")
        3
        """
        with self._lock:
            row = self._db.execute("SELECT n_utts FROM speakers WHERE name = ?", (self._lookup(name),)).fetchone()
            if row is None:
                raise self._unknown(str(name))
            return int(row[0])

    def utterance_embeddings(self, name: str) -> np.ndarray:
        """The ``[n, D]`` float32 utterance embeddings ``name`` was enrolled with, in enrolment order.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.array([[3.0, 4.0], [1.0, 0.0]]))
        ...     db.utterance_embeddings("a").tolist()
        [[3.0, 4.0], [1.0, 0.0]]
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT u.embedding FROM utterances u JOIN speakers s ON s.id = u.speaker_id "
                "WHERE s.name = ? ORDER BY u.id",
                (self._lookup(name),),
            ).fetchall()
            if not rows:
                raise self._unknown(str(name))
            return np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), self.embd_dim)

    def audio_files(self, name: str) -> list[Path]:
        """Paths of the kept WAV files of ``name`` (empty when audio was not kept).

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2, keep_audio=True) as db:
        ...     db.add("a", np.ones(2), audio=[np.zeros(1600, "float32")])
        ...     [p.suffix for p in db.audio_files("a")]
        ['.wav']
        """
        with self._lock:
            if name not in self:
                raise self._unknown(str(name))
            rows = self._db.execute(
                "SELECT u.audio FROM utterances u JOIN speakers s ON s.id = u.speaker_id "
                "WHERE s.name = ? AND u.audio IS NOT NULL ORDER BY u.id",
                (self._lookup(name),),
            ).fetchall()
            return [self.db_dir / r[0] for r in rows]

    def audio_folders(self) -> set[str]:
        """Names of the folders in ``db_dir`` that hold this database's kept audio.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2, keep_audio=True) as db:
        ...     db.add("a", np.ones(2), audio=[np.zeros(1600, "float32")])
        ...     db.audio_folders() == {folder_name("a")}
        True
        """
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT audio FROM utterances WHERE audio IS NOT NULL").fetchall()
            return {Path(r[0]).parts[0] for r in rows if Path(r[0]).parts}

    def mean_embedding(self, name: str) -> np.ndarray:
        """The speaker's unit-length mean embedding (float32 ``[D]``).

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.array([[3.0, 4.0], [3.0, 4.0]]))
        ...     db.mean_embedding("a").tolist()
        [0.6000000238418579, 0.800000011920929]
        """
        with self._lock:
            row = self._db.execute("SELECT mean FROM speakers WHERE name = ?", (self._lookup(name),)).fetchone()
            if row is None:
                raise self._unknown(str(name))
            return np.frombuffer(row[0], dtype=np.float32).copy()

    def search(
        self,
        embeddings: np.ndarray,
        top_k: int = 1,
        score_norm: str | None = None,
        cohort_top_k: int = 300,
        cohort: np.ndarray | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The ``top_k`` closest speakers (cosine similarity to their means) for each query, best first.

        ``embeddings`` is one ``[D]`` query or a batch ``[B, D]``; the result always has one list per query.
        Speakers enrolled by other processes since the last call are picked up first.

        With ``score_norm="as_norm"`` the scores are adaptively normalised against the stored cohort
        (:meth:`set_cohort`): ``½·((s − μ_spk)/σ_spk + (s − μ_query)/σ_query)`` with the mean and deviation of the
        ``cohort_top_k`` highest cohort scores of each side, so a score means the same whatever else is enrolled.
        ``cohort`` (``[C, D]``) replaces the stored cohort for this call (a model's training cohort: the predictor
        passes it), and ``transform`` maps the enrolled means as the queries were mapped (e.g. centring).

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add_many({"east": np.array([1.0, 0.0]), "north": np.array([0.0, 1.0])})
        ...     hits = db.search(np.array([[1.0, 0.1], [0.0, -1.0]]), top_k=2)
        ...     [[name for name, _ in row] for row in hits]
        [['east', 'north'], ['east', 'north']]
        """
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise SpeakerDBError(f"top_k must be a positive integer, got {top_k!r}")
        if score_norm not in SCORE_NORMS:
            raise SpeakerDBError(f"score_norm must be one of {SCORE_NORMS}, got {score_norm!r}")
        if isinstance(cohort_top_k, bool) or not isinstance(cohort_top_k, (int, np.integer)) or cohort_top_k < 1:
            raise SpeakerDBError(f"cohort_top_k must be a positive integer, got {cohort_top_k!r}")
        queries = _as_embeddings(embeddings, self.embd_dim, "search query")
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        with self._lock:
            self._refresh()
            cache = self._cache
            assert cache is not None
            if cache.count == 0:
                raise SpeakerDBError(
                    f"no speakers enrolled in {self.path}; register speakers before recognising (add / add_many)"
                )
            k = min(int(top_k), cache.count)
            means = cache.matrix[: cache.count]
            if transform is not None:
                means = np.ascontiguousarray(transform(means), dtype=np.float32)
            if score_norm == "as_norm":
                if cohort is None:
                    cohort_u, key = self._cohort_unit(), "stored"
                else:
                    cohort_u = _as_embeddings(cohort, self.embd_dim, "cohort")
                    cohort_u = (cohort_u / np.linalg.norm(cohort_u, axis=1, keepdims=True)).astype(np.float32)
                    key = hashlib.sha256(cohort_u.tobytes()).hexdigest() + str(transform is not None)
                stats = self._speaker_stats
                if stats is None or stats[:2] != (self._version, (int(cohort_top_k), key)):
                    mu, sd = _top_k_stats(means, cohort_u, int(cohort_top_k))
                    stats = self._speaker_stats = (self._version, (int(cohort_top_k), key), mu, sd)
                spk_mu, spk_sd = stats[2], stats[3]
                q_mu, q_sd = _top_k_stats(queries, cohort_u, int(cohort_top_k))
            block = max(1, _SCORE_BLOCK // cache.count)
            results: list[list[tuple[str, float]]] = []
            for start in range(0, len(queries), block):
                q = queries[start : start + block]
                scores = (means @ q[0])[None] if len(q) == 1 else q @ means.T  # one BLAS call per block
                if score_norm == "as_norm":
                    qm, qs = q_mu[start : start + block, None], q_sd[start : start + block, None]
                    scores = 0.5 * ((scores - spk_mu[None]) / spk_sd[None] + (scores - qm) / qs)
                if k < cache.count:
                    top = np.argpartition(scores, cache.count - k, axis=1)[:, cache.count - k :]
                else:
                    top = np.broadcast_to(np.arange(k), (len(q), k))
                top_scores = np.take_along_axis(scores, top, axis=1)
                order = np.argsort(-top_scores, axis=1, kind="stable")
                for idx, vals in zip(
                    np.take_along_axis(top, order, axis=1).tolist(),
                    np.take_along_axis(top_scores, order, axis=1).tolist(),
                ):
                    results.append([(cache.names[r], float(v)) for r, v in zip(idx, vals)])
            return results
