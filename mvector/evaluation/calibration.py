"""Score calibration: turn a raw similarity score into a log-likelihood ratio (LLR) that means something.

A raw cosine score only ranks trials; its scale depends on the model, the data and the scoring back-end, so a
threshold copied from elsewhere means nothing. A *calibrated* score is a log-likelihood ratio

    LLR = log P(score | same speaker) / P(score | different speakers)

so that, for a prior probability ``π`` that the two recordings come from the same speaker, the probability of
"same speaker" is ``sigmoid(LLR + logit(π))``, and the cost-minimising (Bayes) decision at a cost setting is a
threshold on the LLR that is known in advance: ``accept when LLR ≥ log(c_fa·(1−π) / (c_miss·π))``.

The calibration (:class:`Calibration`) is an affine map, fitted (:mod:`mvector.evaluation.calibration_fit`) by
prior-weighted logistic regression (Brümmer's linear calibration, the method of the NIST SRE / BOSARIS
tradition): ``LLR = a·score + b (+ Σ wᵢ·qᵢ)``, where the optional quality measures ``qᵢ`` (the log speech
durations of the two recordings: the idea behind quality measure functions, QMF) let the mapping depend on how
much speech each side had. The fit minimises the cross-entropy with targets and non-targets weighted to a stated
prior (default 0.5), which is convex; it is solved by Newton's method with a backtracking line search on
standardised features and a small L2 penalty (so a perfectly separable set gives a sharp but finite map).

Measures that judge a calibration:

* ``Cllr`` (:func:`cllr`, in bits): the cross-entropy of the LLRs at prior 0.5. 0 is perfect, 1 is a system that
  always says LLR = 0, above 1 is worse than saying nothing.
* ``min Cllr`` (:func:`min_cllr`): the Cllr after the best monotone re-mapping of the scores (pool-adjacent-
  violators, PAV); the part of Cllr that no calibration can remove. ``Cllr − min Cllr`` is the calibration loss.
* actual DCF (:func:`actual_dcf`) next to minDCF (:func:`mvector.evaluation.metrics.compute_min_dcf`): the cost of the
  Bayes decisions the LLRs imply, against the best threshold chosen with hindsight.

Operating points (:func:`~mvector.evaluation.calibration_fit.choose_operating_point`) are chosen by meaning: a
target false-acceptance rate, a target false-rejection rate, the EER point or a minimum probability of "same
speaker"; each records how it was chosen and on what data. A calibration is stored as plain JSON, never pickle
(:mod:`mvector.evaluation.calibration_store`, which also finds a model folder's threshold); its reliability plot
is :mod:`mvector.evaluation.reliability_plot`.

>>> cal = Calibration(weights={"score": 20.0}, bias=-4.0)
>>> round(float(cal.probability(0.2)), 2), round(float(cal.probability(0.4)), 2)   # at prior 0.5
(0.5, 0.98)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from mvector.errors import ConfigError
from mvector.evaluation.gallery import NonTargetTail, check_rate
from mvector.evaluation.metrics import check_scores_labels

__all__ = [
    "QUALITY_FEATURES",
    "Calibration",
    "cllr",
    "min_cllr",
    "pav_llr",
    "actual_dcf",
    "dcf_at_threshold",
    "duration_features",
    "logit",
    "sigmoid",
    "as_float_vector",
]

#: Quality measures a calibration may use besides the score (computed by :func:`duration_features`).
QUALITY_FEATURES = ("log_min_duration", "log_max_duration")
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------ helpers
def logit(p: Any) -> Any:
    """``log(p / (1 − p))`` (numpy-vectorised; 0 and 1 give ∓inf).

    >>> round(float(logit(0.01)), 4)
    -4.5951
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = np.log(p) - np.log1p(-p)
    return out if out.ndim else float(out)


def sigmoid(x: Any) -> Any:
    """The logistic function ``1 / (1 + exp(−x))``, without overflow.

    >>> sigmoid(0.0), round(float(sigmoid(np.log(3.0))), 3)
    (0.5, 0.75)
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.exp(-np.logaddexp(0.0, -x))
    return out if out.ndim else float(out)


def as_float_vector(x: Any) -> np.ndarray:
    """``x`` (a number, a sequence, an array or a tensor) as a flat float64 array.

    >>> as_float_vector(3).tolist(), as_float_vector([[1, 2]]).tolist()
    ([3.0], [1.0, 2.0])
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    return arr.reshape(-1) if arr.ndim else arr.reshape(1)


