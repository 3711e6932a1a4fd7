"""Atomic file writes and standard JSON: the one implementation every module uses.

A file is written under a unique temporary name in its own folder, flushed and fsync'ed, then moved into place with
``os.replace``; a reader never sees a half-written file, and a crash leaves the old file (or none). The new file
gets the permissions the user's umask gives any new file (``tempfile.mkstemp`` would give 0600), unless it holds
private data: ``private=True`` (and :func:`private_mkdir` / :func:`create_private_file`) give 0600 files and 0700
folders whatever the umask, for the speaker and key databases and kept voice recordings.

JSON written by mvector is standard JSON: ``NaN`` and infinities become ``null`` (strict parsers reject
``Infinity``), numpy scalars and arrays become numbers and lists.

>>> import tempfile, os, json
>>> path = os.path.join(tempfile.mkdtemp(), "result.json")
>>> _ = atomic_write_json(path, {"eer": 0.1, "min_dcf_threshold": float("inf")})
>>> json.loads(open(path).read())
{'eer': 0.1, 'min_dcf_threshold': None}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import IO, Any, Iterator, Union

import numpy as np

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "dumps_json",
    "json_safe",
    "fsync_dir",
    "private_mkdir",
    "create_private_file",
    "PRIVATE_FILE_MODE",
    "PRIVATE_DIR_MODE",
    "is_atomic_temp",
]

#: Permissions of files and folders that hold private data (voice recordings, embeddings, key hashes).
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700

PathLike = Union[str, os.PathLike]


def fsync_dir(folder: PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# The temporary names atomic_open gives: ".<name>.<pid>.<8 hex>.tmp".
_TEMP_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def is_atomic_temp(name: str) -> bool:
    """Whether a file name is one :func:`atomic_open` uses while writing (left behind only by a killed writer).

    >>> is_atomic_temp(".3-ab12cd34.wav.4242.0f1e2d3c.tmp"), is_atomic_temp("notes.tmp")
    (True, False)
    """
    return _TEMP_NAME.fullmatch(name) is not None


def private_mkdir(folder: PathLike) -> Path:
    """Create ``folder`` (and missing parents) as 0700 whatever the umask; an existing folder is left as it is.

    >>> import tempfile, os, stat
    >>> path = private_mkdir(os.path.join(tempfile.mkdtemp(), "a", "b"))
    >>> oct(stat.S_IMODE(path.stat().st_mode)), oct(stat.S_IMODE(path.parent.stat().st_mode))
    ('0o700', '0o700')
    """
    target = Path(folder)
    missing = []
    probe = target
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by another process meanwhile: its permissions are its maker's
        os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have taken bits away; never adds any
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    return target


def create_private_file(path: PathLike) -> bool:
    """Create an empty 0600 file at ``path`` (whatever the umask) unless it exists; True when it was created here.

    >>> import tempfile, os, stat
    >>> p = os.path.join(tempfile.mkdtemp(), "x.sqlite")
    >>> create_private_file(p), create_private_file(p), oct(stat.S_IMODE(os.stat(p).st_mode))
    (True, False, '0o600')
    """
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def atomic_open(
    path: PathLike, mode: str = "w", encoding: str | None = "utf-8", private: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``, on error it is removed.

    ``private=True`` creates the file 0600 (and missing folders 0700) whatever the umask.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> with atomic_open(p) as fh:
    ...     _ = fh.write("a\\t0\\n")
    >>> open(p).read()
    'a\\t0\\n'
    """
    target = Path(path)
    if private:
        private_mkdir(target.parent)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    binary = "b" in mode
    if private:
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        os.fchmod(fd, PRIVATE_FILE_MODE)
        fh = os.fdopen(fd, mode.replace("x", "w"), encoding=None if binary else encoding)
    else:
        # "x": create exclusively with the default permissions (0666 & ~umask).
        fh = open(tmp, mode.replace("w", "x"), encoding=None if binary else encoding)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and numpy types as Python ones, ready for standard JSON.

    >>> json_safe({"a": float("nan"), "b": [np.float32(0.5), np.int64(2)], "c": np.array([1.0, np.inf])})
    {'a': None, 'b': [0.5, 2], 'c': [1.0, None]}
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_json(value: Any, indent: int | None = None) -> str:
    """Standard JSON text of ``value`` (see :func:`json_safe`).

    >>> dumps_json({"x": float("-inf")})
    '{"x": null}'
    """
    return json.dumps(json_safe(value), indent=indent, allow_nan=False, ensure_ascii=False)


def atomic_write_json(path: PathLike, value: Any, indent: int = 2) -> Path:
    """Write ``value`` as standard, indented JSON to ``path`` atomically; returns the path."""
    return atomic_write_text(path, dumps_json(value, indent=indent) + "\n")
