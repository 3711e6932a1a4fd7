"""Diarization error rate (DER) and RTTM files.

DER = (missed speech + false alarm + speaker confusion) / total reference speech, all in seconds, as NIST's
md-eval scores it:

* time is cut into pieces at every reference, hypothesis and scoring-region boundary; in a piece of length ``d``
  with ``R`` reference and ``H`` hypothesis speakers talking, missed speech is ``d * max(0, R - H)``, false alarm
  ``d * max(0, H - R)`` and confusion ``d * (min(R, H) - C)``, where ``C`` counts the reference speakers whose
  mapped hypothesis speaker also talks there;
* the mapping is one-to-one between reference and hypothesis speakers and maximises the time they talk together,
  found with the Hungarian method (``scipy.optimize.linear_sum_assignment``), separately for every file;
* ``collar`` seconds either side of every reference segment boundary are not scored (md-eval's ``-c``; note that
  pyannote.metrics' ``collar`` is the *total* width, so its 0.5 is this module's 0.25);
* ``skip_overlap`` leaves out the time where two or more reference speakers talk at once;
* ``uem`` limits scoring to given regions (default: everything).

RTTM lines are ``SPEAKER <file> <channel> <start> <duration> <NA> <NA> <name> <NA> <NA>``; other line types
(``SPKR-INFO``, ...) and ``;;`` comments are skipped when reading.

>>> ref = [Segment(0.0, 10.0, "A"), Segment(10.0, 20.0, "B")]
>>> hyp = [Segment(0.0, 12.0, "s1"), Segment(12.0, 18.0, "s2")]
>>> r = diarization_error(ref, hyp)
>>> r.missed, r.false_alarm, r.confusion, r.total, r.der
(2.0, 0.0, 2.0, 20.0, 0.2)
>>> r.mapping
{'s1': 'A', 's2': 'B'}
>>> round(diarization_error(ref, hyp, collar=1.0).der, 4)   # scored: [1,9] and [11,19]; errors 1 + 1
0.125
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import numpy as np

from mvector.data.rttm import Segment, check_segments
from mvector.errors import ConfigError

__all__ = [
    "DERResult",
    "diarization_error",
    "diarization_error_rate",
]

PathLike = Union[str, os.PathLike]


@dataclass
class DERResult:
    """Seconds of scored reference speech (``total``), missed speech, false alarm and confusion; DER and mapping.

    ``mapping`` maps hypothesis speakers to reference speakers (one file), ``per_file`` holds each file's result
    when several were scored.

    >>> DERResult(total=10.0, missed=1.0, false_alarm=0.5, confusion=1.0).der
    0.25
    """

    total: float = 0.0
    missed: float = 0.0
    false_alarm: float = 0.0
    confusion: float = 0.0
    mapping: dict[str, str] = field(default_factory=dict)
    per_file: dict[str, DERResult] = field(default_factory=dict)

    @property
    def der(self) -> float:
        """(missed + false alarm + confusion) / total; 0 when nothing is wrong, inf for errors over no speech."""
        errors = self.missed + self.false_alarm + self.confusion
        if self.total > 0:
            return errors / self.total
        return 0.0 if errors <= 1e-12 else math.inf

    def as_dict(self) -> dict[str, float]:
        """The figures as a flat dict (seconds and rates), e.g. for JSON.

        >>> sorted(DERResult(total=4.0, missed=1.0).as_dict())[:3]
        ['confusion', 'confusion_rate', 'der']
        """
        out = {
            "der": self.der,
            "total": self.total,
            "missed": self.missed,
            "false_alarm": self.false_alarm,
            "confusion": self.confusion,
        }
        for key in ("missed", "false_alarm", "confusion"):
            out[f"{key}_rate"] = getattr(self, key) / self.total if self.total > 0 else 0.0
        return out


def _subtract(regions: list[tuple[float, float]], cuts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Regions minus the union of cuts (both lists of (start, end))."""
    if not cuts:
        return regions
    cuts = sorted(cuts)
    merged = [list(cuts[0])]
    for s, e in cuts[1:]:
        if s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out = []
    for start, end in regions:
        pos = start
        for s, e in merged:
            if e <= pos or s >= end:
                continue
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
        if pos < end:
            out.append((pos, end))
    return out


