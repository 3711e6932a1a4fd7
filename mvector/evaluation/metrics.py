"""Exact verification metrics: EER, minDCF, TPR/FPR at a threshold, DET points, all-pairs evaluation.

Conventions used everywhere in this module:

* ``labels``: 1 = target trial (same speaker), 0 = non-target trial. ``scores``: higher = more similar.
* A threshold ``t`` accepts a trial when ``score >= t``. The operating points of a score set are the
  thresholds equal to each distinct score (the lowest one accepts everything) plus ``+inf`` (rejects
  everything). Tied scores are one operating point; nothing is decided by the order of tied trials.
* ``FNR(t)`` = targets with ``score < t`` / targets, ``FPR(t)`` = non-targets with ``score >= t`` /
  non-targets, ``TPR = 1 - FNR``.
* **EER**: going up through the operating points, FNR − FPR rises from −1 (accept all) to +1 (reject all).
  The EER is where the straight segment between the last point with FNR < FPR and the first point with
  FNR ≥ FPR crosses FNR = FPR (linear interpolation on the DET/ROC polyline). The returned threshold is
  the one of those two operating points with the smaller ``|FNR − FPR|`` (on a tie the lower one); it is
  always one of the scores, so :func:`rates_at_threshold` reproduces its TPR/FPR exactly.
* **minDCF** (NIST): ``C_det = c_miss·FNR·p + c_fa·FPR·(1−p)``, divided by ``min(c_miss·p, c_fa·(1−p))``,
  minimised over every operating point, accept-all and reject-all included. The threshold returned is the
  lowest one reaching the minimum (``inf`` when rejecting everything is best).

>>> compute_eer([0.9, 0.8, 0.3, 0.2], [1, 1, 0, 0])
(0.0, 0.8)
>>> eer, thr = compute_eer([0.9, 0.4, 0.6, 0.2], [1, 1, 0, 0])
>>> round(eer, 3), thr
(0.5, 0.6)
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "compute_eer",
    "compute_min_dcf",
    "rates_at_threshold",
    "det_points",
    "evaluate_scores",
    "all_pairs_metrics",
    "frr_at_far",
    "TAIL_FIGURES",
    "weighted_curve",
]

_COMPACT_AT = 1 << 22  # collected scores merged into (value, count) pairs beyond this many


# --------------------------------------------------------------------------------------------------- inputs
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot be read as an array ({err})") from None
    if arr.dtype == object:
        raise ValueError(f"{name}: expected numbers, got objects (ragged list?)")
    return arr


def _check_labels(labels: Any, n: int | None = None) -> np.ndarray:
    y = _to_numpy(labels, "labels")
    if y.ndim != 1:
        y = y.reshape(-1) if y.size == max(y.shape, default=0) else y
    if y.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array, got shape {tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"scores and labels differ in length: {n} scores, {y.shape[0]} labels")
    if y.size == 0:
        raise ValueError("no trials: scores and labels are empty")
    if y.dtype == bool:
        return y
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"labels: expected 0/1 numbers, got dtype {y.dtype}")
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labels must be 0 (non-target) or 1 (target); labels[{i}] = {y[i].item()!r}")
    return y == 1


def check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(scores float64, labels bool)`` arrays of one length; a clear ``ValueError`` otherwise.

    >>> check_scores_labels([0.9, 0.1], [1, 0])
    (array([0.9, 0.1]), array([ True, False]))
    """
    s = _to_numpy(scores, "scores")
    if s.ndim != 1:
        if s.size == max(s.shape, default=0):  # (n, 1) or (1, n)
            s = s.reshape(-1)
        else:
            raise ValueError(f"scores: expected a 1-D array, got shape {tuple(s.shape)}")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
        raise ValueError(f"scores: expected numbers, got dtype {s.dtype}")
    y = _check_labels(labels, s.shape[0])
    s = s.astype(np.float64, copy=False)
    finite = np.isfinite(s)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"scores must be finite; scores[{i}] = {s[i].item()!r} ({int((~finite).sum())} non-finite)")
    n_t = int(y.sum())
    if n_t == 0 or n_t == y.size:
        kind = "non-target (label 0)" if n_t == y.size else "target (label 1)"
        raise ValueError(f"need both target and non-target trials; there is no {kind} trial among {y.size}")
    return s, y


