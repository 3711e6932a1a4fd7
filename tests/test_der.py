"""Diarization error rate: hand-worked cases, and agreement with a brute-force frame counter on random cases."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from mvector.data.rttm import Segment, format_rttm, read_rttm, write_rttm
from mvector.errors import ConfigError, DataListError
from mvector.evaluation.der import DERResult, diarization_error, diarization_error_rate


# ---------------------------------------------------------------- an independent implementation
def brute_force(ref, hyp, collar=0.0, skip_overlap=False, step=0.001):
    """Count 1 ms frames and try every one-to-one speaker mapping; returns (total, missed, fa, best errors)."""
    times = [t for s in ref + hyp for t in s[:2]]
    lo, hi = min(times), max(times)
    n = int(round((hi - lo) / step))
    centres = lo + (np.arange(n) + 0.5) * step

    def active(segments):
        names = sorted({s[2] for s in segments})
        act = np.zeros((len(names), n), dtype=bool)
        for s, e, name in segments:
            act[names.index(name)] |= (centres > s) & (centres < e)
        return names, act

    ref_names, r = active(ref)
    hyp_names, h = active(hyp)
    scored = np.ones(n, dtype=bool)
    for s, e, _ in ref:
        for b in (s, e):
            scored &= ~((centres > b - collar) & (centres < b + collar))
    if skip_overlap:
        scored &= r.sum(axis=0) < 2
    nr, nh = r.sum(axis=0) * scored, h.sum(axis=0) * scored
    total = nr.sum() * step
    missed = np.maximum(0, nr - nh).sum() * step
    fa = np.maximum(0, nh - nr).sum() * step
    best = None
    # every injective map of hypothesis speakers into reference speakers or "unmapped" (None)
    slots = list(range(len(ref_names))) + [None] * len(hyp_names)
    for perm in set(itertools.permutations(slots, len(hyp_names))):
        correct = np.zeros(n)
        for j, i in enumerate(perm):
            if i is not None:
                correct += r[i] & h[j]
        errors = (np.maximum(nr, nh) - correct * scored).sum() * step
        best = errors if best is None else min(best, errors)
    return total, missed, fa, best


def random_case(rng, n_ref, n_hyp, grid=0.01, length=6.0):
    def segments(k, prefix):
        out = []
        for i in range(k):
            for _ in range(int(rng.integers(1, 4))):
                s = round(float(rng.uniform(0, length - 0.5)) / grid) * grid
                e = s + round(float(rng.uniform(0.1, 2.0)) / grid) * grid
                out.append(Segment(round(s, 2), round(e, 2), f"{prefix}{i}"))
        return out

    return segments(n_ref, "r"), segments(n_hyp, "h")


@pytest.mark.parametrize("collar,skip_overlap", [(0.0, False), (0.25, False), (0.0, True), (0.1, True)])
def test_matches_brute_force_on_random_cases(collar, skip_overlap):
    rng = np.random.default_rng(int(collar * 100) + 7 * skip_overlap)
    for _ in range(12):
        ref, hyp = random_case(rng, int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        got = diarization_error(ref, hyp, collar=collar, skip_overlap=skip_overlap)
        total, missed, fa, errors = brute_force(ref, hyp, collar, skip_overlap)
        assert got.total == pytest.approx(total, abs=2e-3)
        assert got.missed == pytest.approx(missed, abs=2e-3)
        assert got.false_alarm == pytest.approx(fa, abs=2e-3)
        assert got.missed + got.false_alarm + got.confusion == pytest.approx(errors, abs=2e-3)


def test_perfect_hypothesis_with_other_names_is_zero():
    ref = [Segment(0, 3, "A"), Segment(3.5, 6, "B"), Segment(6, 8, "A")]
    hyp = [Segment(0, 3, "x"), Segment(3.5, 6, "y"), Segment(6, 8, "x")]
    r = diarization_error(ref, hyp)
    assert (r.der, r.total, r.mapping) == (0.0, 7.5, {"x": "A", "y": "B"})


def test_hand_worked_missed_false_alarm_confusion():
    # ref:  A [0,10)  B [10,20)            hyp: s1 [0,12)  s2 [12,18)  s3 [25,27)
    # missed 18-20 = 2; false alarm 25-27 = 2; confusion 10-12 (B under s1) = 2; total 20
    ref = [Segment(0, 10, "A"), Segment(10, 20, "B")]
    hyp = [Segment(0, 12, "s1"), Segment(12, 18, "s2"), Segment(25, 27, "s3")]
    r = diarization_error(ref, hyp)
    assert (r.missed, r.false_alarm, r.confusion, r.total) == (2.0, 2.0, 2.0, 20.0)
    assert r.der == pytest.approx(0.3)
    assert r.mapping == {"s1": "A", "s2": "B"}


def test_optimal_mapping_is_not_greedy():
    # h1 talks with A for 4 s and with B for 3 s, h2 with A for 3.5 s: greedy (h1 -> A) matches 4 s, the
    # optimum h1 -> B, h2 -> A matches 6.5 s.
    ref2 = [Segment(0, 4, "A"), Segment(4, 7, "B")]
    hyp2 = [Segment(0, 4, "h1"), Segment(4, 7, "h1"), Segment(0, 3.5, "h2")]
    r2 = diarization_error(ref2, hyp2)
    assert r2.mapping == {"h1": "B", "h2": "A"}
    assert r2.false_alarm == pytest.approx(3.5)
    assert r2.confusion == pytest.approx(7.0 - 6.5)


def test_collar_and_skip_overlap_by_hand():
    ref = [Segment(0, 4, "A"), Segment(3, 6, "B")]
    hyp = [Segment(0, 3.5, "x"), Segment(3.5, 6, "y")]
    # no collar: [0,3) ok; [3,3.5) A ok, B missed; [3.5,4) B ok (y->B), A missed; [4,6) ok  -> missed 1 of 7
    assert diarization_error(ref, hyp).der == pytest.approx(1 / 7)
    # skip_overlap removes [3,4): everything left is right
    assert diarization_error(ref, hyp, skip_overlap=True).der == 0.0
    # collar 0.5 removes [2.5,4.5) and the ends: scored [0.5,2.5) A and [4.5,5.5) B -> perfect, total 3
    r = diarization_error(ref, hyp, collar=0.5)
    assert (r.total, r.der) == (3.0, 0.0)


def test_empty_sides():
    ref = [Segment(0, 5, "A")]
    assert diarization_error(ref, []).der == 1.0
    r = diarization_error([], [Segment(0, 2, "x")])
    assert (r.false_alarm, r.der) == (2.0, float("inf"))
    assert diarization_error([], []).der == 0.0


def test_uem_limits_scoring():
    r = diarization_error([Segment(0, 10, "A")], [Segment(0, 5, "x")], uem=[(0, 6)])
    assert (r.total, r.missed) == (6.0, 1.0)


def test_several_files_sum_and_map_separately():
    ref = {"a": [Segment(0, 4, "A")], "b": [Segment(0, 6, "A")]}
    hyp = {"a": [Segment(0, 4, "s")], "b": [Segment(0, 3, "s"), Segment(3, 6, "t")]}
    r = diarization_error_rate(ref, hyp)
    assert r.total == 10.0 and r.confusion == 3.0 and r.der == pytest.approx(0.3)
    assert r.per_file["a"].der == 0.0 and r.per_file["a"].mapping == {"s": "A"}


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="collar"):
        diarization_error([], [], collar=-1)
    with pytest.raises(ConfigError, match="segment 0"):
        diarization_error([Segment(2, 1, "A")], [])


def test_rttm_round_trip_and_parsing(tmp_path):
    path = write_rttm(tmp_path / "out" / "rec.rttm", "rec", [Segment(0.5, 1.75, "Ann Lee"), Segment(2, 3, "bob")])
    assert path.read_text().splitlines()[0] == "SPEAKER rec 1 0.500 1.250 <NA> <NA> Ann_Lee <NA> <NA>"
    assert read_rttm(path) == {"rec": [Segment(0.5, 1.75, "Ann_Lee"), Segment(2.0, 3.0, "bob")]}
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())
    mixed = tmp_path / "m.rttm"
    mixed.write_text(
        ";; comment\nSPKR-INFO f 1 <NA> <NA> <NA> unknown A <NA> <NA>\n"
        "SPEAKER f 1 3.0 1.0 <NA> <NA> A <NA> <NA>\nSPEAKER g 1 0 2 <NA> <NA> B <NA> <NA>\n"
        "SPEAKER f 1 1.0 0.0 <NA> <NA> A <NA> <NA>\n\n"
    )
    assert read_rttm(mixed) == {"f": [Segment(3.0, 4.0, "A")], "g": [Segment(0.0, 2.0, "B")]}
    bad = tmp_path / "bad.rttm"
    bad.write_text("SPEAKER f 1 0 1 <NA> <NA> A <NA> <NA>\nSPEAKER f 1 x 1 <NA> <NA> A <NA> <NA>\n")
    with pytest.raises(DataListError, match=r"bad.rttm:2: start and duration must be numbers"):
        read_rttm(bad)
    bad.write_text("SPEAKER f 1 -1 1 <NA> <NA> A <NA> <NA>\n")
    with pytest.raises(DataListError, match=r":1: needs finite start >= 0"):
        read_rttm(bad)
    with pytest.raises(DataListError, match="not found"):
        read_rttm(tmp_path / "missing.rttm")
    assert format_rttm("x", []) == ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_result_dict():
    d = DERResult(total=10.0, missed=1.0, false_alarm=2.0, confusion=3.0).as_dict()
    assert d["der"] == pytest.approx(0.6) and d["confusion_rate"] == pytest.approx(0.3)
