"""Copying galleries, API keys and the audit log from one store to another (``mvector gallery copy SRC DST``).

Either side may be a database folder or a ``postgresql://`` URL, so a gallery moves from one machine's folder into
a shared PostgreSQL database and back. For each gallery:

* the source is read inside its write transaction (``write(bump=False)``): writers to the source wait until the
  copy is read, so the copy is one consistent state and no enrolment made meanwhile is half in it;
* the target gallery is created for the source's model, or must already belong to it: a gallery of another model
  (another fingerprint or embedding size) is refused with one line naming both, and so is a target that already
  holds speakers (a copy never merges);
* every speaker is written with its utterance embeddings (in enrolment order), recording count, mean and enrolment
  times, plus the AS-norm cohort, in one transaction: a copy that fails leaves the target gallery empty;
* afterwards both sides are read again and compared: the speaker, utterance and cohort counts, and a SHA-256 over
  the sorted ``(gallery, name, utterance bytes)`` rows (:func:`gallery_digest`); a difference is an error.

Keys and audit rows are copied after the galleries (:func:`copy_keys`): a key id the target holds already is kept
when it is the same key and refused when it differs; audit rows are appended with their counts and times.

Not copied: idempotency records (they expire within a day; a client retrying during a move gets a fresh answer) and
kept recordings (a PostgreSQL store holds no files): a source gallery with kept audio is refused unless
``without_audio`` is given.

>>> import tempfile, numpy as np
>>> from mvector.store import open_store
>>> src, dst = open_store(tempfile.mkdtemp()), open_store(tempfile.mkdtemp())
>>> g = src.gallery(); g.open("model-a", 2)
>>> with g.write() as w:
...     first = w.allocate_ids(1)
...     w.insert_speakers(np.array([first]), ["ann"], np.array([[1.0, 0.0]], "float32"), np.array([1]), 0.0)
...     w.add_utterances(np.array([first]), np.array([[2.0, 0.0]], "float32"))
>>> [(r.gallery, r.speakers, r.utterances) for r in copy_store(src, dst).galleries]
[('default', 1, 1)]
>>> dst.gallery().names()
['ann']
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from mvector.errors import SpeakerDBError, StoreError
from mvector.store.base import DEFAULT_GALLERY, AuditRow, GalleryStore, GalleryWrite, KeyRow, Store, check_gallery

__all__ = ["CopyReport", "GalleryCopy", "GalleryRows", "copy_gallery", "copy_keys", "copy_store", "gallery_digest"]

_AUDIT_ALL = 1 << 62  # "every row" for KeyBackend.audit_rows


@dataclass
class GalleryRows:
    """Everything a copy carries of one gallery: speakers in id order with their utterances and times, the cohort.

    ``utterances[i]`` is ``[n_i, D]`` float32 (speaker ``i``'s recordings in enrolment order); ``times[i]`` is
    ``(enrolled, updated)`` or None.
    """

    name: str
    model_fingerprint: str
    embd_dim: int
    names: list[str]
    means: np.ndarray
    utterances: list[np.ndarray]
    times: list[tuple[float, float] | None]
    cohort: np.ndarray | None
    cohort_source: str | None
    audio_files: int = 0

    @property
    def utterance_count(self) -> int:
        """How many utterance embeddings the gallery holds."""
        return int(sum(len(u) for u in self.utterances))


@dataclass(frozen=True)
class GalleryCopy:
    """What was copied of one gallery and the digest both sides agree on."""

    gallery: str
    speakers: int
    utterances: int
    cohort: int
    sha256: str


@dataclass
class CopyReport:
    """The galleries copied, and the keys and audit rows copied (``keys_skipped``: identical keys already there)."""

    galleries: list[GalleryCopy] = field(default_factory=list)
    keys: int = 0
    keys_skipped: int = 0
    audit_rows: int = 0


def gallery_digest(name: str, names: Sequence[str], utterances: Sequence[np.ndarray], cohort: np.ndarray | None) -> str:
    """SHA-256 over the gallery's rows sorted by speaker name: ``(gallery, name, utterance bytes)`` with lengths
    framed, then the cohort's bytes. The same gallery in any store gives the same digest.

    >>> one = [np.ones((1, 2), "float32")]
    >>> gallery_digest("g", ["a"], one, None) == gallery_digest("g", ["a"], one, None)
    True
    >>> gallery_digest("g", ["a"], one, None) == gallery_digest("g", ["b"], one, None)
    False
    """
    digest = hashlib.sha256()
    gallery = name.encode("utf-8")
    for i in sorted(range(len(names)), key=lambda j: names[j].encode("utf-8")):
        spoken = names[i].encode("utf-8")
        data = np.ascontiguousarray(utterances[i], dtype="<f4").tobytes()
        digest.update(struct.pack("<III", len(gallery), len(spoken), len(data)))
        digest.update(gallery + spoken + data)
    data = b"" if cohort is None else np.ascontiguousarray(cohort, dtype="<f4").tobytes()
    digest.update(struct.pack("<I", len(data)) + data)
    return digest.hexdigest()


def _read_rows(gallery: GalleryStore, w: GalleryWrite, fingerprint: str, dim: int) -> GalleryRows:
    """Every row of ``gallery``, read inside its transaction ``w``."""
    full = w.snapshot(None)
    assert full is not None
    owners, embeddings, audio = w.every_utterance()  # one read each, not one query per speaker
    when = w.every_time()
    first, last = np.searchsorted(owners, full.ids, "left"), np.searchsorted(owners, full.ids, "right")
    utterances, times, audio_files = [], [], 0
    for sid, a, b in zip(full.ids.tolist(), first.tolist(), last.tolist()):
        if a == b:
            raise SpeakerDBError(f"{gallery.where}: damaged gallery (speaker id {sid} has no recordings)")
        utterances.append(embeddings[a:b])
        times.append(when.get(sid))
        audio_files += sum(p is not None for p in audio[a:b])
    cohort, source = gallery.cohort()
    return GalleryRows(
        gallery.name, fingerprint, dim, list(full.names), np.array(full.means, np.float32), utterances, times,
        None if cohort is None else np.array(cohort, np.float32), source, audio_files,
    )


def read_gallery(gallery: GalleryStore, fingerprint: str, dim: int) -> GalleryRows:
    """Every row of a gallery of this model in one consistent read (holding its write lock, so no write comes
    between); the gallery is opened (created when missing).

    >>> import tempfile
    >>> from mvector.store import open_store
    >>> read_gallery(open_store(tempfile.mkdtemp()).gallery(), "m", 3).names
    []
    """
    gallery.open(fingerprint, dim)
    with gallery.write(bump=False) as w:
        return _read_rows(gallery, w, fingerprint, dim)


def _rows(array: np.ndarray | None) -> int:
    return 0 if array is None else len(array)


def _digest_of(rows: GalleryRows) -> str:
    return gallery_digest(rows.name, rows.names, rows.utterances, rows.cohort)


def _write_rows(target: GalleryStore, rows: GalleryRows) -> None:
    """Write ``rows`` into the empty, opened gallery ``target`` in one transaction."""
    now = time.time()
    with target.write() as w:
        if w.snapshot(None).ids.size:  # checked again under the target's lock
            raise StoreError(f"{target.where}: the target gallery is not empty; copy into a new gallery or store")
        n = len(rows.names)
        if n:
            first = w.allocate_ids(n)
            ids = np.arange(first, first + n, dtype=np.int64)
            counts = np.array([len(u) for u in rows.utterances], dtype=np.int64)
            # speakers enrolled at the same time (a bulk enrolment) go in together
            groups: dict[tuple[float, float] | None, list[int]] = {}
            for i, t in enumerate(rows.times):
                groups.setdefault(t, []).append(i)
            for when, members in groups.items():
                pick = np.array(members, dtype=np.int64)
                enrolled = now if when is None else float(when[0])  # unrecorded: the copy's time
                w.insert_speakers(ids[pick], [rows.names[i] for i in members], rows.means[pick], counts[pick], enrolled)
                if when is not None and when[1] != when[0]:
                    w.update_speakers(ids[pick], rows.means[pick], counts[pick], float(when[1]))
            owners = np.repeat(ids, counts)
            w.add_utterances(owners, np.concatenate(rows.utterances).astype(np.float32))
        if rows.cohort is not None:
            w.replace_cohort(rows.cohort, rows.cohort_source)


def copy_gallery(
    source: Store, target: Store, name: str = DEFAULT_GALLERY, without_audio: bool = False
) -> GalleryCopy:
    """Copy gallery ``name`` from ``source`` to ``target`` (see the module docstring) and check the result.

    >>> import tempfile
    >>> from mvector.store import open_store
    >>> copy_gallery(open_store(tempfile.mkdtemp()), open_store(tempfile.mkdtemp()), "nowhere")
    Traceback (most recent call last):
    ...
    mvector.errors.StoreError: ... has no gallery 'nowhere' to copy
    """
    name = check_gallery(name)
    src = source.gallery(name)
    owner = src.owner()
    if owner is None:
        raise StoreError(f"{source.where} has no gallery {name!r} to copy")
    fingerprint, dim = owner
    src.open(fingerprint, dim)
    dst = target.gallery(name)
    theirs = dst.owner()
    if theirs is not None and theirs != (fingerprint, dim):
        raise StoreError(
            f"{dst.where}: refusing to copy gallery {name!r}: the target was made by another model (fingerprint "
            f"{theirs[0][:12]}, embedding size {theirs[1]}); the source's model has fingerprint {fingerprint[:12]}, "
            f"embedding size {dim}. Copy into another gallery or store"
        )
    with src.write(bump=False) as w:  # the source stays as it is until its rows are written and compared
        rows = _read_rows(src, w, fingerprint, dim)
        if rows.audio_files and not without_audio:
            raise StoreError(
                f"{src.where}: gallery {name!r} keeps {rows.audio_files} recording(s) as files, which a copy does not "
                "carry; give --without_audio to copy the embeddings only (the files stay where they are)"
            )
        dst.open(fingerprint, dim)
        if dst.count():
            raise StoreError(
                f"{dst.where}: the target gallery {name!r} already holds {dst.count()} speaker(s); a copy never "
                "merges: copy into a new gallery or an empty store"
            )
        _write_rows(dst, rows)
        expected = _digest_of(rows)
    copied = read_gallery(dst, fingerprint, dim)
    checks = {
        "speakers": (len(rows.names), len(copied.names)),
        "utterances": (rows.utterance_count, copied.utterance_count),
        "cohort rows": (_rows(rows.cohort), _rows(copied.cohort)),
    }
    for what, (want, got) in checks.items():
        if want != got:
            raise StoreError(f"{dst.where}: the copy of gallery {name!r} has {got} {what}, the source {want}")
    digest = _digest_of(copied)
    if digest != expected:
        raise StoreError(
            f"{dst.where}: the copy of gallery {name!r} differs from the source (SHA-256 {digest[:16]} against "
            f"{expected[:16]})"
        )
    return GalleryCopy(name, len(rows.names), rows.utterance_count, checks["cohort rows"][0], digest)


def _key_tuple(row: KeyRow) -> tuple:
    return (row.key_id, row.name, row.scope, row.hash, row.created, row.created_by, row.revoked, row.galleries)


def copy_keys(source: Store, target: Store) -> tuple[int, int, int]:
    """Copy the API keys (with their hashes, scopes, galleries and revocations) and the audit log; returns
    ``(keys copied, identical keys already there, audit rows copied)``. A key id the target holds with other
    content is refused before anything is written.

    >>> import tempfile
    >>> from mvector.store import open_store
    >>> copy_keys(open_store(tempfile.mkdtemp()), open_store(tempfile.mkdtemp()))
    (0, 0, 0)
    """
    keys_from = source.keys()
    if not keys_from.exists():
        return 0, 0, 0
    keys_to = target.keys()
    rows = keys_from.list_keys()
    fresh: list[KeyRow] = []
    skipped = 0
    for row in rows:
        there = keys_to.get_key(row.key_id)
        if there is None:
            fresh.append(row)
        elif _key_tuple(there) == _key_tuple(row):
            skipped += 1
        else:
            raise StoreError(
                f"{keys_to.where}: key {row.key_id} exists there with other content (scope, hash or galleries); "
                "nothing was copied of the keys. Revoke or remove it there first"
            )
    for row in fresh:
        if not keys_to.add_key(row):
            raise StoreError(f"{keys_to.where}: key {row.key_id} was created there during the copy")
    audit: list[AuditRow] = keys_from.audit_rows(_AUDIT_ALL, None, "all")
    for row in reversed(audit):  # oldest first, so the target lists them in the same order
        keys_to.audit(row, None)
    copied = keys_to.list_keys()
    missing = {r.key_id for r in rows} - {r.key_id for r in copied}
    if missing:
        raise StoreError(f"{keys_to.where}: {len(missing)} key(s) missing after the copy")
    return len(fresh), skipped, len(audit)


def copy_store(
    source: Store,
    target: Store,
    galleries: Sequence[str] | None = None,
    keys: bool = True,
    without_audio: bool = False,
) -> CopyReport:
    """Copy ``galleries`` (every gallery of the source when None) and, with ``keys``, the API keys and audit log.

    >>> import tempfile
    >>> from mvector.store import open_store
    >>> copy_store(open_store(tempfile.mkdtemp()), open_store(tempfile.mkdtemp())).galleries
    []
    """
    names = source.gallery_names() if galleries is None else [check_gallery(g) for g in galleries]
    report = CopyReport()
    for name in names:
        report.galleries.append(copy_gallery(source, target, name, without_audio=without_audio))
    if keys:
        report.keys, report.keys_skipped, report.audit_rows = copy_keys(source, target)
    return report