def _check_dcf_params(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < float(p_target) < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target!r}")
    if not (float(c_miss) > 0 and float(c_fa) > 0):
        raise ValueError(f"c_miss and c_fa must be > 0, got c_miss={c_miss!r}, c_fa={c_fa!r}")


# ---------------------------------------------------------------------------------------------- the curve
class ScoreCurve:
    """Operating points in ascending threshold order: ``miss[k]`` targets below ``thr[k]``, ``fa[k]``
    non-targets at or above it. The last point is reject-all (``thr = inf``)."""

    __slots__ = ("thr", "miss", "fa", "n_t", "n_n")

    def __init__(self, thr: np.ndarray, miss: np.ndarray, fa: np.ndarray, n_t: int, n_n: int) -> None:
        self.thr, self.miss, self.fa, self.n_t, self.n_n = thr, miss, fa, int(n_t), int(n_n)

    @property
    def fnr(self) -> np.ndarray:
        return self.miss / self.n_t

    @property
    def fpr(self) -> np.ndarray:
        return self.fa / self.n_n


def score_curve(s: np.ndarray, y: np.ndarray) -> ScoreCurve:
    """Every operating point of checked scores ``s`` and labels ``y`` (see :func:`check_scores_labels`).

    >>> score_curve(np.array([0.9, 0.1, 0.5]), np.array([1, 0, 0])).thr.tolist()
    [0.1, 0.5, 0.9, inf]
    """
    values, inverse = np.unique(s, return_inverse=True)
    inverse = inverse.reshape(-1)
    tgt = np.bincount(inverse, weights=y, minlength=values.size).astype(np.int64)
    allc = np.bincount(inverse, minlength=values.size).astype(np.int64)
    non = allc - tgt
    n_t, n_n = int(tgt.sum()), int(non.sum())
    miss = np.concatenate(([0], np.cumsum(tgt)))  # targets strictly below each threshold
    fa = n_n - np.concatenate(([0], np.cumsum(non)))  # non-targets at or above it
    thr = np.concatenate((values, [np.inf]))
    return ScoreCurve(thr, miss, fa, n_t, n_n)


def eer_from_curve(c: ScoreCurve) -> tuple[float, float, int]:
    """``(eer, threshold, index)``: the EER interpolated at the FNR/FPR crossing of ``c``, and its nearest point.

    >>> eer_from_curve(score_curve(np.array([0.9, 0.1, 0.5]), np.array([1, 0, 0])))
    (0.0, 0.9, 2)
    """
    # Sign of FNR - FPR in exact integer arithmetic: miss/n_t - fa/n_n  ~  miss*n_n - fa*n_t.
    diff = c.miss.astype(np.int64) * c.n_n - c.fa.astype(np.int64) * c.n_t
    k = int(np.argmax(diff >= 0))  # reject-all always has diff > 0
    if k == 0:
        raise AssertionError("internal error: the first operating point must have FNR < FPR")
    fnr0, fnr1 = c.miss[k - 1] / c.n_t, c.miss[k] / c.n_t
    d0 = fnr0 - c.fa[k - 1] / c.n_n
    d1 = fnr1 - c.fa[k] / c.n_n
    alpha = -d0 / (d1 - d0)
    eer = float(fnr0 + alpha * (fnr1 - fnr0))
    best = k if abs(int(diff[k])) < abs(int(diff[k - 1])) else k - 1
    return min(max(eer, 0.0), 1.0), float(c.thr[best]), best


def _dcf_from_curve(c: ScoreCurve, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float, int]:
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    cost = (c_miss * p_target * c.fnr + c_fa * (1.0 - p_target) * c.fpr) / norm
    k = int(np.argmin(cost))
    return float(cost[k]), float(c.thr[k]), k


# ------------------------------------------------------------------------------------------------- public
def compute_eer(scores: Any, labels: Any) -> tuple[float, float]:
    """Exact equal error rate and its threshold: ``(eer in [0, 1], threshold)``; accept when ``score >= threshold``.

    Ties are grouped; the EER is interpolated where FNR and FPR cross (see the module docstring for the
    exact definition and which threshold is returned). Accepts lists, numpy arrays and torch tensors.

    >>> compute_eer([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    (0.0, 0.3)
    >>> compute_eer([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1])  # fully tied: nothing separates the classes
    (0.5, 0.5)
    """
    s, y = check_scores_labels(scores, labels)
    eer, thr, _ = eer_from_curve(score_curve(s, y))
    return eer, thr


