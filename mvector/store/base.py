"""The store seam: what a gallery store and a key store must do, whatever holds the data.

Two implementations stand behind these interfaces: :mod:`mvector.store.sqlite` (a folder of SQLite files, the
default) and :mod:`mvector.store.postgres` (one PostgreSQL database shared by several processes or machines).
:func:`mvector.store.open_store` picks one from a location (a path or a ``postgresql://`` URL); callers never ask
which one they hold.

A store holds named *galleries* (:data:`DEFAULT_GALLERY` is the one an existing folder opens as). A gallery keeps
speakers (a unique name, the unit mean embedding, the recording count, when enrolled), their utterance embeddings,
an optional AS-norm cohort, idempotency records and a *version* counter that every write bumps. Writes run in
:meth:`GalleryStore.write`: one transaction holding the gallery's write lock (SQLite ``BEGIN IMMEDIATE`` on the
gallery's file; PostgreSQL ``SELECT ... FOR UPDATE`` on the gallery's row), so checks and writes of two processes on
two machines never interleave. A reader keeps its own in-memory copy and asks :meth:`GalleryStore.snapshot` for the
rows changed since the version it holds.

The key store (:class:`KeyBackend`) holds the service's API keys and its audit log; the rules (hashing, scopes,
escaping) live in :mod:`mvector.service.keys`, the store only keeps rows.

>>> check_gallery("default"), check_gallery("house_2")
('default', 'house_2')
>>> check_gallery("../etc")
Traceback (most recent call last):
...
mvector.errors.StoreError: gallery name '../etc' is not valid: use 1-64 lowercase letters, digits, '_' or '-', \
starting with a letter or digit
"""

from __future__ import annotations

import abc
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np

from mvector.errors import StoreError

__all__ = [
    "DEFAULT_GALLERY",
    "AuditRow",
    "Changes",
    "GalleryStore",
    "GalleryWrite",
    "KeyBackend",
    "KeyRow",
    "REMOVALS_KEPT",
    "Store",
    "StoredAnswer",
    "check_gallery",
]

#: How many writes (gallery versions) back the record of removed speakers reaches: each removal deletes the records
#: older than that, so the record stays bounded; a replica further behind than that reloads the whole gallery.
REMOVALS_KEPT = 100_000