def _activity(segments: list[Segment], bounds: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Speakers and a boolean [speakers, pieces] matrix: who talks in each piece between ``bounds``."""
    speakers = sorted({s.speaker for s in segments})
    index = {name: i for i, name in enumerate(speakers)}
    delta = np.zeros((len(speakers), len(bounds)), dtype=np.int64)
    for seg in segments:
        i = index[seg.speaker]
        delta[i, np.searchsorted(bounds, seg.start)] += 1
        delta[i, np.searchsorted(bounds, seg.end)] -= 1
    return speakers, (np.cumsum(delta, axis=1)[:, :-1] > 0)


def diarization_error(
    reference: Sequence[Segment | tuple],
    hypothesis: Sequence[Segment | tuple],
    collar: float = 0.0,
    skip_overlap: bool = False,
    uem: Sequence[tuple[float, float]] | None = None,
) -> DERResult:
    """DER of one recording (see the module docs for the definition, the collar and ``skip_overlap``).

    ``reference`` and ``hypothesis`` are sequences of :class:`Segment` (or ``(start, end, speaker)`` tuples).

    >>> ref = [Segment(0, 4, "A"), Segment(3, 6, "B")]            # 1 s of overlap
    >>> r = diarization_error(ref, [Segment(0, 6, "x")])
    >>> r.total, r.missed, r.confusion, round(r.der, 4)
    (7.0, 1.0, 2.0, 0.4286)
    >>> diarization_error(ref, [Segment(0, 6, "x")], skip_overlap=True).der
    0.4
    """
    if collar < 0 or not math.isfinite(collar):
        raise ConfigError(f"collar must be a finite number >= 0 seconds, got {collar!r}")
    ref = check_segments(reference, "reference")
    hyp = check_segments(hypothesis, "hypothesis")
    if uem is None:
        times = [t for s in ref + hyp for t in (s.start, s.end)]
        regions = [(min(times), max(times))] if times else []
    else:
        regions = [(float(s), float(e)) for s, e in uem if float(e) > float(s)]
    cuts: list[tuple[float, float]] = []
    if collar > 0:
        for seg in ref:
            cuts += [(seg.start - collar, seg.start + collar), (seg.end - collar, seg.end + collar)]
    bounds_list = [t for s in ref + hyp for t in (s.start, s.end)] + [t for r in regions for t in r]
    if skip_overlap and ref:
        pre_bounds = np.unique([t for s in ref for t in (s.start, s.end)])
        _, ref_act = _activity(ref, pre_bounds)
        crowded = np.flatnonzero(ref_act.sum(axis=0) >= 2)
        cuts += [(float(pre_bounds[i]), float(pre_bounds[i + 1])) for i in crowded]
    scored = _subtract(sorted(regions), cuts)
    bounds_list += [t for r in scored for t in r]
    if not bounds_list:
        return DERResult()
    bounds = np.unique(np.asarray(bounds_list, dtype=np.float64))
    if len(bounds) < 2:
        return DERResult()
    mids = (bounds[:-1] + bounds[1:]) / 2.0
    weight = np.zeros(len(mids))
    for s, e in scored:
        weight[(mids > s) & (mids < e)] = 1.0
    dur = np.diff(bounds) * weight
    ref_speakers, ref_act = _activity(ref, bounds)
    hyp_speakers, hyp_act = _activity(hyp, bounds)
    n_ref = ref_act.sum(axis=0) if ref_speakers else np.zeros(len(dur))
    n_hyp = hyp_act.sum(axis=0) if hyp_speakers else np.zeros(len(dur))
    result = DERResult(
        total=float(np.dot(dur, n_ref)),
        missed=float(np.dot(dur, np.maximum(0, n_ref - n_hyp))),
        false_alarm=float(np.dot(dur, np.maximum(0, n_hyp - n_ref))),
    )
    matched = 0.0
    if ref_speakers and hyp_speakers:
        from scipy.optimize import linear_sum_assignment

        together = (ref_act * dur) @ hyp_act.T.astype(np.float64)  # [ref, hyp] seconds talking together
        rows, cols = linear_sum_assignment(together, maximize=True)
        matched = float(together[rows, cols].sum())
        result.mapping = {hyp_speakers[c]: ref_speakers[r] for r, c in zip(rows, cols) if together[r, c] > 0}
    result.confusion = max(0.0, float(np.dot(dur, np.minimum(n_ref, n_hyp))) - matched)
    return result


def diarization_error_rate(
    reference: Mapping[str, Sequence[Segment | tuple]],
    hypothesis: Mapping[str, Sequence[Segment | tuple]],
    collar: float = 0.0,
    skip_overlap: bool = False,
    uem: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> DERResult:
    """DER over several recordings: ``{file_id: segments}`` for both sides (e.g. from :func:`read_rttm`).

    Times are summed over the files (a file missing on one side counts as empty there); each file gets its own
    speaker mapping; ``per_file`` holds every file's result.

    >>> r = diarization_error_rate({"f1": [(0, 5, "A")], "f2": [(0, 5, "B")]}, {"f1": [(0, 5, "x")]})
    >>> r.der, r.per_file["f2"].missed
    (0.5, 5.0)
    """
    total = DERResult()
    for file_id in sorted(set(reference) | set(hypothesis)):
        one = diarization_error(
            reference.get(file_id, []),
            hypothesis.get(file_id, []),
            collar=collar,
            skip_overlap=skip_overlap,
            uem=None if uem is None else uem.get(file_id, []),
        )
        total.per_file[file_id] = one
        total.total += one.total
        total.missed += one.missed
        total.false_alarm += one.false_alarm
        total.confusion += one.confusion
    return total