def duration_features(duration1: Any, duration2: Any) -> dict[str, np.ndarray]:
    """Quality measures of trials from the two sides' speech durations in seconds (symmetric in the two sides).

    Returns ``{"log_min_duration": log(min), "log_max_duration": log(max)}`` (durations floored at 0.1 s).

    >>> q = duration_features([2.0, 8.0], [4.0, 1.0])
    >>> np.round(np.exp(q["log_min_duration"]), 3).tolist(), np.round(np.exp(q["log_max_duration"]), 3).tolist()
    ([2.0, 1.0], [4.0, 8.0])
    """
    d1 = np.maximum(as_float_vector(duration1), 0.1)
    d2 = np.maximum(as_float_vector(duration2), 0.1)
    if d1.shape != d2.shape:
        raise ValueError(f"duration_features: {d1.size} and {d2.size} durations; give one per trial on each side")
    if not (np.isfinite(d1).all() and np.isfinite(d2).all()):
        raise ValueError("duration_features: durations must be finite")
    return {"log_min_duration": np.log(np.minimum(d1, d2)), "log_max_duration": np.log(np.maximum(d1, d2))}


# ------------------------------------------------------------------------------------------------ measures
def cllr(llrs: Any, labels: Any) -> float:
    """Log-likelihood-ratio cost in bits: ``½·(mean log2(1 + e^−LLR) over targets + mean log2(1 + e^LLR) over
    non-targets)``. 0 is perfect; 1 is the cost of always answering LLR = 0.

    >>> cllr([0.0, 0.0], [1, 0])
    1.0
    >>> round(cllr([10.0, -10.0], [1, 0]), 4)
    0.0001
    """
    s, y = _inf_ok(llrs, labels)
    c_tar = np.logaddexp(0.0, -s[y]).mean()
    c_non = np.logaddexp(0.0, s[~y]).mean()
    return float(0.5 * (c_tar + c_non) / math.log(2.0))


