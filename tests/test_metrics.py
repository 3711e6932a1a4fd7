"""Exact EER / minDCF / DET points, and exact all-pairs metrics checked against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from mvector.evaluation.metrics import (
    all_pairs_metrics,
    compute_eer,
    compute_min_dcf,
    det_points,
    evaluate_scores,
    rates_at_threshold,
)


# ----------------------------------------------------------------------------- independent reference (sklearn)
def ref_eer(scores, labels):
    """EER where the ROC polyline crosses FNR = FPR, from scikit-learn's ROC points (thresholds descending)."""
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    d = fnr - fpr  # decreasing along the curve (threshold descending)
    i = int(np.flatnonzero(d < 0)[0])  # first point (from reject-all) where FNR < FPR
    # between point i-1 (FNR >= FPR) and point i (FNR < FPR)
    t = d[i - 1] / (d[i - 1] - d[i])
    eer = fnr[i - 1] + t * (fnr[i] - fnr[i - 1])
    closer = i - 1 if abs(d[i - 1]) < abs(d[i]) else i
    return eer, thr[closer]


def ref_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    cost = (c_miss * (1 - tpr) * p + c_fa * fpr * (1 - p)) / min(c_miss * p, c_fa * (1 - p))
    best = cost.min()
    return best, thr[np.flatnonzero(cost == best)[-1]]  # lowest threshold reaching the minimum


def random_trials(rng, n, tied=False):
    y = (rng.random(n) < 0.3).astype(int)
    y[0], y[1] = 1, 0
    s = rng.standard_normal(n) + 1.2 * y
    if tied:
        s = np.round(s * 2) / 2  # heavy ties, across classes too
    return s, y


# ----------------------------------------------------------------------------- hand examples
def test_perfect_separation():
    s, y = [0.1, 0.2, 0.3, 0.9, 0.95], [0, 0, 1, 1, 1]
    assert compute_eer(s, y) == (0.0, 0.3)
    assert compute_min_dcf(s, y) == (0.0, 0.3)
    assert rates_at_threshold(s, y, 0.3) == (1.0, 0.0)


def test_fully_overlapped_and_reversed():
    assert compute_eer([0.5] * 6, [1, 0, 1, 0, 1, 0]) == (0.5, 0.5)
    # every target below every non-target: the worst possible system
    assert compute_eer([0.0, 0.1, 0.8, 0.9], [1, 1, 0, 0])[0] == 1.0
    # minDCF of a useless system is 1 (accept-all or reject-all), never more
    assert compute_min_dcf([0.5] * 6, [1, 0, 1, 0, 1, 0]) == (1.0, math.inf)
    assert compute_min_dcf([0.5] * 6, [1, 0, 1, 0, 1, 0], p_target=0.99)[0] == pytest.approx(1.0)


def test_ties_are_grouped():
    # points: t>=0.2 (FNR 0, FPR 1), t>=0.5 (0, 1/2), t>=0.8 (1/2, 0): crossing halfway -> 0.25
    s, y = [0.5, 0.5, 0.8, 0.2], [1, 0, 1, 0]
    eer, thr = compute_eer(s, y)
    assert eer == pytest.approx(0.25)
    assert thr == 0.5  # |FNR-FPR| ties between 0.5 and 0.8: the lower threshold
    assert rates_at_threshold(s, y, thr) == (1.0, 0.5)
    # the order of tied trials must not matter
    assert compute_eer([0.5, 0.5, 0.8, 0.2], [0, 1, 1, 0]) == (eer, thr)


def test_eer_interpolation_by_hand():
    s = [0.9, 0.8, 0.65, 0.3, 0.7, 0.6, 0.2, 0.1]
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    fpr, fnr, thr = det_points(s, y)
    eer, t = compute_eer(s, y)
    # scan: at 0.6 FNR=1/4 FPR=2/4 (d<0); at 0.65 FNR=1/4 FPR=1/4 (d=0) -> EER exactly 1/4 at 0.65
    assert (eer, t) == (0.25, 0.65)
    assert fnr[list(thr).index(0.65)] == fpr[list(thr).index(0.65)] == 0.25


def test_min_dcf_normalisation_and_costs():
    s = [0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1]
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    # p=0.5, c_miss=c_fa=1: norm 0.5; t=0.7 (FNR 1/4, FPR 0) and t=0.4 (FNR 0, FPR 1/4) both cost 0.25:
    # the lower threshold is returned
    assert compute_min_dcf(s, y, p_target=0.5) == (pytest.approx(0.25), 0.4)
    # c_fa=3: false alarms are expensive; t=0.7 costs 0.5*0.25/min(0.5, 1.5) = 0.25, t=0.4 costs 0.75
    assert compute_min_dcf(s, y, p_target=0.5, c_fa=3) == (pytest.approx(0.25), 0.7)
    # c_miss=3: missing is expensive; t=0.4 gives FNR 0, FPR 1/4: 1*0.25*0.5 / min(1.5, 0.5) = 0.25
    # (t=0.7 would cost 3*0.25*0.5/0.5 = 0.75)
    dcf, thr = compute_min_dcf(s, y, p_target=0.5, c_miss=3, c_fa=1)
    assert (dcf, thr) == (pytest.approx(0.25), 0.4)
    # tiny prior: rejecting everything costs 1 exactly; nothing can beat the accept-at-0.7 point (FNR 1/4)
    dcf, thr = compute_min_dcf(s, y, p_target=0.001)
    assert dcf == pytest.approx(0.25) and thr == 0.7
    # a system with one non-target above all targets: at p=0.01 rejecting everything (cost 1) wins
    dcf, thr = compute_min_dcf([0.9, 0.5, 0.4, 0.1], [0, 1, 1, 0], p_target=0.01)
    assert dcf == 1.0 and thr == math.inf