def compute_min_dcf(
    scores: Any, labels: Any, p_target: float = 0.01, c_miss: float = 1, c_fa: float = 1
) -> tuple[float, float]:
    """Normalised minimum detection cost and the threshold reaching it: ``(min_dcf, threshold)``.

    ``C_det = c_miss·FNR·p_target + c_fa·FPR·(1−p_target)``, divided by ``min(c_miss·p_target,
    c_fa·(1−p_target))`` and minimised over every operating point, accept-all and reject-all included, so
    the result is in ``[0, 1]``. The threshold is ``inf`` when rejecting everything is best.

    >>> compute_min_dcf([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    (0.0, 0.3)
    >>> dcf, thr = compute_min_dcf([0.9, 0.4, 0.6, 0.2], [1, 1, 0, 0], p_target=0.5)
    >>> dcf, thr  # accept score >= 0.4: one false alarm of two (ties with >= 0.9: the lower threshold wins)
    (0.5, 0.4)
    """
    _check_dcf_params(p_target, c_miss, c_fa)
    s, y = check_scores_labels(scores, labels)
    dcf, thr, _ = _dcf_from_curve(score_curve(s, y), float(p_target), float(c_miss), float(c_fa))
    return dcf, thr


def rates_at_threshold(scores: Any, labels: Any, threshold: float) -> tuple[float, float]:
    """``(tpr, fpr)`` when trials with ``score >= threshold`` are accepted.

    >>> rates_at_threshold([0.9, 0.4, 0.6, 0.2], [1, 1, 0, 0], 0.5)
    (0.5, 0.5)
    """
    s, y = check_scores_labels(scores, labels)
    if threshold is None or math.isnan(float(threshold)):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    accept = s >= float(threshold)
    return float(accept[y].mean()), float(accept[~y].mean())


