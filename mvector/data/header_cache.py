"""The training list read once: its checked utterances and their header durations, cached beside the list.

Reading a million-line list means parsing and checking every line, testing that every file exists and reading
every file's header. :func:`indexed_utterances` does that once and writes the result (an
:class:`~mvector.data.table.UtteranceTable`) to ``.<list name>.mvector-index.npz`` beside the list (for a Kaldi
folder: ``.mvector-index.npz`` inside it), atomically. The cache is used only while the list is unchanged: its
absolute path, size, modification time and SHA-256 (of ``wav.scp`` and ``utt2spk`` for a Kaldi folder) must all
match. Where the list's folder is read-only the cache goes to ``$MVECTOR_LIST_CACHE`` (default
``~/.cache/mvector/lists``); where nothing is writable the list is simply read each time (with a warning).
``MVECTOR_LIST_CACHE=off`` turns the cache off. The audio files themselves are not watched: a file changed in
place keeps its cached duration until the list changes (a file that fails to load is skipped in training).

>>> import tempfile, pathlib, numpy as np
>>> from mvector.audio import save_wav
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> save_wav(d / "a.wav", np.zeros(8000, np.float32), 16000)
>>> _ = (d / "train.txt").write_text("a.wav\\t0\\n")
>>> table = indexed_utterances(d / "train.txt")
>>> table.durations.tolist(), sorted(p.name for p in d.iterdir())
([0.5], ['.train.txt.mvector-index.npz', 'a.wav', 'train.txt'])
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Union

import numpy as np

from mvector.data.dataset import header_durations
from mvector.data.lists import load_utterances
from mvector.data.table import UtteranceTable
from mvector.utils.files import atomic_write_bytes

__all__ = ["CACHE_ENV", "cache_paths", "list_fingerprint", "read_index", "write_index", "indexed_utterances"]

PathLike = Union[str, os.PathLike]

#: Folder for list caches that cannot go beside their list; ``off`` turns the cache off.
CACHE_ENV = "MVECTOR_LIST_CACHE"
#: Bumped when the file layout or what is checked changes: older caches are then rebuilt.
FORMAT_VERSION = 1
_ARRAYS = ("blob", "starts", "ends", "labels", "lines")


def _sources(list_path: Path) -> list[Path]:
    return [list_path / "wav.scp", list_path / "utt2spk"] if list_path.is_dir() else [list_path]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_fingerprint(list_path: PathLike) -> dict[str, Any]:
    """What the cache must match: the format version, the absolute list path, and each source file's size,
    modification time and SHA-256.

    >>> import tempfile, pathlib
    >>> lst = pathlib.Path(tempfile.mkdtemp()) / "l.txt"; _ = lst.write_text("a.wav\\t0\\n")
    >>> sorted(list_fingerprint(lst)["files"][0])
    ['mtime_ns', 'name', 'sha256', 'size']
    """
    path = Path(list_path).expanduser().absolute()
    files = []
    for source in _sources(path):
        stat = source.stat()
        files.append(
            {"name": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(source)}
        )
    return {"version": FORMAT_VERSION, "list": str(path), "files": files}


def cache_paths(list_path: PathLike) -> list[Path]:
    """Where the cache of ``list_path`` may be, in the order tried: beside the list, then the user cache folder
    (empty with ``MVECTOR_LIST_CACHE=off``)."""
    path = Path(list_path).expanduser().absolute()
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() == "off":
        return []
    beside = path / ".mvector-index.npz" if path.is_dir() else path.with_name(f".{path.name}.mvector-index.npz")
    user = Path(setting).expanduser() if setting else Path.home() / ".cache" / "mvector" / "lists"
    key = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return [beside, user / f"{path.name}.{key}.npz"]


def read_index(list_path: PathLike, fingerprint: dict[str, Any] | None = None) -> UtteranceTable | None:
    """The cached table of ``list_path`` when a cache matches the list as it is now, else None (an unreadable or
    damaged cache counts as none)."""
    fingerprint = fingerprint or list_fingerprint(list_path)
    for candidate in cache_paths(list_path):
        try:
            with np.load(candidate, allow_pickle=False) as data:
                stored = json.loads(bytes(data["fingerprint"]).decode("utf-8"))
                if stored != fingerprint:
                    continue
                arrays = [data[name] for name in _ARRAYS]
                durations = data["durations"] if "durations" in data.files else None
            return UtteranceTable(*arrays, durations=durations)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError):
            continue
    return None


def write_index(list_path: PathLike, table: UtteranceTable, fingerprint: dict[str, Any] | None = None) -> Path | None:
    """Write the cache of ``list_path`` atomically to the first writable place; returns it, or None (with a
    warning) when no place is writable."""
    fingerprint = fingerprint or list_fingerprint(list_path)
    arrays = {name: getattr(table, name) for name in _ARRAYS}
    if table.durations is not None:
        arrays["durations"] = table.durations
    buffer = io.BytesIO()
    np.savez(buffer, fingerprint=np.frombuffer(json.dumps(fingerprint).encode("utf-8"), dtype=np.uint8), **arrays)
    places = cache_paths(list_path)
    errors = []
    for candidate in places:
        try:
            return atomic_write_bytes(candidate, buffer.getbuffer())
        except OSError as err:
            errors.append(f"{candidate.parent}: {err.strerror or err}")
    if places:
        warnings.warn(
            f"{list_path}: cannot cache the checked list ({'; '.join(errors)}); it is read again on every start "
            f"(set {CACHE_ENV} to a writable folder)",
            stacklevel=2,
        )
    return None


def indexed_utterances(
    list_path: PathLike, num_speakers: int | None = None, with_durations: bool = True
) -> UtteranceTable:
    """The checked utterances of a list file or Kaldi folder (:func:`~mvector.data.lists.load_utterances`, files
    must exist) with their header durations (``with_durations``), from the cache when it matches the list, else
    read, checked, scanned and cached. A cached table was checked without ``num_speakers``; the caller checks the
    labels against it (:func:`~mvector.data.lists.check_num_speakers`)."""
    try:
        fingerprint = list_fingerprint(list_path) if cache_paths(list_path) else None
    except OSError:  # a missing or unreadable list: load_utterances names the problem
        fingerprint = None
    table = read_index(list_path, fingerprint) if fingerprint else None
    if table is not None and (table.durations is not None or not with_durations):
        return table
    if table is None:
        table = UtteranceTable.from_utterances(load_utterances(list_path, num_speakers, check_files=True))
    if with_durations:
        durations = header_durations(table.paths())
        table.durations = np.array([np.nan if d is None else d for d in durations], dtype=np.float64)
    if fingerprint:
        write_index(list_path, table, fingerprint)
    return table
