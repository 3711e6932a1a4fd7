"""RTTM files (``SPEAKER <file> <channel> <start> <duration> <NA> <NA> <name> <NA> <NA>``) and speaker turns.

Reading skips other line types (``SPKR-INFO``, ...) and ``;;`` comments; writing is atomic.

>>> print(format_rttm("meeting", [Segment(0.0, 1.5, "Ann Lee")]), end="")
SPEAKER meeting 1 0.000 1.500 <NA> <NA> Ann_Lee <NA> <NA>
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Union

from mvector.errors import ConfigError, DataListError
from mvector.utils.files import atomic_write_text

__all__ = ["Segment", "read_rttm", "format_rttm", "write_rttm"]

PathLike = Union[str, os.PathLike]


class Segment(NamedTuple):
    """One speaker turn: ``start`` and ``end`` in seconds, and the speaker's label.

    >>> Segment(1.0, 2.5, "alice").end
    2.5
    """

    start: float
    end: float
    speaker: str


def check_segments(segments: Iterable[Segment | tuple], what: str) -> list[Segment]:
    """``(start, end, speaker)`` items as :class:`Segment`s; a ``ConfigError`` naming ``what`` and the index
    otherwise.

    >>> check_segments([(0, 1.5, "a")], "reference")
    [Segment(start=0.0, end=1.5, speaker='a')]
    """
    out = []
    for index, seg in enumerate(segments):
        try:
            start, end, speaker = seg
            start, end = float(start), float(end)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{what} segment {index}: expected (start, end, speaker), got {seg!r}") from err
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ConfigError(f"{what} segment {index}: needs finite start <= end, got ({start}, {end})")
        if end > start:
            out.append(Segment(start, end, str(speaker)))
    return out


def read_rttm(path: PathLike) -> dict[str, list[Segment]]:
    """Read the ``SPEAKER`` lines of an RTTM file: ``{file_id: [Segment, ...]}`` sorted by start time.

    A malformed line raises :class:`~mvector.errors.DataListError` naming the file and line; zero-length turns
    are dropped.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.rttm")
    >>> _ = open(p, "w").write("SPEAKER rec 1 0.50 1.25 <NA> <NA> bob <NA> <NA>\\n")
    >>> read_rttm(p)
    {'rec': [Segment(start=0.5, end=1.75, speaker='bob')]}
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DataListError(f"{path}: RTTM file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataListError(f"{path}: cannot read RTTM file ({err})") from err
    out: dict[str, list[Segment]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise DataListError(f"{path}:{number}: an RTTM SPEAKER line needs at least 8 fields, got {len(fields)}")
        try:
            start, dur = float(fields[3]), float(fields[4])
        except ValueError as err:
            raise DataListError(
                f"{path}:{number}: start and duration must be numbers, got {fields[3]!r} {fields[4]!r}"
            ) from err
        if not (math.isfinite(start) and math.isfinite(dur)) or start < 0 or dur < 0:
            raise DataListError(f"{path}:{number}: needs finite start >= 0 and duration >= 0, got {start} {dur}")
        if dur > 0:
            out.setdefault(fields[1], []).append(Segment(start, start + dur, fields[7]))
    for segments in out.values():
        segments.sort()
    return out


def _rttm_token(text: str, what: str) -> str:
    token = "_".join(str(text).split())
    if not token:
        raise ConfigError(f"RTTM {what} must not be empty")
    return token


def format_rttm(file_id: str, segments: Iterable[Segment | tuple], channel: int = 1) -> str:
    """RTTM text for one recording (white space inside names becomes ``_``; times with millisecond precision).

    >>> print(format_rttm("meeting", [Segment(0.0, 1.5, "Ann Lee")]), end="")
    SPEAKER meeting 1 0.000 1.500 <NA> <NA> Ann_Lee <NA> <NA>
    """
    file_token = _rttm_token(file_id, "file id")
    lines = []
    for seg in check_segments(segments, "RTTM"):
        lines.append(
            f"SPEAKER {file_token} {int(channel)} {seg.start:.3f} {seg.end - seg.start:.3f} <NA> <NA> "
            f"{_rttm_token(seg.speaker, 'speaker name')} <NA> <NA>\n"
        )
    return "".join(lines)


def write_rttm(path: PathLike, file_id: str, segments: Iterable[Segment | tuple], channel: int = 1) -> Path:
    """Write one recording's turns as an RTTM file, atomically (temporary file, fsync, rename); return the path.

    >>> import tempfile, os
    >>> p = write_rttm(os.path.join(tempfile.mkdtemp(), "x.rttm"), "x", [(1.0, 2.0, "a")])
    >>> read_rttm(p)["x"]
    [Segment(start=1.0, end=2.0, speaker='a')]
    """
    return atomic_write_text(path, format_rttm(file_id, segments, channel))