def det_points(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every operating point: ``(fpr, fnr, thresholds)``, thresholds ascending, the last one ``inf``.

    The first point accepts everything (``fpr = 1, fnr = 0``), the last rejects everything.

    >>> fpr, fnr, thr = det_points([0.9, 0.4, 0.6, 0.2], [1, 1, 0, 0])
    >>> fpr.tolist(), fnr.tolist(), thr.tolist()
    ([1.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5, 1.0], [0.2, 0.4, 0.6, 0.9, inf])
    """
    s, y = check_scores_labels(scores, labels)
    c = score_curve(s, y)
    return c.fpr, c.fnr, c.thr


def _metrics_dict(c: ScoreCurve, p_targets: Sequence[float], c_miss: float, c_fa: float) -> dict[str, Any]:
    eer, thr, k = eer_from_curve(c)
    out: dict[str, Any] = {
        "eer": eer,
        "threshold": thr,
        "tpr": float((c.n_t - c.miss[k]) / c.n_t),
        "fpr": float(c.fa[k] / c.n_n),
    }
    for i, p in enumerate(p_targets):
        dcf, dthr, _ = _dcf_from_curve(c, float(p), c_miss, c_fa)
        if i == 0:
            out["min_dcf"] = dcf
            out["min_dcf_threshold"] = dthr
        out[f"min_dcf_{p:g}"] = dcf
        out[f"min_dcf_threshold_{p:g}"] = dthr
    out["num_trials"] = c.n_t + c.n_n
    out["num_targets"] = c.n_t
    out["num_nontargets"] = c.n_n
    return out


def _check_p_targets(p_targets: Sequence[float], c_miss: float, c_fa: float) -> tuple[float, ...]:
    if isinstance(p_targets, (int, float)):
        p_targets = (p_targets,)
    p_targets = tuple(float(p) for p in p_targets)
    if not p_targets:
        raise ValueError("p_targets: give at least one target prior, e.g. (0.01, 0.05)")
    for p in p_targets:
        _check_dcf_params(p, c_miss, c_fa)
    return p_targets


def evaluate_scores(
    scores: Any, labels: Any, p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1, c_fa: float = 1
) -> dict[str, Any]:
    """All verification metrics of a scored trial list in one dict.

    Keys: ``eer``, ``threshold`` (the EER threshold), ``tpr`` and ``fpr`` at that threshold, ``min_dcf``
    and ``min_dcf_threshold`` (for ``p_targets[0]``), ``min_dcf_<p>`` and ``min_dcf_threshold_<p>`` for every
    ``p`` in ``p_targets`` (e.g. ``min_dcf_0.05``), ``num_trials``, ``num_targets``, ``num_nontargets``.

    >>> m = evaluate_scores([0.9, 0.4, 0.6, 0.2], [1, 1, 0, 0])
    >>> m["eer"], m["threshold"], m["tpr"], m["fpr"], m["num_trials"]
    (0.5, 0.6, 0.5, 0.5, 4)
    >>> m["min_dcf"], m["min_dcf_threshold"]  # p = 0.01: accepting only >= 0.9 misses half the targets
    (0.5, 0.9)
    """
    p_targets = _check_p_targets(p_targets, c_miss, c_fa)
    s, y = check_scores_labels(scores, labels)
    return _metrics_dict(score_curve(s, y), p_targets, float(c_miss), float(c_fa))


# ---------------------------------------------------------------------------------- the low-false-alarm tail
def _frr_at_far_from_curve(c: ScoreCurve, far: float) -> float:
    """FNR at the lowest threshold whose FPR is at most ``far`` (reject-all always qualifies)."""
    k = int(np.argmax(c.fa <= far * c.n_n))
    return float(c.miss[k] / c.n_t)


def frr_at_far(scores: Any, labels: Any, far: float) -> float:
    """False-rejection rate at the lowest threshold whose false-acceptance rate is at most ``far``.

    >>> frr_at_far([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0], far=0.0)  # accept only >= 0.9
    0.5
    """
    if not 0.0 <= float(far) <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far!r}")
    s, y = check_scores_labels(scores, labels)
    return _frr_at_far_from_curve(score_curve(s, y), float(far))


def weighted_curve(s: np.ndarray, y: np.ndarray, w: np.ndarray) -> ScoreCurve:
    """The operating points of scores ``s`` with labels ``y`` (bool) where trial ``i`` counts ``w[i]`` times
    (non-negative integers): what a bootstrap resample sees, without repeating trials."""
    values, inverse = np.unique(s, return_inverse=True)
    inverse = inverse.reshape(-1)
    tgt = np.rint(np.bincount(inverse, weights=w * y, minlength=values.size)).astype(np.int64)
    non = np.rint(np.bincount(inverse, weights=w * ~y, minlength=values.size)).astype(np.int64)
    n_t, n_n = int(tgt.sum()), int(non.sum())
    miss = np.concatenate(([0], np.cumsum(tgt)))
    fa = n_n - np.concatenate(([0], np.cumsum(non)))
    return ScoreCurve(np.concatenate((values, [np.inf])), miss, fa, n_t, n_n)


#: The figures of the low-false-alarm tail: name -> its value on a curve (:func:`mvector.evaluation.uncertainty.
#: tail_metrics`).
TAIL_FIGURES = {
    "eer": lambda c: eer_from_curve(c)[0],
    "min_dcf_0.01": lambda c: _dcf_from_curve(c, 0.01, 1.0, 1.0)[0],
    "min_dcf_0.001": lambda c: _dcf_from_curve(c, 0.001, 1.0, 1.0)[0],
    "frr_at_far_1%": lambda c: _frr_at_far_from_curve(c, 0.01),
    "frr_at_far_0.1%": lambda c: _frr_at_far_from_curve(c, 0.001),
}


# ------------------------------------------------------------------------------------------------ all pairs
def all_pairs_metrics(
    embeddings: Any,
    labels: Any,
    p_targets: Sequence[float] = (0.01, 0.05),
    c_miss: float = 1,
    c_fa: float = 1,
    normalize: bool = True,
    num_bins: int = 2**18,
    block_elements: int = 1 << 23,
    max_block_rows: int = 256,
    dtype: torch.dtype | str | None = None,
) -> dict[str, Any]:
    """Exact metrics over every pair of distinct utterances ``i < j`` (same keys as :func:`evaluate_scores`).

    ``embeddings``: ``(N, D)`` array or tensor; ``labels``: ``N`` speaker ids (any hashable values). A pair
    is a target trial when both utterances have the same speaker id. Scores are cosine similarities
    (``normalize=False``: plain dot products) computed by a float32 matrix product (``dtype=torch.float64``
    for double precision); the metrics are exact for those scores, identical to sorting all
    ``N·(N−1)/2`` scores, but memory stays bounded: one block of at most ``max_block_rows × N`` scores
    (about 12 bytes each, 60 MiB at N = 20 000), ``num_bins`` counters per thread, and the exact scores kept:

    1. utterances are grouped by speaker, so row ``i`` of the upper triangle holds its target pairs first and
       its non-target pairs in one contiguous run after them (:class:`_PairBlocks`);
    2. rows are scored block by block; target scores are kept exactly, non-target scores are only counted in
       ``num_bins`` equal-width bins (a monotone function of the score, so bins never reorder scores;
       :func:`_count_pass`);
    3. from the bin counts, the bins where the EER crossing or a minDCF optimum can lie are found with
       exact bounds (:func:`_bins_to_refine`), the blocks are recomputed, and the non-target scores in those
       bins alone are collected (:func:`_collect_pass`);
    4. the exact operating points inside those bins decide the metrics; every other point is provably not
       the optimum (minDCF) and on the right side of the crossing (EER) (:func:`_exact_curve`).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> spk = np.repeat(np.arange(20), 5)
    >>> emb = rng.standard_normal((20, 16))[spk] + 0.8 * rng.standard_normal((100, 16))
    >>> m = all_pairs_metrics(emb, spk)
    >>> m["num_trials"], m["num_targets"]
    (4950, 200)
    >>> bool(0.0 <= m["eer"] < 0.2)
    True
    """
    p_targets = _check_p_targets(p_targets, c_miss, c_fa)
    c_miss, c_fa = float(c_miss), float(c_fa)
    num_bins = int(num_bins)
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    emb, lab = _pair_inputs(embeddings, labels, normalize, dtype)
    pairs = _PairBlocks(emb, lab, normalize, num_bins, int(block_elements), max_block_rows)
    t_vals, non_hist, tgt_hist = _count_pass(pairs)
    refine, c_ge = _bins_to_refine(non_hist, tgt_hist, pairs.n_t, pairs.n_n, p_targets, c_miss, c_fa)
    v_u, c_u = _collect_pass(pairs, refine, non_hist)
    curve = _exact_curve(pairs, t_vals, v_u, c_u, refine, non_hist, c_ge)
    return _metrics_dict(curve, p_targets, c_miss, c_fa)


def _pair_inputs(embeddings: Any, labels: Any, normalize: bool, dtype: Any) -> tuple[torch.Tensor, np.ndarray]:
    """The embeddings as a checked ``(N, D)`` tensor of ``dtype`` (unit rows when ``normalize``) and the labels
    as a 1-D array of ``N``; a clear ``ValueError`` otherwise."""
    import torch

    if isinstance(embeddings, torch.Tensor):
        emb = embeddings.detach().cpu()
    else:
        arr = _to_numpy(embeddings, "embeddings")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"embeddings: expected numbers, got dtype {arr.dtype}")
        emb = torch.from_numpy(np.ascontiguousarray(arr))
    if emb.ndim != 2:
        raise ValueError(f"embeddings: expected shape (N, D), got {tuple(emb.shape)}")
    n = emb.shape[0]
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(dtype)
        if dtype is None:
            raise ValueError("dtype must be 'float32' or 'float64'")
    emb = emb.to(dtype)
    lab = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels: expected one speaker id per embedding (1-D), got shape {tuple(lab.shape)}")
    if lab.shape[0] != n:
        raise ValueError(f"embeddings and labels differ in length: {n} embeddings, {lab.shape[0]} labels")
    if n < 2:
        raise ValueError(f"need at least 2 embeddings, got {n}")
    if emb.shape[1] == 0:
        raise ValueError("embeddings have dimension 0")
    if not bool(torch.isfinite(emb).all()):
        row = int(torch.nonzero(~torch.isfinite(emb).all(dim=1))[0, 0])
        raise ValueError(f"embeddings must be finite; row {row} holds NaN or inf")
    if normalize:
        norms = emb.norm(dim=1)
        if bool((norms == 0).any()):
            row = int(torch.nonzero(norms == 0)[0, 0])
            raise ValueError(f"embedding {row} is all zeros; its cosine similarity is undefined")
        emb = emb / norms[:, None]
    return emb, lab


class _PairBlocks:
    """The upper triangle of the score matrix of ``emb`` with rows grouped by speaker, cut into row blocks,
    and the binning of its scores.

    Rows are sorted so that one speaker's utterances form one contiguous run: row ``i`` pairs with its own
    speaker in columns ``i+1 .. ends[i]-1`` (the target pairs, listed in ``t_row`` / ``t_col``) and with
    everyone else from ``ends[i]`` on. A block holds rows ``[r0, r1)`` against columns ``[r0, N)``; few rows
    per block keep the masked corner small. Scores are binned as ``bin(x) = trunc(x + offset)`` with
    ``x = score * scale`` (``scale`` a power of two: every product and partial sum is scaled exactly), monotone
    in the score; slot ``trash`` counts the invalid entries (lower triangle, diagonal, target pairs).
    """

    def __init__(
        self, emb: torch.Tensor, lab: np.ndarray, normalize: bool, num_bins: int, block_elements: int, max_rows: int
    ) -> None:
        import torch

        _, spk = np.unique(lab, return_inverse=True)
        spk = spk.reshape(-1)
        order = np.argsort(spk, kind="stable")
        sizes = np.bincount(spk)
        self.n = n = emb.shape[0]
        self.ends = ends = np.cumsum(sizes)[spk[order]]  # for sorted row i: first row of the next speaker
        self.n_t = int((sizes * (sizes - 1) // 2).sum())
        self.n_n = n * (n - 1) // 2 - self.n_t
        if self.n_t == 0:
            raise ValueError("no target pairs: every speaker has a single utterance")
        if self.n_n == 0:
            raise ValueError("no non-target pairs: all utterances have the same speaker label")
        self.dtype = emb.dtype
        self.e = e = emb[torch.from_numpy(order)].contiguous()
        self._set_bins(num_bins, 1.0 if normalize else float((e.norm(dim=1).max() ** 2).item()) * (1 + 1e-3))
        self.ends_t = torch.from_numpy(ends.astype(np.int64))
        self.blocks = []
        r0 = 0
        while r0 < n - 1:
            rows = max(1, min(n - 1 - r0, max_rows, block_elements // (n - r0)))
            self.blocks.append((r0, r0 + rows))
            r0 += rows
        t_len = ends - np.arange(n) - 1  # target pairs in sorted order: row i with columns i+1 .. ends[i]-1
        self.t_row = np.repeat(np.arange(n), t_len)
        self.t_col = self.t_row + 1 + (np.arange(self.t_row.size) - np.repeat(np.cumsum(t_len) - t_len, t_len))

    def _set_bins(self, num_bins: int, bound: float) -> None:
        # |score| <= bound (1 for unit vectors); rounding can overshoot a little, the margin bins absorb it
        half = num_bins // 2
        self.scale = 2.0 ** math.floor(math.log2(half / bound))
        margin = 16 + half // 256
        self.offset = float(half + margin)
        self.n_slots = 2 * half + 2 * margin + 1
        self.trash = self.n_slots
        self.sentinel = float(self.trash) - self.offset  # a score value whose bin is the trash slot
        self.es = self.e * self.scale

    def to_bins(self, x: torch.Tensor) -> torch.Tensor:
        """The bin of each scaled score ``x``."""
        import torch

        return torch.add(x, self.offset).to(torch.int32)

    def block_scores(self, r0: int, r1: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Scaled scores of rows ``[r0, r1)`` against columns ``[r0, N)``, and the mask of the invalid entries
        among the first ``lead`` columns (columns < ``ends[i]`` are invalid for row ``i``; ends grow with i)."""
        import torch

        x = self.es[r0:r1] @ self.e[r0:].T
        lead = int(self.ends[r1 - 1]) - r0
        invalid = torch.arange(lead)[None, :] < self.ends_t[r0:r1, None] - r0
        return x, lead, invalid

    def run_blocks(self, work: Any) -> list[Any]:
        """``work(share)`` on every share of the blocks, one share per Python thread.

        Each thread runs single-threaded torch ops (they release the GIL): unlike multi-threaded ops this never
        stalls at thread barriers on a busy machine, and a single-threaded matrix product gives the same bits for
        a block in both passes.
        """
        import torch

        workers = max(1, torch.get_num_threads())
        shares = [self.blocks[w::workers] for w in range(workers)]
        old_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if workers == 1:
                return [work(shares[0])]
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(work, shares))
        finally:
            torch.set_num_threads(old_threads)


