"""The enrolled speakers used for identification: one gallery of a store, searched from an in-memory matrix.

The data live behind the store seam (:mod:`mvector.store`): by default the SQLite file
``<db_dir>/speakers.sqlite`` (the gallery ``default`` of a database folder, default ``audio_db/``), or a gallery of
a PostgreSQL database shared by several processes (``postgresql://...``). This module keeps what does not depend on
where the data live: the enrolment rule (means, name checks, write modes), the in-memory mean matrix and the
search. A gallery holds:

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

Several processes may enrol and search at once: every write runs in one store transaction holding the gallery's
write lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a row lock on the gallery) and bumps a version counter. Each
process keeps the normalised mean matrix in memory and brings it up to date before a search by fetching only the
rows changed since its version, so a speaker enrolled by another process (or another machine) is found on the next
search. A process killed during a write leaves the gallery as it was before that write (an atomic commit).

A write's checks and the write are one transaction: :meth:`SpeakerDatabase.add` with ``mode="append"`` (add to an
enrolled speaker) or ``mode="create"`` (a new speaker only) checks the speaker's existence holding the write lock,
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
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np

from mvector.audio import load_audio
from mvector.errors import AudioError, InvalidNameError, SpeakerDBError, SpeakerExistsError, UnknownSpeakerError
from mvector.inference.ann_index import SEARCH_INDEXES, ApproximateIndex
from mvector.inference.idempotency import RETENTION_SECONDS, IdempotentWrite, Replayed, StoredAnswer
from mvector.inference.speaker_files import clean_leftovers, folder_name, make_folder, write_wav
from mvector.inference.speaker_names import normalise_name, validate_name
from mvector.store import DEFAULT_GALLERY, Changes, GalleryWrite, Store, open_store
from mvector.store.sqlite import DB_FILENAME

__all__ = ["DB_FILENAME", "SAMPLE_RATE", "SCORE_NORMS", "SEARCH_INDEXES", "WRITE_MODES", "SpeakerDatabase"]

SAMPLE_RATE = 16000
#: What :meth:`SpeakerDatabase.add` does with a name: ``any`` (create or add to), ``create`` (refuse an enrolled
#: name), ``append`` (refuse a name that is not enrolled).
WRITE_MODES = ("any", "create", "append")
_SCORE_BLOCK = 1 << 24  # at most this many scores ([queries, speakers]) are held at once in a batch search
# an approximate index answers searches for a few best speakers only; a search for many (a posterior over every
# enrolled speaker asks for all of them) reads the whole matrix anyway and is done exactly
_APPROXIMATE_MAX_K = 1024

PathLike = Union[str, os.PathLike]

# Test hooks: _before_commit is called inside every write transaction just before COMMIT; _test_hook(point) at the
# points "wav_tmp" (a kept WAV's temporary file is complete), "wav_written", "before_commit", "after_commit" and
# "files_deleting" (a removal committed, its files not yet deleted), so a test can kill a process there.
_before_commit: Callable[[], None] | None = None
_test_hook: Callable[[str], None] | None = None


def _hook(point: str) -> None:
    if _test_hook is not None:
        _test_hook(point)

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


def _best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """The column indices of each row's ``k`` highest scores, in no order (``[B, k]``, ``k`` < columns).

    One best is an ``argmax``; a few bests of a long row look only in the ``k`` blocks of 4,096 columns whose block
    maxima are highest (every one of a row's ``k`` best lies in such a block), instead of partitioning the whole
    row: at a million speakers that is ~0.5 ms instead of ~4 ms.

    >>> _best_columns(np.array([[0.1, 0.9, 0.5, 0.7]]), 2).tolist()
    [[3, 1]]
    """
    if k == 1:
        return np.argmax(scores, axis=1)[:, None]
    n = scores.shape[1]
    width = 4096
    if k > 16 or n < 16 * width:
        return np.argpartition(scores, n - k, axis=1)[:, n - k :]
    blocks = n // width
    heads = scores[:, : blocks * width].reshape(len(scores), blocks, width).max(axis=2)
    out = np.empty((len(scores), k), np.int64)
    for i, row in enumerate(scores):
        best_blocks = np.argpartition(heads[i], blocks - k)[blocks - k :]
        columns = (best_blocks[:, None] * width + np.arange(width)).ravel()
        columns = np.concatenate([columns, np.arange(blocks * width, n)])  # the tail past the last whole block
        out[i] = columns[np.argpartition(row[columns], len(columns) - k)[len(columns) - k :]]
    return out


def _as_audio(wave: Any, sample_rate: int, what: str) -> np.ndarray:
    """A finite mono float32 waveform at 16 kHz, for keeping on disk (scaling, mono, resampling: mvector.audio)."""
    if isinstance(wave, np.ndarray) and (wave.ndim not in (1, 2) or wave.size == 0):
        raise SpeakerDBError(f"{what}: audio must be a non-empty 1-D waveform, got shape {list(np.shape(wave))}")
    try:
        return load_audio(np.asarray(wave), SAMPLE_RATE, source_sample_rate=int(sample_rate))
    except AudioError as err:
        raise SpeakerDBError(f"{what}: {err}") from err


def _remove_empty(folder: Path) -> None:
    """Remove ``folder`` when it is empty (and exists)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _undo(actions: list[Callable[[], None]]) -> None:
    """Run a failed write's undo actions, newest first (once)."""
    while actions:
        actions.pop()()


class _RowOf:
    """Speaker id -> row of the mean cache, as one int64 array indexed by id (-1: none): 8 bytes per id the
    gallery ever gave out, where a dict costs about 100 per speaker (100 MB at a million speakers). The stores
    give ids out one after the other from 1."""

    def __init__(self) -> None:
        self._rows = np.full(0, -1, np.int64)

    @classmethod
    def of(cls, ids: np.ndarray) -> _RowOf:
        """The map of ``ids[i] -> i``."""
        out = cls()
        out.assign(ids, np.arange(len(ids), dtype=np.int64))
        return out

    def assign(self, ids: Sequence[int] | np.ndarray, rows: Sequence[int] | np.ndarray) -> None:
        """Set ``ids[i] -> rows[i]``."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if int(ids.min()) < 0:
            raise SpeakerDBError(f"damaged gallery: a negative speaker id ({int(ids.min())})")
        top = int(ids.max())
        if top >= len(self._rows):
            grown = np.full(max(top + 1, len(self._rows) * 3 // 2), -1, np.int64)
            grown[: len(self._rows)] = self._rows
            self._rows = grown
        self._rows[ids] = rows

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows of ``ids`` (every one known)."""
        return self._rows[np.asarray(ids, dtype=np.int64)]

    def get(self, sid: int, default: int | None = None) -> int | None:
        sid = int(sid)
        row = int(self._rows[sid]) if 0 <= sid < len(self._rows) else -1
        return default if row < 0 else row

    def __getitem__(self, sid: int) -> int:
        row = self.get(sid)
        if row is None:
            raise KeyError(sid)
        return row

    def __setitem__(self, sid: int, row: int) -> None:
        self.assign([sid], [row])

    def pop(self, sid: int, default: int | None = None) -> int | None:
        row = self.get(sid)
        if row is None:
            return default
        self._rows[int(sid)] = -1
        return row


class _MeanCache:
    """In-memory copy of the speakers' normalised means: one float32 matrix for a single vectorised scan. An
    approximate ``index`` (:class:`~mvector.inference.ann_index.ApproximateIndex`), when given, follows every
    change."""

    @classmethod
    def adopt(cls, full: Changes, index: ApproximateIndex | None = None) -> _MeanCache:
        """A cache holding a full load's arrays as they are (no copy: a million rows are loaded once)."""
        cache = cls(full.means.shape[1], index=index)
        cache.matrix, cache.ids, cache.names = full.means, full.ids, list(full.names)
        cache._id_of = None
        cache.count = len(full.ids)
        cache.row_of = _RowOf.of(full.ids)
        if index is not None:
            index.build(full.ids, full.means)
        return cache

    def __init__(self, embd_dim: int, capacity: int = 0, index: ApproximateIndex | None = None) -> None:
        self.index = index
        self.matrix = np.empty((capacity, embd_dim), dtype=np.float32)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.names: list[str] = []
        self.row_of = _RowOf()  # speaker id -> row
        self._id_of: dict[str, int] | None = {}  # name -> speaker id; None until first asked after a full load
        self.count = 0

    @property
    def id_of(self) -> dict[str, int]:
        """Name -> speaker id, built at its first use after a full load: a replica that only searches (by row)
        never pays for it (a million names: about 70 MB and a fraction of a second of the cold start)."""
        if self._id_of is None:
            self._id_of = dict(zip(self.names, self.ids[: self.count].tolist()))
        return self._id_of

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
                if self._id_of is not None:
                    self._id_of[name] = sid
            self.matrix[row] = mean
        if self.index is not None and len(ids):
            self.index.add(np.asarray(ids, dtype=np.int64), np.asarray(means, dtype=np.float32))

    def append_block(self, ids: np.ndarray, names: list[str], means: np.ndarray) -> None:
        """Append speakers known to be new (bulk load path)."""
        start = self.count
        self._grow(start + len(ids))
        self.matrix[start : start + len(ids)] = means
        self.ids[start : start + len(ids)] = ids
        self.names.extend(names)
        self.row_of.assign(ids, np.arange(start, start + len(ids)))
        if self._id_of is not None:
            self._id_of.update(zip(names, ids.tolist()))
        self.count += len(ids)
        if self.index is not None and len(ids):
            self.index.add(ids, means)

    def remove(self, sid: int) -> None:
        row = self.row_of.pop(sid, None)
        if row is None:
            return
        if self.index is not None:
            self.index.remove(np.array([sid], dtype=np.int64))
        last = self.count - 1
        if self._id_of is not None:
            del self._id_of[self.names[row]]
        if row != last:  # move the last row into the hole
            self.matrix[row] = self.matrix[last]
            self.ids[row] = self.ids[last]
            self.names[row] = self.names[last]
            self.row_of[int(self.ids[row])] = row
        self.names.pop()
        self.count = last


class SpeakerDatabase:
    """Enrolled speakers of one model in one gallery of a store (by default the folder ``db_dir``).

    Args:
        db_dir: the store: a database folder (created when missing), a ``postgresql://`` URL, or a
            :class:`~mvector.store.Store`.
        model_fingerprint: identifies the model that makes the embeddings; a gallery made by another model is
            refused with :class:`~mvector.errors.SpeakerDBError`.
        embd_dim: the embedding size; must match the gallery's.
        keep_audio: also keep enrolled audio as 16 kHz WAV files beside the gallery (a folder store only).
        gallery: the gallery's name (:data:`~mvector.store.DEFAULT_GALLERY` is the folder's own database).
        search_index: ``exact`` (the default: every mean is scored) or an approximate index kept beside the matrix,
            ``pq`` (recommended), ``hnsw`` or ``ivf`` (:mod:`mvector.inference.ann_index`, needs ``mvector[ann]``):
            used by plain searches (no ``score_norm``, ``transform`` or ``among``) for a few best speakers (``top_k``
            at most 1,024 and a sixteenth of the gallery), which then may miss the best speaker for a measured share
            of queries; the others stay exact (a posterior over every enrolled speaker reads the whole matrix
            anyway).
        index_effort: the approximate index's search effort (PQ rows re-scored exactly / HNSW efSearch / IVF
            nprobe; default per kind).

    >>> import tempfile, numpy as np
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with SpeakerDatabase(folder, "model-a", embd_dim=3) as db:
    ...         db.add("x", np.array([1.0, 0.0, 0.0]))
    ...         db.add("y", np.array([0.0, 1.0, 0.0]))
    ...         print([(n, round(s, 3)) for n, s in db.search(np.array([1.0, 0.2, 0.0]), top_k=2)[0]])
    [('x', 0.981), ('y', 0.196)]
    """

    def __init__(
        self,
        db_dir: Union[PathLike, Store],
        model_fingerprint: str,
        embd_dim: int,
        keep_audio: bool = False,
        gallery: str = DEFAULT_GALLERY,
        search_index: str = "exact",
        index_effort: int | None = None,
    ) -> None:
        if search_index not in SEARCH_INDEXES:
            raise SpeakerDBError(f"search_index must be one of {', '.join(SEARCH_INDEXES)}, got {search_index!r}")
        self.search_index = search_index
        self._index = (
            None
            if search_index == "exact"
            else ApproximateIndex(embd_dim, search_index, index_effort, rows_of=self._means_of)
        )
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise SpeakerDBError(f"model_fingerprint must be a non-empty string, got {model_fingerprint!r}")
        if isinstance(embd_dim, bool) or not isinstance(embd_dim, (int, np.integer)) or embd_dim < 1:
            raise SpeakerDBError(f"embd_dim must be a positive integer, got {embd_dim!r}")
        self._own_store = not isinstance(db_dir, Store)
        self._store = open_store(db_dir)
        self._gallery = self._store.gallery(gallery)
        self.gallery = self._gallery.name
        files = self._gallery.files_dir
        self.db_dir: Path | None = files
        self.path: Union[Path, str] = Path(self._gallery.where) if files is not None else self._gallery.where
        self.model_fingerprint = model_fingerprint
        self.embd_dim = int(embd_dim)
        self.keep_audio = bool(keep_audio)
        if self.keep_audio and files is None:
            raise SpeakerDBError(
                f"{self.path}: keep_audio needs a database folder (this store keeps no audio files); use a folder "
                "path, or enrol without keeping the recordings"
            )
        self._lock = threading.RLock()
        self._cache: _MeanCache | None = None
        self._version = -1
        # AS-norm state: unit cohort rows and the speakers' cohort statistics, valid for one database version.
        self._cohort_cache: tuple[int, np.ndarray | None] | None = None
        self._speaker_stats: tuple[int, tuple[int, str], np.ndarray, np.ndarray] | None = None
        self._closed = False
        try:
            self._gallery.open(self.model_fingerprint, self.embd_dim)
            self._clean_leftovers()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing
    def _clean_leftovers(self) -> None:
        """Remove what an earlier kill left (``.trash``, temporary and orphan WAVs, expired idempotency records)
        while holding the write lock, so the files of another process's write in progress are never taken."""
        with self._gallery.write(bump=False) as w:
            if self.db_dir is not None:
                clean_leftovers(self.db_dir, w.all_audio_paths())
            w.purge_answers(time.time() - RETENTION_SECONDS)

    def close(self) -> None:
        """Close the connection (the in-memory index is dropped too). Safe to call twice.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     db = SpeakerDatabase(folder, "m", 4)
        ...     db.close(); db.close()
        """
        with self._lock:
            self._closed = True
            self._gallery.close()
            if self._own_store:
                self._store.close()
            self._cache = None
            self._version = -1
            self._cohort_cache = None
            self._speaker_stats = None

    def _check_open(self) -> None:
        if self._closed:
            raise SpeakerDBError(f"{self.path}: the speaker database is closed")

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
        return f"SpeakerDatabase({str(self.path)!r}, model_fingerprint={self.model_fingerprint[:12]!r}, " + (
            f"embd_dim={self.embd_dim}, keep_audio={self.keep_audio}, gallery={self.gallery!r})"
        )

    def _apply(self, changes: Changes | None) -> None:
        """Bring the in-memory mean matrix up to ``changes`` (None: nothing changed)."""
        if changes is None:
            return
        if changes.full or self._cache is None:
            self._cache = _MeanCache.adopt(changes, self._index)
        else:
            for sid in changes.removed:
                self._cache.remove(int(sid))
            if len(changes.ids):
                self._cache.upsert(changes.ids.tolist(), changes.names, changes.means)
        self._version = changes.version

    def _since(self) -> int | None:
        return None if self._cache is None else self._version

    def _refresh(self) -> None:
        """Bring the in-memory mean matrix up to date with the store: only rows written since the cached version
        are fetched; the first call loads everything."""
        self._check_open()
        self._apply(self._gallery.snapshot(self._since()))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[tuple[GalleryWrite, list[Callable[[], None]]]]:
        """One write holding the gallery's write lock, the cache brought up to date first. Yields ``(write,
        undo)``; on any error the ``undo`` actions (file moves to take back) run newest first while the lock is
        still held, and the write is rolled back."""
        self._check_open()
        undo: list[Callable[[], None]] = []

        def before_commit() -> None:
            try:
                if _before_commit is not None:
                    _before_commit()
                _hook("before_commit")
            except BaseException:
                _undo(undo)
                raise

        with self._gallery.write(before_commit=before_commit) as w:
            self._apply(w.snapshot(self._since()))
            try:
                yield w, undo
            except BaseException:
                _undo(undo)
                raise
        _hook("after_commit")
        self._version = w.version

    def _known_name(self, name: Any) -> str:
        """``name`` checked as a speaker name; an invalid one is reported as unknown (it cannot be enrolled), unless
        a database written before the name rule holds it exactly (so such a speaker can still be removed)."""
        try:
            return validate_name(name)
        except InvalidNameError:
            if isinstance(name, str) and self._gallery.speaker(name.strip()) is not None:
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
        return clean if self._gallery.speaker(clean) is not None else name.strip()

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
        known = self._gallery.names(limit=1000)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        shown = close or known[:5]
        total = self._gallery.count()
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
            self._check_open()
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
            self._check_open()
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

    @staticmethod
    def _check_record(w: GalleryWrite, record: IdempotentWrite | None) -> None:
        """Inside a write: raise :class:`Replayed` when ``record``'s key is stored already."""
        if record is not None and record.key is not None:
            stored = w.answer(record.owner, record.key, time.time() - RETENTION_SECONDS)
            if stored is not None:
                raise Replayed(stored)

    @staticmethod
    def _store_record(w: GalleryWrite, record: IdempotentWrite | None, count: int) -> None:
        if record is not None:
            answer = record.answer(count)
            if record.key is not None:
                now = time.time()
                w.purge_answers(now - RETENTION_SECONDS)
                text = json.dumps(answer, ensure_ascii=False, allow_nan=False)
                w.keep_answer(record.owner, record.key, record.request_hash, int(record.status), text, now)

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
            self._check_open()
            return self._gallery.answer(owner, key, time.time() - RETENTION_SECONDS)

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
        with self._transaction() as (w, undo):
            cache = self._cache  # brought up to date by the transaction's start
            assert cache is not None
            self._check_record(w, record)
            for name in names:  # the existence checks, in the write's transaction
                if mode == "create" and name in cache.id_of:
                    raise SpeakerExistsError(f"speaker {name!r} is already enrolled in {self.path}")
                if mode == "append" and name not in cache.id_of:
                    raise self._unknown(name)
            # Brand-new speakers: their mean is the normalised mean of the given utterances (vectorised).
            is_new = np.fromiter((n not in cache.id_of for n in names), dtype=bool, count=len(names))
            new_idx = np.flatnonzero(is_new)
            old_idx = np.flatnonzero(~is_new)
            next_id = w.allocate_ids(len(new_idx))
            ids = np.zeros(len(names), dtype=np.int64)
            ids[new_idx] = np.arange(next_id, next_id + len(new_idx))
            unit = embs / np.linalg.norm(embs, axis=1, keepdims=True)
            if len(embs) == len(names):  # one utterance each (the bulk case): the mean is the utterance
                means = unit.astype(np.float64)
            else:  # sum each speaker's consecutive rows
                running = np.cumsum(unit, axis=0, dtype=np.float64)
                ends = running[starts + counts - 1]
                means = ends - np.concatenate([np.zeros((1, dim)), running[starts[1:] - 1]])
            for i in old_idx:  # existing speakers: the mean over old and new utterances
                ids[i] = cache.id_of[names[i]]
                _, old_arr, _ = w.utterances(int(ids[i]))
                means[i] += _normalise(old_arr).sum(axis=0)
                counts[i] += len(old_arr)
            norms = np.linalg.norm(means, axis=1, keepdims=True)
            cancelled = norms[:, 0] < 1e-12  # opposite utterances cancel out: fall back to the first one
            if cancelled.any():
                means[cancelled] = unit[starts[cancelled]]
                norms[cancelled] = 1.0
            means = (means / norms).astype(np.float32)
            now = time.time()
            if len(new_idx):
                new_names = names if len(new_idx) == len(names) else [names[i] for i in new_idx]
                w.insert_speakers(ids[new_idx], new_names, means[new_idx], counts[new_idx], now)
            if len(old_idx):
                w.update_speakers(ids[old_idx], means[old_idx], counts[old_idx], now)
            owners = np.repeat(ids, np.diff(np.append(starts, len(embs))))
            if waves is None:
                w.add_utterances(owners, embs)
            else:  # audio is kept: one row at a time, each with its WAV file written before the commit
                self._write_with_audio(w, undo, names, ids, embs, starts, waves)
            if record is not None:
                self._store_record(w, record, int(counts[0]) if len(names) == 1 else len(names))
        if len(new_idx) == len(names):
            cache.append_block(ids, names, means)
        else:
            cache.upsert(ids.tolist(), names, means)

    def _write_with_audio(
        self,
        w: GalleryWrite,
        undo: list[Callable[[], None]],
        names: list[str],
        ids: np.ndarray,
        embs: np.ndarray,
        starts: np.ndarray,
        waves: list[list[np.ndarray]],
    ) -> None:
        """Inside a write: the utterance rows of ``names`` with their kept WAVs (each renamed into place before the
        commit; the ``undo`` list deletes them again when the write does not happen)."""
        root = self.db_dir
        assert root is not None
        for i, name in enumerate(names):
            folder = folder_name(name)
            created = not (root / folder).exists()
            make_folder(root, folder)
            if created:  # an empty folder of a write that does not happen goes too
                undo.append(functools.partial(_remove_empty, root / folder))
            for row, wave in zip(embs[starts[i] : starts[i] + len(waves[i])], waves[i]):
                utt_id = w.add_utterance(int(ids[i]), row)
                relative = f"{folder}/{utt_id}-{uuid.uuid4().hex[:8]}.wav"
                undo.append(functools.partial((root / relative).unlink, missing_ok=True))
                write_wav(root / relative, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, hook=_hook)
                _hook("wav_written")
                w.set_audio(utt_id, relative)

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
            self._check_open()
            name = self._known_name(name)
            with self._transaction() as (w, _):
                self._check_record(w, record)
                cache, sid = self._speaker_id(name)
                kept = w.remove_speaker(sid)
                self._store_record(w, record, 0)
            cache.remove(sid)
            self._delete_files(kept)

    def _delete_files(self, relative: list[str]) -> None:
        """Delete the kept audio of a committed removal, and the folders it leaves empty.

        The files are deleted after the commit (a kill before the commit must leave them for the rows that still
        name them), in a second transaction that only holds the write lock, so no other writer is putting a new
        file into a folder being removed. A kill in between leaves orphans, which the next open removes. Only the
        files the rows named are deleted, so a folder shared in the layout before hashed names keeps the others.
        """
        root = self.db_dir
        if not relative or root is None:
            return
        _hook("files_deleting")
        try:
            with self._gallery.write(bump=False):
                for path in relative:
                    with contextlib.suppress(OSError):
                        (root / path).unlink(missing_ok=True)
                for folder in sorted({(root / path).parent for path in relative}):
                    if folder != root:
                        _remove_empty(folder)
        except SpeakerDBError:  # the removal has committed; its files are orphans the next open removes
            return

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
            self._check_open()
            name = self._known_name(name)
            with self._transaction() as (w, _):
                cache, sid = self._speaker_id(name)
                utt_ids, embs, audios = w.utterances(sid)
                n = len(utt_ids)
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
                mean = _mean_of(np.delete(embs, position, axis=0))
                w.remove_utterance(utt_ids[position])
                w.update_speakers(np.array([sid]), mean[None], np.array([n - 1]), None)
                audio = audios[position]
            cache.upsert([sid], [name], mean[None])
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
            self._check_open()
            with self._transaction() as (w, _):
                cache = self._cache  # brought up to date by the transaction's start
                assert cache is not None
                if name is None:
                    targets = list(cache.id_of.items())
                else:
                    clean = self._lookup(name)
                    if clean not in cache.id_of:
                        raise self._unknown(clean)
                    targets = [(clean, cache.id_of[clean])]
                names, ids, means, counts = [], [], [], []
                for spk, sid in targets:
                    _, embs, _ = w.utterances(sid)
                    if not len(embs):
                        raise SpeakerDBError(f"{self.path}: damaged database (speaker {spk!r} has no recordings)")
                    names.append(spk)
                    ids.append(sid)
                    means.append(_mean_of(embs))
                    counts.append(len(embs))
                if ids:
                    w.update_speakers(np.array(ids), np.stack(means), np.array(counts), None)
            if ids:
                cache.upsert(ids, names, np.stack(means))
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
            with self._transaction() as (w, _):
                w.replace_cohort(arr, None if source is None else str(source))

    # ------------------------------------------------------------------ reads
    def cohort(self) -> np.ndarray | None:
        """The stored AS-norm cohort ``[n, D]`` (float32), or ``None`` when there is none.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     print(db.cohort())
        None
        """
        with self._lock:
            self._check_open()
            return self._gallery.cohort()[0]

    @property
    def cohort_source(self) -> str | None:
        """Where the stored cohort came from (as given to :meth:`set_cohort`), or ``None``."""
        with self._lock:
            self._check_open()
            return self._gallery.cohort()[1]

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
            self._check_open()
            return self._gallery.names()

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
            times = self._gallery.times(int(sid))
            return (None, None) if times is None else times

    def __len__(self) -> int:
        """Number of enrolled speakers (``len(db)``): the in-memory matrix's rows once brought up to date (one
        version read, not a count over the store)."""
        with self._lock:
            self._refresh()
            assert self._cache is not None
            return self._cache.count

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is enrolled (``"alice" in db``); an invalid name is simply not enrolled."""
        if not isinstance(name, str):
            return False
        with self._lock:
            self._check_open()
            return self._gallery.speaker(self._lookup(name)) is not None

    def num_utterances(self, name: str) -> int:
        """How many utterances ``name`` was enrolled with.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.ones((3, 2)))
        ...     db.num_utterances("a")
        3
        """
        with self._lock:
            self._check_open()
            found = self._gallery.speaker(self._lookup(name))
            if found is None:
                raise self._unknown(str(name))
            return found[1]

    def utterance_embeddings(self, name: str) -> np.ndarray:
        """The ``[n, D]`` float32 utterance embeddings ``name`` was enrolled with, in enrolment order.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.array([[3.0, 4.0], [1.0, 0.0]]))
        ...     db.utterance_embeddings("a").tolist()
        [[3.0, 4.0], [1.0, 0.0]]
        """
        with self._lock:
            self._check_open()
            found = self._gallery.utterance_embeddings(self._lookup(name))
            if found is None:
                raise self._unknown(str(name))
            return found

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
            if self.db_dir is None:
                return []
            return [self.db_dir / p for p in self._gallery.audio_paths(self._lookup(name))]

    def audio_folders(self) -> set[str]:
        """Names of the folders in ``db_dir`` that hold this database's kept audio.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2, keep_audio=True) as db:
        ...     db.add("a", np.ones(2), audio=[np.zeros(1600, "float32")])
        ...     db.audio_folders() == {folder_name("a")}
        True
        """
        with self._lock:
            self._check_open()
            return {Path(p).parts[0] for p in self._gallery.audio_paths(None) if Path(p).parts}

    def mean_embedding(self, name: str) -> np.ndarray:
        """The speaker's unit-length mean embedding (float32 ``[D]``).

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add("a", np.array([[3.0, 4.0], [3.0, 4.0]]))
        ...     db.mean_embedding("a").tolist()
        [0.6000000238418579, 0.800000011920929]
        """
        with self._lock:
            self._check_open()
            found = self._gallery.speaker(self._lookup(name))
            if found is None:
                raise self._unknown(str(name))
            return found[2]

    def search(
        self,
        embeddings: np.ndarray,
        top_k: int = 1,
        score_norm: str | None = None,
        cohort_top_k: int = 300,
        cohort: np.ndarray | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        among: Sequence[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The ``top_k`` closest speakers (cosine similarity to their means) for each query, best first.

        ``embeddings`` is one ``[D]`` query or a batch ``[B, D]``; the result always has one list per query.
        Speakers enrolled by other processes since the last call are picked up first.

        With ``score_norm="as_norm"`` the scores are adaptively normalised against the stored cohort
        (:meth:`set_cohort`): ``½·((s − μ_spk)/σ_spk + (s − μ_query)/σ_query)`` with the mean and deviation of the
        ``cohort_top_k`` highest cohort scores of each side, so a score means the same whatever else is enrolled.
        ``cohort`` (``[C, D]``) replaces the stored cohort for this call (a model's training cohort: the predictor
        passes it), and ``transform`` maps the enrolled means as the queries were mapped (e.g. centring).
        ``among`` restricts the search to these enrolled names (an unknown one is an
        :class:`~mvector.errors.UnknownSpeakerError`); scores are the same as in a search over everyone.

        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as folder, SpeakerDatabase(folder, "m", 2) as db:
        ...     db.add_many({"east": np.array([1.0, 0.0]), "north": np.array([0.0, 1.0])})
        ...     hits = db.search(np.array([[1.0, 0.1], [0.0, -1.0]]), top_k=2)
        ...     only = db.search(np.array([1.0, 0.1]), among=["north"])
        ...     [[name for name, _ in row] for row in hits], only[0][0][0]
        ([['east', 'north'], ['east', 'north']], 'north')
        """
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise SpeakerDBError(f"top_k must be a positive integer, got {top_k!r}")
        if score_norm not in SCORE_NORMS:
            raise SpeakerDBError(f"score_norm must be one of {SCORE_NORMS}, got {score_norm!r}")
        if isinstance(cohort_top_k, bool) or not isinstance(cohort_top_k, (int, np.integer)) or cohort_top_k < 1:
            raise SpeakerDBError(f"cohort_top_k must be a positive integer, got {cohort_top_k!r}")
        queries = _as_embeddings(embeddings, self.embd_dim, "search query")
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        args = (queries, int(top_k), score_norm, int(cohort_top_k), cohort, transform, among)
        with self._lock:
            self._check_open()
            if self._cache is not None and self._cache.count:
                # Search the cached means while the store reads its version (a database round trip); the answer
                # stands when nothing was written meanwhile, else the cache catches up and searches again.
                with self._gallery.reading_version() as version_now:
                    try:
                        found = self._ranked(self._cache, *args)
                    except SpeakerDBError:  # e.g. a name in ``among`` enrolled elsewhere: decide after catching up
                        found = None
                    if found is not None and version_now() == self._version:
                        return found
            self._refresh()
            cache = self._cache
            assert cache is not None
            if cache.count == 0:
                raise SpeakerDBError(
                    f"no speakers enrolled in {self.path}; register speakers before recognising (add / add_many)"
                )
            return self._ranked(cache, *args)

    def _ranked(
        self,
        cache: _MeanCache,
        queries: np.ndarray,
        top_k: int,
        score_norm: str | None,
        cohort_top_k: int,
        cohort: np.ndarray | None,
        transform: Callable[[np.ndarray], np.ndarray] | None,
        among: Sequence[str] | None,
    ) -> list[list[tuple[str, float]]]:
        """:meth:`search` over the cached means as they are (the caller holds the lock)."""
        k = min(int(top_k), cache.count)
        plain = among is None and score_norm is None and transform is None
        if self._index is not None and plain and k <= _APPROXIMATE_MAX_K and k * 16 <= cache.count:
            return self._approximate(cache, queries, k)
        rows = None if among is None else self._rows_among(cache, among)
        count = cache.count if rows is None else len(rows)
        names = cache.names if rows is None else [cache.names[r] for r in rows]
        k = min(int(top_k), count)
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
            if rows is not None:
                spk_mu, spk_sd = spk_mu[rows], spk_sd[rows]
            q_mu, q_sd = _top_k_stats(queries, cohort_u, int(cohort_top_k))
        if rows is not None:
            means = means[rows]
        block = max(1, _SCORE_BLOCK // count)
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(queries), block):
            q = queries[start : start + block]
            scores = (means @ q[0])[None] if len(q) == 1 else q @ means.T  # one BLAS call per block
            if score_norm == "as_norm":
                qm, qs = q_mu[start : start + block, None], q_sd[start : start + block, None]
                scores = 0.5 * ((scores - spk_mu[None]) / spk_sd[None] + (scores - qm) / qs)
            if k < count:
                top = _best_columns(scores, k)
            else:
                top = np.broadcast_to(np.arange(k), (len(q), k))
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            for idx, vals in zip(
                np.take_along_axis(top, order, axis=1).tolist(),
                np.take_along_axis(top_scores, order, axis=1).tolist(),
            ):
                results.append([(names[r], float(v)) for r, v in zip(idx, vals)])
        return results

    def _means_of(self, ids: np.ndarray) -> np.ndarray:
        """The cached means of speaker ``ids`` (the approximate index's exact rows)."""
        cache = self._cache
        assert cache is not None
        return cache.matrix[cache.row_of.rows(ids)]

    def _approximate(self, cache: _MeanCache, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """A plain search through the approximate index (ids it did not find, -1, are left out)."""
        assert self._index is not None
        ids, scores = self._index.search(queries, k)
        return [
            [(cache.names[cache.row_of[i]], float(v)) for i, v in zip(id_row, score_row) if i >= 0]
            for id_row, score_row in zip(ids.tolist(), scores.tolist())
        ]

    def _rows_among(self, cache: _MeanCache, among: Sequence[str]) -> np.ndarray:
        """The cache rows of the names in ``among`` (each once, in the order given); unknown names are an error."""
        if isinstance(among, str) or not isinstance(among, Sequence) or not among:
            raise SpeakerDBError(f"among must be a non-empty list of speaker names, got {among!r}")
        rows: dict[int, None] = {}
        unknown = []
        for name in among:
            sid = cache.id_of.get(self._lookup(name)) if isinstance(name, str) else None
            if sid is None:
                unknown.append(name)
            else:
                rows[cache.row_of[sid]] = None
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            shown = ", ".join(repr(n) for n in unknown[:5]) + more
            raise UnknownSpeakerError(f"names in 'among' that are not enrolled in {self.path}: {shown}")
        return np.fromiter(rows, dtype=np.int64, count=len(rows))