# ----------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [False, True])
def test_matches_sklearn_reference(seed, tied):
    rng = np.random.default_rng(seed)
    s, y = random_trials(rng, int(rng.integers(20, 3000)), tied)
    eer, thr = compute_eer(s, y)
    r_eer, r_thr = ref_eer(s, y)
    assert eer == pytest.approx(r_eer, abs=1e-12)
    assert thr == r_thr
    for p in (0.01, 0.05, 0.3):
        dcf, dthr = compute_min_dcf(s, y, p_target=p)
        r_dcf, r_dthr = ref_min_dcf(s, y, p)
        assert dcf == pytest.approx(r_dcf, abs=1e-12)
        assert dthr == r_dthr
    fpr, fnr, t = det_points(s, y)
    rf, rt, rthr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr[::-1], rf, atol=1e-15)
    np.testing.assert_allclose(fnr[::-1], 1 - rt, atol=1e-15)
    np.testing.assert_array_equal(t[::-1], rthr)


@pytest.mark.parametrize("seed", range(4))
def test_threshold_semantics(seed):
    rng = np.random.default_rng(100 + seed)
    s, y = random_trials(rng, 500, tied=seed % 2 == 1)
    m = evaluate_scores(s, y)
    tpr, fpr = rates_at_threshold(s, y, m["threshold"])
    assert (tpr, fpr) == (m["tpr"], m["fpr"])
    # the threshold is a bracketing operating point: its FNR/FPR straddle or touch the EER
    assert min(1 - tpr, fpr) <= m["eer"] + 1e-12 <= max(1 - tpr, fpr) + 2e-12
    # moving the threshold down a notch accepts more: TPR and FPR never fall
    t2, f2 = rates_at_threshold(s, y, np.nextafter(m["threshold"], -np.inf))
    assert t2 >= tpr and f2 >= fpr
    assert m["min_dcf"] == compute_min_dcf(s, y, 0.01)[0]
    assert m["min_dcf_0.05"] == compute_min_dcf(s, y, 0.05)[0]
    assert m["num_trials"] == len(s) and m["num_targets"] == int(y.sum())


def test_det_points_shape_and_ends():
    fpr, fnr, thr = det_points([0.3, 0.3, 0.1, 0.7], [1, 0, 0, 1])
    assert thr.tolist() == [0.1, 0.3, 0.7, math.inf]
    assert (fpr[0], fnr[0], fpr[-1], fnr[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert np.all(np.diff(fpr) <= 0) and np.all(np.diff(fnr) >= 0)


# ----------------------------------------------------------------------------- input handling
def test_accepts_lists_arrays_tensors():
    rng = np.random.default_rng(3)
    s, y = random_trials(rng, 200)
    ref = evaluate_scores(s, y)
    assert evaluate_scores(list(s), list(y)) == ref
    assert evaluate_scores(torch.tensor(s), torch.tensor(y)) == ref
    assert evaluate_scores(s[:, None], y.astype(bool)) == ref
    assert evaluate_scores(s.astype(np.float32), y)["num_trials"] == 200


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        ([], [], "empty"),
        ([0.1, 0.2], [1, 1], "no non-target"),
        ([0.1, 0.2], [0, 0], "no target"),
        ([0.1, float("nan")], [1, 0], r"finite; scores\[1\]"),
        ([0.1, float("inf")], [1, 0], "finite"),
        ([0.1, 0.2, 0.3], [1, 0], "3 scores, 2 labels"),
        ([0.1, 0.2], [1, 2], r"labels\[1\] = 2"),
        ([[0.1, 0.2], [0.3, 0.4]], [1, 0, 1, 0], "1-D"),
        (["a", "b"], [1, 0], "numbers"),
    ],
)
def test_bad_input_is_a_clear_value_error(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_eer(scores, labels)


def test_bad_dcf_parameters():
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [1, 0], p_target=1.0)
    with pytest.raises(ValueError, match="c_miss"):
        compute_min_dcf([0.1, 0.2], [1, 0], c_miss=0)
    with pytest.raises(ValueError, match="p_targets"):
        evaluate_scores([0.1, 0.2], [1, 0], p_targets=())
    with pytest.raises(ValueError, match="threshold"):
        rates_at_threshold([0.1, 0.2], [1, 0], float("nan"))