def _count_pass(pairs: _PairBlocks) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """First pass over the blocks: the exact target scores (scaled, in sorted pair order) and the counts of
    non-target and target scores per bin."""
    import torch

    def first_pass(share: list[tuple[int, int]]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        hist = torch.zeros(pairs.n_slots + 1, dtype=torch.int64)
        found = {}
        for r0, r1 in share:
            x, lead, invalid = pairs.block_scores(r0, r1)
            a, b = np.searchsorted(pairs.t_row, [r0, r1])
            if b > a:
                found[r0] = x[torch.from_numpy(pairs.t_row[a:b] - r0), torch.from_numpy(pairs.t_col[a:b] - r0)]
            x[:, :lead].masked_fill_(invalid, pairs.sentinel)
            hist += torch.bincount(x.add_(pairs.offset).to(torch.int32).view(-1), minlength=pairs.n_slots + 1)
            del x
        return hist, found

    results = pairs.run_blocks(first_pass)
    hist = functools.reduce(torch.add, [h for h, _ in results])
    found = {r0: t for _, part in results for r0, t in part.items()}
    t_vals = torch.cat([found[r0] for r0 in sorted(found)])
    if t_vals.numel() != pairs.n_t:
        raise AssertionError("internal error: target pair count mismatch")
    non_hist = hist[: pairs.n_slots].numpy().astype(np.int64)
    if int(non_hist.sum()) != pairs.n_n:
        raise AssertionError("internal error: non-target pair count mismatch")
    t_bins = pairs.to_bins(t_vals).numpy().astype(np.int64)
    return t_vals, non_hist, np.bincount(t_bins, minlength=pairs.n_slots).astype(np.int64)


def _bins_to_refine(
    non_hist: np.ndarray,
    tgt_hist: np.ndarray,
    n_t: int,
    n_n: int,
    p_targets: Sequence[float],
    c_miss: float,
    c_fa: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The bins whose exact non-target scores are needed (a mask), and the non-targets in bins ``>= b``.

    EER: the bracket lies in the last occupied bin whose lower boundary has FNR < FPR, or at the lowest score
    of the next occupied bin. minDCF: a bin can hold the optimum only if its lower bound is <= the best value
    reached at a bin boundary.
    """
    n_slots = non_hist.size
    c_ge = np.concatenate((np.cumsum(non_hist[::-1])[::-1], [0]))  # non-targets in bins >= b
    m_lt = np.concatenate(([0], np.cumsum(tgt_hist)))  # targets in bins < b
    occ = np.flatnonzero((non_hist + tgt_hist) > 0)
    refine = np.zeros(n_slots, dtype=bool)
    diff = m_lt[occ] * n_n - c_ge[occ] * n_t
    last_neg = int(np.flatnonzero(diff < 0)[-1])
    refine[occ[last_neg : last_neg + 2]] = True
    for p in p_targets:
        a = c_miss * p / n_t
        b = c_fa * (1 - p) / n_n
        upper = min(float((a * m_lt[occ] + b * c_ge[occ]).min()), a * n_t)
        lower = a * m_lt[occ] + b * c_ge[occ + 1]
        refine[occ[lower <= upper + 1e-9 * max(upper, 1e-300) + 1e-15]] = True
    refine &= non_hist > 0
    return refine, c_ge


def _compact(parts: list[torch.Tensor], counts: list[torch.Tensor], dtype: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores merged into (distinct value, count): memory stays bounded when scores tie."""
    import torch

    v_all = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
    c_all = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64)
    v_new, inv = torch.unique(v_all, return_inverse=True)
    return v_new, torch.zeros(v_new.numel(), dtype=torch.int64).index_add_(0, inv, c_all)


def _collect_pass(pairs: _PairBlocks, refine: np.ndarray, non_hist: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Second pass over the blocks: the exact non-target scores in the ``refine`` bins, as (value, count); their
    counts must match the first pass's (else the matrix product is not deterministic here)."""
    import torch

    if not refine.any():
        v_u, c_u = torch.zeros(0, dtype=pairs.dtype), torch.zeros(0, dtype=torch.int64)
    else:
        ref_bins = np.flatnonzero(refine)
        # loose bounds on the raw score; the exact bin test runs on the few values selected
        x_lo, x_hi = float(ref_bins[0]) - pairs.offset - 1.0, float(ref_bins[-1]) - pairs.offset + 2.0
        table = torch.from_numpy(np.concatenate((refine, [False])))

        def second_pass(share: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
            parts, counts, pending = [], [], 0
            for r0, r1 in share:
                x, lead, invalid = pairs.block_scores(r0, r1)
                x[:, :lead].masked_fill_(invalid, pairs.sentinel)
                xs = x[(x >= x_lo).logical_and_(x < x_hi)]
                del x
                xs = xs[table[pairs.to_bins(xs).long()]]
                if xs.numel():
                    parts.append(xs)
                    counts.append(torch.ones(xs.numel(), dtype=torch.int64))
                    pending += xs.numel()
                    if pending > _COMPACT_AT:
                        v, c = _compact(parts, counts, pairs.dtype)
                        parts, counts, pending = [v], [c], 0
            return _compact(parts, counts, pairs.dtype)

        results = pairs.run_blocks(second_pass)
        v_u, c_u = _compact([v for v, _ in results], [c for _, c in results], pairs.dtype)
    got = np.bincount(pairs.to_bins(v_u).numpy().astype(np.int64), weights=c_u.numpy(), minlength=pairs.n_slots)
    if not np.array_equal(got[refine].astype(np.int64), non_hist[refine]):
        raise RuntimeError(
            "all_pairs_metrics: the matrix product gave different results on recomputation "
            "(non-deterministic BLAS); set MKL_CBWR=COMPATIBLE or use dtype=torch.float64"
        )
    return v_u, c_u


def _exact_curve(
    pairs: _PairBlocks,
    t_vals: torch.Tensor,
    v_u: torch.Tensor,
    c_u: torch.Tensor,
    refine: np.ndarray,
    non_hist: np.ndarray,
    c_ge: np.ndarray,
) -> ScoreCurve:
    """The operating points at every target score and every collected non-target score; false alarms above a
    point come from the bins above it plus, within its own bin, the collected scores (a refined bin) or the
    whole bin (any other: the point cannot decide a metric there)."""
    import torch

    vals = torch.cat((t_vals, v_u))
    t_w = torch.cat((torch.ones(t_vals.numel(), dtype=torch.int64), torch.zeros(v_u.numel(), dtype=torch.int64)))
    n_w = torch.cat((torch.zeros(t_vals.numel(), dtype=torch.int64), c_u))
    pts, inv = torch.unique(vals, return_inverse=True)
    tc = torch.zeros(pts.numel(), dtype=torch.int64).index_add_(0, inv, t_w).numpy()
    nc = torch.zeros(pts.numel(), dtype=torch.int64).index_add_(0, inv, n_w).numpy()
    pbins = pairs.to_bins(pts).numpy().astype(np.int64)
    miss = np.concatenate(([0], np.cumsum(tc)[:-1]))
    rc = np.concatenate((np.cumsum(nc[::-1])[::-1], [0]))  # collected non-targets at or above point j
    first_above = np.searchsorted(pbins, pbins, side="right")
    in_bin_ge = rc[:-1] - rc[first_above]
    fa = c_ge[pbins + 1] + np.where(refine[pbins], in_bin_ge, non_hist[pbins])
    thr = pts.to(torch.float64).numpy() / pairs.scale
    return ScoreCurve(
        np.concatenate((thr, [np.inf])),
        np.concatenate((miss, [pairs.n_t])).astype(np.int64),
        np.concatenate((fa, [0])).astype(np.int64),
        pairs.n_t,
        pairs.n_n,
    )