def _inf_ok(llrs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Like _scores_labels, but ±inf LLRs (a PAV output) are allowed."""
    s = as_float_vector(llrs)
    if np.isnan(s).any():
        raise ValueError("llrs: NaN values")
    finite = np.where(np.isfinite(s), s, 0.0)
    _, y = check_scores_labels(finite, labels)
    return s, y


def pav_llr(scores: Any, labels: Any) -> np.ndarray:
    """The optimal monotone mapping of ``scores`` to LLRs on these trials (pool-adjacent-violators, ties pooled).

    The PAV posterior of each score bin is converted to an LLR by removing the trials' own prior; it can be
    ±inf where a bin holds only one class.

    >>> pav_llr([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]).round(3).tolist()
    [-inf, 0.0, 0.0, inf]
    """
    s, y = check_scores_labels(scores, labels)
    values, inverse = np.unique(s, return_inverse=True)
    inverse = inverse.reshape(-1)
    tgt = np.bincount(inverse, weights=y.astype(np.float64), minlength=values.size)
    cnt = np.bincount(inverse, minlength=values.size).astype(np.float64)
    # Stack of pooled blocks: (targets, count, number of tie groups in the block).
    b_t: list[float] = []
    b_n: list[float] = []
    b_len: list[int] = []
    for t, n in zip(tgt.tolist(), cnt.tolist()):
        b_t.append(t)
        b_n.append(n)
        b_len.append(1)
        while len(b_t) > 1 and b_t[-2] * b_n[-1] >= b_t[-1] * b_n[-2]:  # previous mean >= last mean: pool
            t_last, n_last, l_last = b_t.pop(), b_n.pop(), b_len.pop()
            b_t[-1] += t_last
            b_n[-1] += n_last
            b_len[-1] += l_last
    post = np.repeat(np.asarray(b_t) / np.asarray(b_n), b_len)
    prior = float(y.mean())
    return np.asarray(logit(post), dtype=np.float64)[inverse] - float(logit(prior))


def min_cllr(scores: Any, labels: Any) -> float:
    """The Cllr (bits) of the best monotone calibration of ``scores`` (PAV): the discrimination part of Cllr.

    >>> min_cllr([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    0.0
    >>> min_cllr([0.5, 0.5], [1, 0])
    1.0
    """
    return cllr(pav_llr(scores, labels), labels)


def dcf_at_threshold(
    scores: Any, labels: Any, threshold: float, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Normalised detection cost of accepting ``score >= threshold`` (the same normalisation as minDCF).

    >>> dcf_at_threshold([0.9, 0.2, 0.6, 0.1], [1, 1, 0, 0], threshold=0.5, p_target=0.5)
    1.0
    """
    s, y = check_scores_labels(scores, labels)
    p = check_rate(p_target, "p_target")
    if not (float(c_miss) > 0 and float(c_fa) > 0):
        raise ConfigError(f"c_miss and c_fa must be > 0, got {c_miss!r}, {c_fa!r}")
    p_miss = float((s[y] < threshold).mean())
    p_fa = float((s[~y] >= threshold).mean())
    return (c_miss * p * p_miss + c_fa * (1 - p) * p_fa) / min(c_miss * p, c_fa * (1 - p))


def actual_dcf(llrs: Any, labels: Any, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised cost of the Bayes decisions the LLRs imply: accept when ``LLR ≥ log(c_fa·(1−p)/(c_miss·p))``.

    Compare with :func:`mvector.evaluation.metrics.compute_min_dcf` on the same trials: the gap is the cost of
    mis-calibration at this operating point.

    >>> actual_dcf([5.0, 6.0, -6.0, -5.0], [1, 1, 0, 0], p_target=0.01)
    0.0
    >>> actual_dcf([3.0, 4.0, -6.0, -5.0], [1, 1, 0, 0], p_target=0.01)  # LLRs too timid for this prior
    1.0
    """
    p = check_rate(p_target, "p_target")
    threshold = math.log(float(c_fa) * (1 - p) / (float(c_miss) * p))
    return dcf_at_threshold(llrs, labels, threshold, p, c_miss, c_fa)


# ------------------------------------------------------------------------------------------------ the model
@dataclass
class Calibration:
    """An affine score → LLR map ``LLR = weights["score"]·score + bias (+ Σ weights[q]·q)`` with its provenance.

    Attributes:
        weights: coefficient per feature (``"score"`` first, then any of :data:`QUALITY_FEATURES`).
        bias: the offset.
        prior: the prior the fit was weighted to (the LLR does not depend on it; it is recorded).
        score_type: what the score is (``"cosine"``, ``"as_norm"``); a calibration applies to that score only.
        model_fingerprint: the model the scores came from (``None``: not tied to a model).
        fitted_on: where the trials came from and how many there were.
        metrics: measures on the fitting data (``cllr``, ``min_cllr``, ...).
        operating_point: the decision threshold and how it was chosen (see :func:`choose_operating_point`).
        nontarget: the upper tail of the non-target score distribution of the fitting trials
            (:meth:`mvector.evaluation.gallery.NonTargetTail.to_dict`), which identification needs to keep a
            false-positive identification rate at any gallery size; ``None`` when not stored.

    >>> cal = Calibration(weights={"score": 10.0}, bias=-5.0)
    >>> cal.llr([0.5, 0.8]).tolist(), round(float(cal.probability(0.8, prior=0.5)), 4)
    ([0.0, 3.0], 0.9526)
    >>> Calibration.from_dict(cal.to_dict()) == cal
    True
    """

    weights: dict[str, float]
    bias: float
    prior: float = 0.5
    score_type: str = "cosine"
    model_fingerprint: str | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    operating_point: dict[str, Any] | None = None
    nontarget: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.weights, Mapping) or "score" not in self.weights:
            raise ConfigError(f"a calibration needs a 'score' weight, got weights {self.weights!r}")
        unknown = [k for k in self.weights if k != "score" and k not in QUALITY_FEATURES]
        if unknown:
            raise ConfigError(
                f"unknown calibration feature(s) {unknown}; known: score, {', '.join(QUALITY_FEATURES)}"
            )
        self.weights = {str(k): float(v) for k, v in self.weights.items()}
        self.bias = float(self.bias)
        if not all(math.isfinite(v) for v in [*self.weights.values(), self.bias]):
            raise ConfigError(f"calibration weights must be finite, got {self.weights}, bias {self.bias}")
        self.prior = check_rate(self.prior, "prior")

    @property
    def quality_features(self) -> tuple[str, ...]:
        """The quality measures (besides the score) this calibration needs, in order."""
        return tuple(k for k in self.weights if k != "score")

    @property
    def needs_durations(self) -> bool:
        """Whether :meth:`llr` needs the two sides' durations (see :func:`duration_features`)."""
        return bool(self.quality_features)

    def llr(self, scores: Any, quality: Mapping[str, Any] | None = None) -> Any:
        """The calibrated LLR of each score (a float for a scalar score).

        ``quality`` maps each of :attr:`quality_features` to one value per score (e.g. from
        :func:`duration_features`); it is required exactly when the calibration uses quality measures.
        """
        s = np.asarray(scores, dtype=np.float64)
        out = self.weights["score"] * s + self.bias
        needed = self.quality_features
        if needed:
            if quality is None:
                raise ConfigError(
                    f"this calibration uses quality measures {list(needed)}; pass quality= (duration_features)"
                )
            missing = [k for k in needed if k not in quality]
            if missing:
                raise ConfigError(f"quality measures missing: {missing} (the calibration uses {list(needed)})")
            for k in needed:
                q = np.asarray(quality[k], dtype=np.float64)
                if q.shape != s.shape and q.size != 1:
                    raise ConfigError(f"quality measure {k!r}: {q.size} values for {s.size} scores")
                out = out + self.weights[k] * (q.reshape(s.shape) if q.size == s.size else q.reshape(()))
        return out if np.ndim(out) else float(out)

    def probability(self, scores: Any, prior: float = 0.5, quality: Mapping[str, Any] | None = None) -> Any:
        """Probability of "same speaker" at ``prior``: ``sigmoid(LLR + logit(prior))``."""
        return sigmoid(np.asarray(self.llr(scores, quality)) + logit(check_rate(prior, "prior")))

    def score_for_llr(self, llr_value: float) -> float | None:
        """The raw score whose LLR is ``llr_value`` (``None`` when quality measures also move the LLR).

        >>> Calibration(weights={"score": 10.0}, bias=-5.0).score_for_llr(0.0)
        0.5
        """
        a = self.weights["score"]
        if self.quality_features or a <= 0:
            return None
        return (float(llr_value) - self.bias) / a

    # ---------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the content of ``calibration.json``)."""
        return {
            "format": "mvector-calibration",
            "version": FORMAT_VERSION,
            "kind": "linear-logistic",
            "score_type": self.score_type,
            "model_fingerprint": self.model_fingerprint,
            "prior": self.prior,
            "weights": dict(self.weights),
            "bias": self.bias,
            "fitted_on": dict(self.fitted_on),
            "metrics": dict(self.metrics),
            "operating_point": None if self.operating_point is None else dict(self.operating_point),
            "nontarget": None if self.nontarget is None else dict(self.nontarget),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "calibration") -> Calibration:
        """Rebuild from :meth:`to_dict` output; a missing or wrong field is a :class:`ConfigError` naming it."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", "mvector-calibration") != "mvector-calibration":
            raise ConfigError(f"{where}: 'format' is {data.get('format')!r}, not an mvector calibration")
        version = data.get("version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(f"{where}: calibration format version {version!r} is newer than this mvector reads")
        for key in ("weights", "bias"):
            if key not in data:
                raise ConfigError(f"{where}: missing field {key!r}")
        weights = data["weights"]
        if not isinstance(weights, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights.values()
        ):
            raise ConfigError(f"{where}: field 'weights' must map feature names to numbers, got {weights!r}")
        if not isinstance(data["bias"], (int, float)) or isinstance(data["bias"], bool):
            raise ConfigError(f"{where}: field 'bias' must be a number, got {data['bias']!r}")
        op = data.get("operating_point")
        if op is not None and not isinstance(op, Mapping):
            raise ConfigError(f"{where}: field 'operating_point' must be an object or null")
        fp = data.get("model_fingerprint")
        nontarget = data.get("nontarget")
        if nontarget is not None:
            if not isinstance(nontarget, Mapping):
                raise ConfigError(f"{where}: field 'nontarget' must be an object or null")
            NonTargetTail.from_dict(nontarget, where=f"{where}: field 'nontarget'")  # checked now, not when used
        try:
            return cls(
                weights=dict(weights),
                bias=data["bias"],
                prior=data.get("prior", 0.5),
                score_type=str(data.get("score_type", "cosine")),
                model_fingerprint=None if fp is None else str(fp),
                fitted_on=dict(data.get("fitted_on") or {}),
                metrics=dict(data.get("metrics") or {}),
                operating_point=None if op is None else dict(op),
                nontarget=None if nontarget is None else dict(nontarget),
            )
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