# ----------------------------------------------------------------------------- all pairs
def brute_force(emb, spk, normalize=True, p_targets=(0.01, 0.05), **kw):
    e = np.asarray(emb, dtype=np.float64)
    if normalize:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
    iu = np.triu_indices(len(e), 1)
    same = (np.asarray(spk)[:, None] == np.asarray(spk)[None, :])[iu]
    return evaluate_scores((e @ e.T)[iu], same.astype(int), p_targets=p_targets, **kw)


def integer_case(rng, n, n_spk, dim, span=2):
    """Small-integer embeddings: float32 dot products are exact, and scores tie a lot (within and across
    classes), the hardest case for the binned search."""
    spk = rng.integers(0, n_spk, n)
    spk[:2] = spk[0]  # at least one target pair
    spk[2] = (spk[0] + 1) % n_spk  # at least one non-target pair
    emb = rng.integers(-span, span + 1, (n, dim)).astype(np.float32)
    return emb, spk


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("num_bins", [2, 5, 64, 2**18])
def test_all_pairs_exact_on_ties(seed, num_bins):
    rng = np.random.default_rng(seed)
    emb, spk = integer_case(rng, int(rng.integers(6, 90)), int(rng.integers(2, 9)), int(rng.integers(2, 5)))
    p_targets = (0.01, 0.05, 0.5)
    got = all_pairs_metrics(emb, spk, p_targets=p_targets, normalize=False, num_bins=num_bins, max_block_rows=7)
    want = brute_force(emb, spk, normalize=False, p_targets=p_targets)
    assert got == want  # every value, thresholds included, bit for bit


@pytest.mark.parametrize("seed", range(3))
def test_all_pairs_exact_cosine_float64(seed):
    rng = np.random.default_rng(10 + seed)
    n_spk = 12
    spk = np.repeat(np.arange(n_spk), rng.integers(1, 9, n_spk))
    emb = rng.standard_normal((n_spk, 16))[spk] + 1.5 * rng.standard_normal((len(spk), 16))
    want = brute_force(emb, spk, c_miss=2.0, c_fa=0.5)
    for num_bins in (8, 4096):
        got = all_pairs_metrics(emb, spk, num_bins=num_bins, dtype=torch.float64, c_miss=2.0, c_fa=0.5)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key


def test_all_pairs_float32_default_matches_float64():
    rng = np.random.default_rng(7)
    spk = np.repeat(np.arange(40), 10)
    emb = (rng.standard_normal((40, 32))[spk] + 1.3 * rng.standard_normal((400, 32))).astype(np.float32)
    got = all_pairs_metrics(torch.from_numpy(emb), torch.from_numpy(spk))
    want = brute_force(emb, spk)
    assert got["num_trials"] == 400 * 399 // 2 and got["num_targets"] == 40 * 45
    # float32 scores differ from float64 ones by ~1e-7: metrics agree to a trial or so
    assert abs(got["eer"] - want["eer"]) < 2 / want["num_targets"]
    assert abs(got["threshold"] - want["threshold"]) < 1e-3
    assert abs(got["min_dcf"] - want["min_dcf"]) < 0.02


def test_all_pairs_string_labels_and_permutation_invariance():
    rng = np.random.default_rng(5)
    emb, spk = integer_case(rng, 60, 6, 3)
    names = np.array([f"spk{i}" for i in spk])
    a = all_pairs_metrics(emb, names, normalize=False, num_bins=16)
    perm = rng.permutation(60)
    b = all_pairs_metrics(emb[perm], list(names[perm]), normalize=False, num_bins=16)
    assert a == b == brute_force(emb, spk, normalize=False)


def test_all_pairs_compacts_collected_scores(monkeypatch):
    import mvector.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "_COMPACT_AT", 3)  # merge (value, count) after nearly every block
    rng = np.random.default_rng(9)
    emb, spk = integer_case(rng, 80, 5, 2, span=1)  # few distinct scores: many ties to merge
    got = all_pairs_metrics(emb, spk, normalize=False, num_bins=2, max_block_rows=4)
    assert got == brute_force(emb, spk, normalize=False)


@pytest.mark.parametrize(
    "emb, spk, match",
    [
        (np.ones((3, 4)), [0, 1, 2], "no target pairs"),
        (np.eye(3), [0, 0, 0], "no non-target pairs"),
        (np.ones((1, 4)), [0], "at least 2"),
        (np.ones((3, 4)), [0, 0], "3 embeddings, 2 labels"),
        (np.ones(4), [0, 0, 1, 1], "shape"),
        (np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), [0, 0, 1], "all zeros"),
        (np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]]), [0, 0, 1], "row 0"),
    ],
)
def test_all_pairs_bad_input(emb, spk, match):
    with pytest.raises(ValueError, match=match):
        all_pairs_metrics(emb, spk)
