"""The files of a speaker-database folder beside ``speakers.sqlite``: kept audio, its folder names, and the clean-up
of what a killed writer left.

Layout (with ``keep_audio``)::

    <db_dir>/speakers.sqlite         (+ -wal, -shm)       0600
    <db_dir>/<folder>/<utt id>-<8 hex>.wav                 0600, folders 0700
    <db_dir>/.trash/                                       left by removals of earlier versions (removed on open)

Every folder name carries a hash of the (normalised) speaker name: ``<beginning of the name>-<16 hex>``, so two
names never share a folder (a short name cannot equal another's shortened name: the hash ends every folder name).
Databases written before this layout store plain folder names (``alice``, or a long name's beginning plus a 12-hex
hash); every utterance row records its file's path, so those files still open, and removal moves exactly the files
the rows name. New recordings always go to the new folder.

A WAV is written under a temporary name and renamed into place inside the write transaction that records it; a
removal deletes its files after its commit. So a kill can leave a temporary file, or a WAV no committed row names
(an *orphan*: its enrolment never committed, or its removal did); :func:`clean_leftovers` removes them (and an old
``.trash``). The database calls it while holding its write lock, so it never takes the files of a write in progress.

>>> folder_name("alice")
'alice-2bd806c97f0e00af'
>>> folder_name("alice-2bd806c97f0e00af") != folder_name("alice")
True
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import wave
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from mvector.utils.files import atomic_open, is_atomic_temp, private_mkdir

__all__ = ["TRASH_DIR", "WAV_NAME", "clean_leftovers", "folder_name", "make_folder", "write_wav"]

TRASH_DIR = ".trash"
#: The names of kept WAV files: ``<utterance id>-<8 hex>.wav``.
WAV_NAME = re.compile(r"\d+-[0-9a-f]{8}\.wav")
_MAX_FOLDER_BYTES = 120  # file systems allow 255 bytes per name; 100 CJK characters are 300
_HASH_CHARS = 16
_FOLDER_NAME = re.compile(rf"(?:.*-)?[0-9a-f]{{{_HASH_CHARS}}}")


def folder_name(name: str) -> str:
    """The folder a speaker's kept audio goes in: the name's beginning (at most 100 UTF-8 bytes, no leading dot)
    and 16 hex digits of its SHA-256.

    >>> f = folder_name("語" * 100)
    >>> digest = hashlib.sha256(("語" * 100).encode()).hexdigest()
    >>> len(f.encode()) <= 120, f.startswith("語" * 30), f.endswith("-" + digest[:16])
    (True, True, True)
    """
    raw = name.encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]
    head = raw[: _MAX_FOLDER_BYTES - _HASH_CHARS - 1].decode("utf-8", errors="ignore").rstrip().lstrip(".")
    return f"{head}-{digest}" if head else digest


def write_wav(path: Path, samples: np.ndarray, sample_rate: int, hook: Callable[[str], None] | None = None) -> None:
    """Write mono float samples as a private (0600) 16-bit WAV atomically; ``hook("wav_tmp")`` runs once the
    temporary file is complete, before the rename (tests kill the process there).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "s" / "1-00000000.wav"
    >>> write_wav(p, np.zeros(160, np.float32), 16000)
    >>> p.stat().st_size, oct(p.stat().st_mode & 0o777)
    (364, '0o600')
    """
    pcm = np.clip(np.rint(np.asarray(samples, np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with atomic_open(path, "wb", private=True) as fh:
        with wave.open(fh, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(int(sample_rate))
            out.writeframes(pcm.tobytes())
        if hook is not None:
            hook("wav_tmp")


def clean_leftovers(db_dir: Path, referenced: Iterable[str]) -> dict[str, int]:
    """Remove what killed writers left in ``db_dir``: ``.trash``, temporary files of atomic writes, and kept-audio
    WAVs that no committed row names (``referenced``: the rows' relative paths). Folders left empty by this go too.

    Only files this module names are touched (``<digits>-<8 hex>.wav`` and atomic-write temporaries), so a user's
    own recordings in the folder (e.g. an ``audio_db/<name>/*.wav`` tree to import) stay; empty folders go when
    this removed something from them or their name has the form of :func:`folder_name`. Returns counts of what
    was removed. Call it only while holding the database's write lock.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> write_wav(root / "a-1" / "1-0000abcd.wav", np.zeros(8), 16000)
    >>> write_wav(root / "a-1" / "2-0000abcd.wav", np.zeros(8), 16000)
    >>> (root / "a-1" / "mine.wav").write_bytes(b"")
    0
    >>> clean_leftovers(root, ["a-1/1-0000abcd.wav"])
    {'trash': 0, 'temporary': 0, 'orphan': 1}
    >>> sorted(p.name for p in (root / "a-1").iterdir())
    ['1-0000abcd.wav', 'mine.wav']
    """
    keep = set(referenced)
    counts = {"trash": 0, "temporary": 0, "orphan": 0}
    trash = db_dir / TRASH_DIR
    if trash.is_dir():
        counts["trash"] = sum(1 for _ in trash.iterdir())
        shutil.rmtree(trash, ignore_errors=True)
    try:
        entries = list(os.scandir(db_dir))
    except OSError:
        return counts
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue
        removed = False
        try:
            inner = list(os.scandir(entry.path))
        except OSError:
            continue
        for item in inner:
            if not item.is_file(follow_symlinks=False):
                continue
            if is_atomic_temp(item.name) and WAV_NAME.fullmatch(item.name[1:].split(".wav.")[0] + ".wav"):
                counts["temporary"] += _unlink(item.path)
                removed = True
            elif WAV_NAME.fullmatch(item.name) and f"{entry.name}/{item.name}" not in keep:
                counts["orphan"] += _unlink(item.path)
                removed = True
        if removed or _FOLDER_NAME.fullmatch(entry.name):  # a folder of ours, maybe made by a write killed early
            try:
                os.rmdir(entry.path)  # only when nothing else is in it
            except OSError:
                pass
    return counts


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


def make_folder(db_dir: Path, folder: str) -> Path:
    """``db_dir/folder`` created 0700 (when missing).

    >>> import tempfile
    >>> oct(make_folder(Path(tempfile.mkdtemp()), "a-1").stat().st_mode & 0o777)
    '0o700'
    """
    return private_mkdir(db_dir / folder)