#: The gallery an existing database folder opens as, and the one every caller uses when it names none.
DEFAULT_GALLERY = "default"
_GALLERY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_gallery(name: Any) -> str:
    """``name`` when it is a valid gallery name (1-64 of ``a-z 0-9 _ -``, starting with a letter or digit), else a
    :class:`~mvector.errors.StoreError` (it also names a folder and a database value, so the rule is strict)."""
    if not isinstance(name, str) or not _GALLERY.match(name):
        raise StoreError(
            f"gallery name {name!r} is not valid: use 1-64 lowercase letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    return name


@dataclass(frozen=True)
class StoredAnswer:
    """The answer stored for an idempotency key: the request's hash, the HTTP status and the JSON answer."""

    request_hash: str
    status: int
    answer: dict[str, Any]
    created: float

    def matches(self, request_hash: str) -> bool:
        """Whether ``request_hash`` is the request this answer was stored for.

        >>> StoredAnswer("h1", 201, {}, 0.0).matches("h1")
        True
        """
        return self.request_hash == request_hash


@dataclass
class Changes:
    """What changed in a gallery since a version: its version now, the speaker ids removed, and the speakers written
    (``ids`` int64 ``[n]``, ``names``, ``means`` float32 ``[n, D]``). A full load has ``full=True`` and no removals.

    >>> Changes.empty(7, 3).means.shape
    (0, 3)
    """

    version: int
    removed: list[int]
    ids: np.ndarray
    names: list[str]
    means: np.ndarray
    full: bool = False

    @classmethod
    def empty(cls, version: int, embd_dim: int, full: bool = False) -> Changes:
        """No rows: a gallery without speakers (``full``) or without changes."""
        return cls(version, [], np.empty(0, np.int64), [], np.empty((0, embd_dim), np.float32), full)


@dataclass(frozen=True)
class KeyRow:
    """A stored API key: its id, label, scope, SHA-256 of the whole key, times, who created it, and the galleries
    it may use (``None``: every gallery).

    >>> KeyRow("0123456789ab", "app", "read", "0" * 64, 0.0, None, None, ("default",)).galleries
    ('default',)
    """

    key_id: str
    name: str
    scope: str
    hash: str
    created: float
    created_by: str | None
    revoked: float | None
    galleries: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AuditRow:
    """One audit row as stored (text already escaped by the caller)."""

    time: float
    key_id: str | None
    key_name: str | None
    action: str
    target: str | None
    status: int
    detail: str | None
    client: str | None
    count: int = 1
    last: float | None = None
    replica: str | None = None
    gallery: str | None = None


class GalleryWrite(abc.ABC):
    """One write transaction of a gallery, holding its write lock. ``version`` is the version it commits.

    Everything is done through these methods while the transaction is open; the caller checks first (the speaker
    exists, the idempotency key is new) and writes second, so no other writer anywhere can come in between.
    """

    version: int

    @abc.abstractmethod
    def snapshot(self, since: int | None) -> Changes | None:
        """As :meth:`GalleryStore.snapshot`, inside this transaction (it sees every committed write)."""

    @abc.abstractmethod
    def answer(self, owner: str, key: str, not_before: float) -> StoredAnswer | None:
        """The idempotency record of ``(owner, key)`` created at ``not_before`` or later, or None."""

    @abc.abstractmethod
    def keep_answer(self, owner: str, key: str, request_hash: str, status: int, answer: str, now: float) -> None:
        """Store an idempotency record (``answer`` is JSON text), replacing an expired one of the same key."""

    @abc.abstractmethod
    def purge_answers(self, before: float) -> int:
        """Delete the idempotency records created before ``before``; returns how many went."""

    @abc.abstractmethod
    def allocate_ids(self, count: int) -> int:
        """Reserve ``count`` new speaker ids; returns the first (they are consecutive)."""

    @abc.abstractmethod
    def insert_speakers(
        self, ids: np.ndarray, names: Sequence[str], means: np.ndarray, counts: np.ndarray, now: float
    ) -> None:
        """Add new speakers with their means and recording counts (enrolled and updated at ``now``)."""

    @abc.abstractmethod
    def update_speakers(self, ids: np.ndarray, means: np.ndarray, counts: np.ndarray, now: float | None) -> None:
        """Set existing speakers' means and recording counts (``now``: their last-added time, None keeps it)."""

    @abc.abstractmethod
    def add_utterances(self, owners: np.ndarray, embeddings: np.ndarray) -> None:
        """Add utterance embeddings (row ``i`` belongs to speaker ``owners[i]``), in this order."""

    @abc.abstractmethod
    def add_utterance(self, owner: int, embedding: np.ndarray) -> int:
        """Add one utterance embedding of speaker ``owner``; returns its id (for :meth:`set_audio`)."""

    @abc.abstractmethod
    def set_audio(self, utterance_id: int, relative: str) -> None:
        """Record the kept audio file (relative to the gallery's :attr:`GalleryStore.files_dir`) of an utterance."""

    @abc.abstractmethod
    def utterances(self, speaker_id: int) -> tuple[list[int], np.ndarray, list[str | None]]:
        """A speaker's utterance ids, embeddings ``[n, D]`` and kept audio paths, in enrolment order."""

    @abc.abstractmethod
    def every_utterance(self) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Every utterance of the gallery in one read: speaker ids ``[n]`` (ascending), embeddings ``[n, D]`` and
        kept audio paths, each speaker's in enrolment order."""

    @abc.abstractmethod
    def every_time(self) -> dict[int, tuple[float, float]]:
        """``speaker id -> (first enrolled, last added to)`` as Unix times, for every speaker that has them."""

    @abc.abstractmethod
    def remove_speaker(self, speaker_id: int) -> list[str]:
        """Delete a speaker and its utterances (recorded as removed at :attr:`version`); returns its audio paths."""

    @abc.abstractmethod
    def remove_utterance(self, utterance_id: int) -> None:
        """Delete one utterance row."""

    @abc.abstractmethod
    def replace_cohort(self, embeddings: np.ndarray | None, source: str | None) -> None:
        """Replace the AS-norm cohort (None: remove it) and where it came from."""

    @abc.abstractmethod
    def all_audio_paths(self) -> list[str]:
        """Every kept audio path a committed utterance names (for the clean-up of what a kill left)."""

    @abc.abstractmethod
    def has_name(self, name: str) -> bool:
        """Whether a speaker of exactly this stored name exists."""


class GalleryStore(abc.ABC):
    """One named gallery in a store. Cheap to make; :meth:`open` creates it or checks it belongs to the model.

    ``where`` names it in messages (a file path, or a URL without its password plus the gallery); ``files_dir`` is
    the folder kept audio may go in (``None``: this store keeps no files).
    """

    name: str
    where: str
    files_dir: Path | None

    @abc.abstractmethod
    def open(self, model_fingerprint: str, embd_dim: int) -> None:
        """Create the gallery for this model, or check an existing one was made by it (a
        :class:`~mvector.errors.SpeakerDBError` naming both models otherwise)."""

    @abc.abstractmethod
    def owner(self) -> tuple[str, int] | None:
        """``(model fingerprint, embedding size)`` of the gallery when it exists (it need not be opened), else None;
        nothing is created."""

    @abc.abstractmethod
    def snapshot(self, since: int | None) -> Changes | None:
        """In one consistent read: None when the gallery is still at version ``since``; everything (``full``) when
        ``since`` is None; else the speakers removed and written after ``since``."""

    @abc.abstractmethod
    def version(self) -> int:
        """The gallery's version now (every committed write raised it by one)."""

    @contextlib.contextmanager
    def reading_version(self) -> Iterator[Callable[[], int]]:
        """Start reading the gallery's version; the block gets a function that returns it (waiting for it). A store
        whose read is a network round trip sends it on entering, so the caller works while the database answers: a
        replica searches its cached means meanwhile and keeps the result only if the version did not move. The read
        happens after the block is entered, so it sees every write committed before. Here: read when asked.

        >>> import tempfile
        >>> from mvector.store import open_store
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     gallery = open_store(folder).gallery()
        ...     gallery.open("model", 2)
        ...     with gallery.reading_version() as version_now:
        ...         before = version_now()
        ...     with gallery.write() as w:
        ...         pass
        ...     before, gallery.version()
        (0, 1)
        """
        yield self.version

    @abc.abstractmethod
    def write(self, before_commit: Callable[[], None] | None = None, bump: bool = True) -> ContextManager[GalleryWrite]:
        """A write transaction holding the gallery's write lock. Leaving the block commits (``bump``: with the
        version raised by one; ``before_commit`` runs just before), an exception rolls back. A database error is a
        :class:`~mvector.errors.SpeakerDBError`, an unreachable store a
        :class:`~mvector.errors.StoreUnavailableError`."""

    @abc.abstractmethod
    def count(self) -> int:
        """How many speakers are enrolled."""

    @abc.abstractmethod
    def names(self, limit: int | None = None) -> list[str]:
        """Enrolled names in enrolment order (the first ``limit``)."""

    @abc.abstractmethod
    def speaker(self, name: str) -> tuple[int, int, np.ndarray] | None:
        """``(id, recording count, unit mean)`` of a speaker of exactly this stored name, or None."""

    @abc.abstractmethod
    def times(self, speaker_id: int) -> tuple[float, float] | None:
        """``(first enrolled, last added to)`` as Unix times, or None when they were not recorded."""

    @abc.abstractmethod
    def utterance_embeddings(self, name: str) -> np.ndarray | None:
        """``[n, D]`` utterance embeddings of ``name`` in enrolment order, or None when not enrolled."""

    @abc.abstractmethod
    def audio_paths(self, name: str | None) -> list[str]:
        """Kept audio paths of ``name`` (every speaker's with None), in enrolment order."""

    @abc.abstractmethod
    def cohort(self) -> tuple[np.ndarray | None, str | None]:
        """The AS-norm cohort ``[n, D]`` (None when there is none) and where it came from."""

    @abc.abstractmethod
    def answer(self, owner: str, key: str, not_before: float) -> StoredAnswer | None:
        """The idempotency record of ``(owner, key)`` created at ``not_before`` or later, or None."""

    @abc.abstractmethod
    def close(self) -> None:
        """Give back connections (safe to call twice)."""


class KeyBackend(abc.ABC):
    """Where the service's API keys and audit log are kept. One transaction per call."""

    where: str

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether keys were ever stored here (a folder store without its key file: False)."""

    @abc.abstractmethod
    def add_key(self, row: KeyRow) -> bool:
        """Store a new key; False when its id is taken (the caller draws another)."""

    @abc.abstractmethod
    def get_key(self, key_id: str) -> KeyRow | None:
        """The key with this id (with its hash), or None."""

    @abc.abstractmethod
    def list_keys(self) -> list[KeyRow]:
        """Every key, oldest first."""

    @abc.abstractmethod
    def revoke_key(self, key_id: str, when: float) -> None:
        """Mark an active key revoked at ``when`` (a revoked one keeps its first time)."""

    @abc.abstractmethod
    def audit(self, row: AuditRow, aggregate_since: float | None) -> None:
        """Add an audit row (its ``count`` and ``last`` as given: a copied row keeps them); with
        ``aggregate_since``, a row of the same key, client, action, status and replica opened since then is counted
        up instead (its target and detail become this row's)."""

    @abc.abstractmethod
    def purge_audit(self, before: float) -> int:
        """Delete audit rows whose latest time is before ``before``; returns how many."""

    @abc.abstractmethod
    def audit_rows(self, limit: int, action: str | None, outcome: str) -> list[AuditRow]:
        """The ``limit`` latest rows, newest first: ``outcome`` ``done`` (status < 400), ``refused`` or ``all``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Give back connections (safe to call twice)."""


class Store(abc.ABC):
    """A place galleries and keys live: :func:`mvector.store.open_store` makes one from a location."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._galleries: dict[str, GalleryStore] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r})"

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The location for messages (a URL without its password)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Reach the store now (at start-up): a :class:`~mvector.errors.StoreUnavailableError` with one clear line
        when it cannot be reached (wrong host, wrong credentials, missing database)."""

    @abc.abstractmethod
    def _make_gallery(self, name: str) -> GalleryStore:
        """A new handle on gallery ``name`` (checked)."""

    @abc.abstractmethod
    def gallery_names(self) -> list[str]:
        """The galleries that exist, sorted."""

    @abc.abstractmethod
    def keys(self) -> KeyBackend:
        """The API keys and audit log kept with the galleries."""

    def gallery(self, name: str = DEFAULT_GALLERY) -> GalleryStore:
        """The handle on gallery ``name`` (one per name and store; not yet opened)."""
        name = check_gallery(name)
        handle = self._galleries.get(name)
        if handle is None:
            handle = self._galleries[name] = self._make_gallery(name)
        return handle

    def close(self) -> None:
        """Close every gallery handle made by this store."""
        for handle in self._galleries.values():
            handle.close()
        self._galleries.clear()

