"""Score calibration: turn a raw similarity score into a log-likelihood ratio (LLR) that means something.

A raw cosine score only ranks trials; its scale depends on the model, the data and the scoring back-end, so a
threshold copied from elsewhere means nothing. A *calibrated* score is a log-likelihood ratio

    LLR = log P(score | same speaker) / P(score | different speakers)

so that, for a prior probability ``π`` that the two recordings come from the same speaker, the probability of
"same speaker" is ``sigmoid(LLR + logit(π))``, and the cost-minimising (Bayes) decision at a cost setting is a
threshold on the LLR that is known in advance: ``accept when LLR ≥ log(c_fa·(1−π) / (c_miss·π))``.

The calibration is an affine map fitted by prior-weighted logistic regression (Brümmer's linear calibration, the
method of the NIST SRE / BOSARIS tradition): ``LLR = a·score + b (+ Σ wᵢ·qᵢ)``, where the optional quality
measures ``qᵢ`` (the log speech durations of the two recordings: the idea behind quality measure functions, QMF)
let the mapping depend on how much speech each side had. The fit minimises the cross-entropy with targets and
non-targets weighted to a stated prior (default 0.5), which is convex; it is solved by Newton's method with a
backtracking line search on standardised features and a small L2 penalty (so a perfectly separable set gives a
sharp but finite map).

Measures that judge a calibration:

* ``Cllr`` (:func:`cllr`, in bits): the cross-entropy of the LLRs at prior 0.5. 0 is perfect, 1 is a system that
  always says LLR = 0, above 1 is worse than saying nothing.
* ``min Cllr`` (:func:`min_cllr`): the Cllr after the best monotone re-mapping of the scores (pool-adjacent-
  violators, PAV); the part of Cllr that no calibration can remove. ``Cllr − min Cllr`` is the calibration loss.
* actual DCF (:func:`actual_dcf`) next to minDCF (:func:`mvector.evaluation.metrics.compute_min_dcf`): the cost of the
  Bayes decisions the LLRs imply, against the best threshold chosen with hindsight.

Operating points (:func:`choose_operating_point`) are chosen by meaning: a target false-acceptance rate, a target
false-rejection rate, the EER point or a minimum probability of "same speaker"; each records how it was chosen and
on what data. Everything is saved as plain JSON (:meth:`Calibration.save`), never pickle.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> scores = np.concatenate([rng.normal(0.3, 0.1, 2000), rng.normal(0.1, 0.1, 2000)])  # targets, non-targets
>>> labels = np.r_[np.ones(2000), np.zeros(2000)]
>>> cal = fit_calibration(scores, labels)
>>> round(cal.weights["score"], 1), round(cal.bias, 1)     # theory: a = 0.2/0.1² = 20, b = −20·0.2 = −4
(19.3, -3.8)
>>> round(float(cal.probability(0.2)), 2), round(float(cal.probability(0.4)), 2)   # at prior 0.5
(0.51, 0.98)
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from mvector.errors import CheckpointError, ConfigError
from mvector.evaluation.gallery import NonTargetTail, check_rate

__all__ = [
    "CALIBRATION_FILENAME",
    "QUALITY_FEATURES",
    "OPERATING_RULES",
    "Calibration",
    "fit_calibration",
    "cllr",
    "min_cllr",
    "pav_llr",
    "actual_dcf",
    "dcf_at_threshold",
    "choose_operating_point",
    "calibration_report",
    "duration_features",
    "load_calibration",
    "save_reliability_plot",
    "reliability_curve",
    "logit",
    "sigmoid",
    "cross_validated_llrs",
    "fit_from_trials",
    "ContrastResult",
    "resolve_threshold",
]

#: File name of a calibration stored in a model folder.
CALIBRATION_FILENAME = "calibration.json"
#: Quality measures a calibration may use besides the score (computed by :func:`duration_features`).
QUALITY_FEATURES = ("log_min_duration", "log_max_duration")
#: Ways to choose a threshold (see :func:`choose_operating_point`).
OPERATING_RULES = ("far", "frr", "eer", "probability")
FORMAT_VERSION = 1

PathLike = Union[str, os.PathLike]


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


def _check_prior(p: Any, what: str = "prior") -> float:
    return check_rate(p, what)


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finite float64 scores and boolean labels with both classes present, or a ValueError naming the problem."""
    from mvector.evaluation.metrics import check_scores_labels

    return check_scores_labels(scores, labels)


def _as_vector(x: Any, name: str) -> np.ndarray:
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
    d1 = np.maximum(_as_vector(duration1, "duration1"), 0.1)
    d2 = np.maximum(_as_vector(duration2, "duration2"), 0.1)
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
    s = _as_vector(llrs, "llrs")
    if np.isnan(s).any():
        raise ValueError("llrs: NaN values")
    finite = np.where(np.isfinite(s), s, 0.0)
    _, y = _scores_labels(finite, labels)
    return s, y


def pav_llr(scores: Any, labels: Any) -> np.ndarray:
    """The optimal monotone mapping of ``scores`` to LLRs on these trials (pool-adjacent-violators, ties pooled).

    The PAV posterior of each score bin is converted to an LLR by removing the trials' own prior; it can be
    ±inf where a bin holds only one class.

    >>> pav_llr([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]).round(3).tolist()
    [-inf, 0.0, 0.0, inf]
    """
    s, y = _scores_labels(scores, labels)
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
    s, y = _scores_labels(scores, labels)
    p = _check_prior(p_target, "p_target")
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
    p = _check_prior(p_target, "p_target")
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
        self.prior = _check_prior(self.prior)

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
        return sigmoid(np.asarray(self.llr(scores, quality)) + logit(_check_prior(prior)))

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

    def save(self, path: PathLike) -> Path:
        """Write the calibration as JSON, atomically (temporary file, fsync, rename). A folder means
        ``<folder>/calibration.json``. Returns the path written."""
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_FILENAME
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:  # open() follows the umask
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            raise CheckpointError(f"{path}: cannot write the calibration ({err})") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: PathLike) -> Calibration:
        """Read a calibration saved by :meth:`save` (a folder means ``<folder>/calibration.json``).

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Calibration(weights={"score": 4.0}, bias=-1.0, model_fingerprint="abc").save(d)
        ...     Calibration.load(d).model_fingerprint
        'abc'
        """
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_FILENAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no calibration file (fit one with `mvector calibrate`)") from None
        except (OSError, ValueError, RecursionError) as err:
            raise CheckpointError(f"{path}: damaged calibration JSON ({err})") from None
        try:
            return cls.from_dict(data, where=str(path))
        except ConfigError as err:
            raise CheckpointError(str(err)) from None


def load_calibration(model_dir: PathLike, fingerprint: str | None = None, strict: bool = False) -> Calibration | None:
    """The calibration stored in a model folder, or ``None`` when there is none.

    A calibration fitted on another model (its ``model_fingerprint`` differs from ``fingerprint``) is ignored
    with a warning, or refused with :class:`~mvector.errors.CheckpointError` when ``strict``: its LLRs would be
    meaningless for this model.

    >>> import tempfile, warnings
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = Calibration(weights={"score": 4.0}, bias=-1.0, model_fingerprint="aaa").save(d)
    ...     with warnings.catch_warnings(record=True) as caught:
    ...         warnings.simplefilter("always")
    ...         print(load_calibration(d, "bbb"), len(caught))
    None 1
    """
    path = Path(model_dir) / CALIBRATION_FILENAME
    if not path.is_file():
        return None
    cal = Calibration.load(path)
    if fingerprint is not None and cal.model_fingerprint is not None and cal.model_fingerprint != fingerprint:
        message = (
            f"{path} was fitted for another model (fingerprint {cal.model_fingerprint[:12]}, this model "
            f"{str(fingerprint)[:12]}); its LLRs do not apply. Fit it again: mvector calibrate --model_path "
            f"{Path(model_dir)} --trials ..."
        )
        if strict:
            raise CheckpointError(message)
        import warnings

        warnings.warn(message + " — ignoring it", stacklevel=2)
        return None
    return cal


# ------------------------------------------------------------------------------------------------ fitting
def _quality_matrix(quality: Mapping[str, Any] | None, names: Sequence[str], n: int) -> np.ndarray:
    cols = []
    for name in names:
        if name not in QUALITY_FEATURES:
            raise ConfigError(f"unknown quality measure {name!r}; known: {', '.join(QUALITY_FEATURES)}")
        if quality is None or name not in quality:
            raise ConfigError(f"quality measure {name!r} requested but not given")
        q = _as_vector(quality[name], name)
        if q.size != n:
            raise ValueError(f"quality measure {name!r}: {q.size} values for {n} trials")
        if not np.isfinite(q).all():
            raise ValueError(f"quality measure {name!r}: values must be finite")
        cols.append(q)
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0))


def _newton_logistic(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, offset: float, l2: float, max_iter: int = 100
) -> tuple[np.ndarray, int]:
    """Minimise ``Σ wᵢ·log(1 + exp(−ỹᵢ·(xᵢ·θ + offset))) + ½·l2·|θ[:-1]|²`` (last column: intercept, unpenalised).

    Newton steps with a backtracking (Armijo) line search; the objective is convex, so this converges to the
    global minimum. Returns ``(θ, iterations)``.
    """
    sign = np.where(y, 1.0, -1.0)
    theta = np.zeros(x.shape[1])
    penal = np.ones(x.shape[1])
    penal[-1] = 0.0

    def objective(t: np.ndarray) -> float:
        z = sign * (x @ t + offset)
        return float(weight @ np.logaddexp(0.0, -z) + 0.5 * l2 * np.sum(penal * t * t))

    f = objective(theta)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        z = sign * (x @ theta + offset)
        p = sigmoid(-z)  # derivative of log(1+e^-z) is -sigmoid(-z)
        grad = x.T @ (weight * (-sign * p)) + l2 * penal * theta
        h = (weight * p * (1.0 - p))[:, None] * x
        hess = x.T @ h + np.diag(l2 * penal + 1e-12)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrease = float(grad @ step)
        if decrease < 1e-14:
            break
        lr = 1.0
        while True:
            candidate = theta - lr * step
            f_new = objective(candidate)
            if f_new <= f - 1e-4 * lr * decrease or lr < 1e-10:
                break
            lr *= 0.5
        theta, f_old, f = candidate, f, f_new
        if abs(f_old - f) < 1e-12 * max(1.0, abs(f)):
            break
    return theta, it


def fit_calibration(
    scores: Any,
    labels: Any,
    prior: float = 0.5,
    quality: Mapping[str, Any] | None = None,
    quality_features: Sequence[str] = (),
    l2: float = 1e-5,
    score_type: str = "cosine",
    model_fingerprint: str | None = None,
    data: str | None = None,
) -> Calibration:
    """Fit an affine score → LLR calibration by prior-weighted logistic regression.

    Targets and non-targets are weighted ``prior / N_target`` and ``(1 − prior) / N_nontarget`` and the
    logit of the prior is added to the LLR inside the cross-entropy, so the result is an LLR whatever the
    proportion of target trials in the data (the standard recipe; ``prior=0.5`` makes the objective Cllr).
    ``quality_features`` (any of :data:`QUALITY_FEATURES`, values in ``quality``) add terms ``wᵢ·qᵢ``. ``l2``
    penalises the slopes (on standardised features) so separable data give a finite map. ``data`` names the
    trials for the record.

    >>> cal = fit_calibration([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1])   # separable
    >>> bool(cal.llr(0.8) > 5 and cal.llr(0.2) < -5)
    True
    """
    s, y = _scores_labels(scores, labels)
    p = _check_prior(prior)
    if not (isinstance(l2, (int, float)) and not isinstance(l2, bool) and l2 >= 0 and math.isfinite(l2)):
        raise ConfigError(f"l2 must be a finite number >= 0, got {l2!r}")
    names = list(dict.fromkeys(quality_features))
    q = _quality_matrix(quality, names, s.size)
    feats = np.column_stack([s, q])
    mean = feats.mean(axis=0)
    std = feats.std(axis=0)
    std[std < 1e-12] = 1.0  # a constant column carries no information; its weight stays 0 via the penalty
    x = np.column_stack([(feats - mean) / std, np.ones(s.size)])
    n_t, n_n = int(y.sum()), int((~y).sum())
    weight = np.where(y, p / n_t, (1.0 - p) / n_n)
    theta, iterations = _newton_logistic(x, y, weight, float(logit(p)), float(l2))
    slopes = theta[:-1] / std
    bias = float(theta[-1] - np.sum(slopes * mean))
    weights = {"score": float(slopes[0])}
    weights.update({name: float(w) for name, w in zip(names, slopes[1:])})
    cal = Calibration(
        weights=weights,
        bias=bias,
        prior=p,
        score_type=score_type,
        model_fingerprint=model_fingerprint,
        fitted_on={
            "data": data,
            "n_target": n_t,
            "n_nontarget": n_n,
            "l2": float(l2),
            "iterations": int(iterations),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    llrs = np.asarray(cal.llr(s, dict(zip(names, q.T)) if names else None))
    cal.metrics = {"cllr": cllr(llrs, y), "min_cllr": min_cllr(s, y) if not names else min_cllr(llrs, y)}
    return cal


# ------------------------------------------------------------------------------------------------ thresholds
def choose_operating_point(
    scores: Any,
    labels: Any,
    rule: str,
    target: float | None = None,
    calibration: Calibration | None = None,
    prior: float = 0.5,
    data: str | None = None,
    score_type: str = "cosine",
) -> dict[str, Any]:
    """Choose a decision threshold by meaning, and record how and on what data.

    Rules (accept a trial when ``score >= threshold``):

    * ``"far"``: the lowest threshold whose false-acceptance rate on these trials is at most ``target``;
    * ``"frr"``: the highest threshold whose false-rejection rate is at most ``target``;
    * ``"eer"``: the EER operating point (``target`` unused);
    * ``"probability"``: accept when the calibrated probability of "same speaker" at ``prior`` is at least
      ``target``: ``llr_threshold = logit(target) − logit(prior)``; needs ``calibration``. The score threshold
      is given too when the calibration uses the score only (else it is ``None`` and the decision is on the LLR).

    The record holds ``rule``, ``target``, ``threshold``, ``data``, the trial counts and the FAR/FRR reached
    on these trials (for ``"probability"`` also ``prior`` and ``llr_threshold``).

    >>> op = choose_operating_point([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 1, 0, 1, 0, 0], "far", 0.34, data="t.txt")
    >>> op["threshold"], op["far"], op["rule"], op["data"]
    (0.6, 0.3333333333333333, 'far', 't.txt')
    """
    s, y = _scores_labels(scores, labels)
    if rule not in OPERATING_RULES:
        raise ConfigError(f"unknown threshold rule {rule!r}; choose one of {', '.join(OPERATING_RULES)}")
    tgt_scores, non_scores = s[y], s[~y]
    record: dict[str, Any] = {"rule": rule, "target": None if target is None else float(target)}
    llr_threshold = None
    if rule in ("far", "frr", "probability"):
        if target is None:
            raise ConfigError(f"threshold rule {rule!r} needs a target")
        _check_prior(target, f"target of rule {rule!r}")
    if rule == "far":
        ordered = np.sort(non_scores)[::-1]
        allowed = int(math.floor(float(target) * ordered.size + 1e-9))
        if allowed >= ordered.size:
            threshold = float(s.min())
        else:  # just above the (allowed+1)-th highest non-target: at most `allowed` are accepted
            threshold = float(np.nextafter(ordered[allowed], np.inf))
            # the lowest threshold accepting the same trials: the smallest score above that non-target
            above = s[s > ordered[allowed]]
            threshold = float(above.min()) if above.size else threshold
    elif rule == "frr":
        ordered = np.sort(tgt_scores)
        allowed = int(math.floor(float(target) * ordered.size + 1e-9))
        threshold = float(ordered[min(allowed, ordered.size - 1)])
    elif rule == "eer":
        from mvector.evaluation.metrics import compute_eer

        threshold = compute_eer(s, y)[1]
    else:
        if calibration is None:
            raise ConfigError("threshold rule 'probability' needs a calibration (fit one first)")
        p = _check_prior(prior)
        llr_threshold = float(logit(float(target)) - logit(p))
        threshold = calibration.score_for_llr(llr_threshold)
        record.update({"prior": p, "llr_threshold": llr_threshold})
    if threshold is not None:
        far = float((non_scores >= threshold).mean())
        frr = float((tgt_scores < threshold).mean())
    else:  # decision on the LLR (quality measures present): the rates need them, not known here
        far = frr = None
    record.update(
        {
            "threshold": threshold,
            "score_type": score_type,
            "data": data,
            "n_target": int(tgt_scores.size),
            "n_nontarget": int(non_scores.size),
            "far": far,
            "frr": frr,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    return record


# ------------------------------------------------------------------------------------------------ report
def calibration_report(
    scores: Any,
    labels: Any,
    calibration: Calibration | None = None,
    quality: Mapping[str, Any] | None = None,
    p_target: float = 0.01,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The measures that judge scores and their calibration on labelled trials, as one JSON-ready dict.

    Always: ``n_target``, ``n_nontarget``, ``eer``, ``min_dcf`` (at ``p_target``), ``min_cllr``, and
    ``cllr_raw`` (the raw scores read as LLRs, what an uncalibrated system claims). With ``calibration``:
    ``cllr`` and ``act_dcf`` of its LLRs. With ``threshold`` (a raw-score threshold chosen beforehand):
    ``act_dcf_threshold``, ``far_threshold``, ``frr_threshold``, what that fixed threshold costs here.

    >>> r = calibration_report([0.9, 0.8, 0.3, 0.2], [1, 1, 0, 0], Calibration({"score": 20.0}, -11.0))
    >>> r["eer"], r["min_cllr"], round(r["cllr"], 3), r["act_dcf"]
    (0.0, 0.0, 0.006, 0.0)
    """
    from mvector.evaluation.metrics import compute_eer, compute_min_dcf

    s, y = _scores_labels(scores, labels)
    out: dict[str, Any] = {
        "n_target": int(y.sum()),
        "n_nontarget": int((~y).sum()),
        "p_target": float(p_target),
        "eer": compute_eer(s, y)[0],
        "min_dcf": compute_min_dcf(s, y, p_target=p_target)[0],
        "min_cllr": min_cllr(s, y),
        "cllr_raw": cllr(s, y),
    }
    if calibration is not None:
        llrs = np.asarray(calibration.llr(s, quality), dtype=np.float64)
        out["cllr"] = cllr(llrs, y)
        if calibration.quality_features:
            out["min_cllr"] = min(out["min_cllr"], min_cllr(llrs, y))
        out["act_dcf"] = actual_dcf(llrs, y, p_target=p_target)
    if threshold is not None:
        out["act_dcf_threshold"] = dcf_at_threshold(s, y, float(threshold), p_target)
        out["far_threshold"] = float((s[~y] >= threshold).mean())
        out["frr_threshold"] = float((s[y] < threshold).mean())
    return out


def reliability_curve(
    probabilities: Any, labels: Any, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin of predicted probability: ``(mean predicted, observed fraction of targets, count)``; empty bins
    are left out.

    >>> pred, obs, n = reliability_curve([0.1, 0.15, 0.9, 0.95], [0, 0, 1, 1], bins=2)
    >>> pred.round(3).tolist(), obs.tolist(), n.tolist()
    ([0.125, 0.925], [0.0, 1.0], [2, 2])
    """
    p = _as_vector(probabilities, "probabilities")
    _, y = _scores_labels(np.where(np.isfinite(p), p, 0.0), labels)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    keep = count > 0
    pred = np.bincount(idx, weights=p, minlength=bins)[keep] / count[keep]
    obs = np.bincount(idx, weights=y.astype(np.float64), minlength=bins)[keep] / count[keep]
    return pred, obs, count[keep]


def save_reliability_plot(
    scores: Any,
    labels: Any,
    path: PathLike,
    calibration: Calibration | None = None,
    quality: Mapping[str, Any] | None = None,
    bins: int = 10,
) -> Path:
    """Write a reliability plot (PNG): predicted probability of "same speaker" vs the observed fraction.

    The probabilities are taken at the trials' own proportion of targets, so a calibrated system lies on the
    diagonal. Drawn: the calibrated probabilities (when ``calibration`` is given) and, as the uncalibrated
    baseline, ``(cos + 1) / 2`` read as a probability. Returns the path written (atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s, y = _scores_labels(scores, labels)
    prior = float(y.mean())
    fig = Figure(figsize=(5.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
    raw = np.clip((s + 1.0) / 2.0, 0.0, 1.0)
    pred, obs, n = reliability_curve(raw, y, bins)
    ax.plot(pred, obs, marker="s", color="tab:orange", label="raw (cos + 1) / 2")
    if calibration is not None:
        prob = calibration.probability(s, prior=prior, quality=quality)
        pred, obs, n = reliability_curve(prob, y, bins)
        ax.plot(pred, obs, marker="o", color="tab:blue", label=f"calibrated, prior {prior:.2f}")
        for px, py, c in zip(pred, obs, n):
            ax.annotate(str(int(c)), (px, py), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability of same speaker")
    ax.set_ylabel("observed fraction of same-speaker trials")
    ax.set_title(f"Reliability ({int(y.sum())} target / {int((~y).sum())} non-target trials)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------------------------ workflows
def cross_validated_llrs(
    scores: Any,
    labels: Any,
    folds: int = 5,
    seed: int = 0,
    quality: Mapping[str, Any] | None = None,
    **fit_kwargs: Any,
) -> np.ndarray:
    """LLRs where each trial is calibrated by a map fitted on the *other* folds: an honest estimate of how the
    calibration does on unseen trials of the same kind (a Cllr on the fitting trials themselves is optimistic).

    >>> rng = np.random.default_rng(1)
    >>> s = np.r_[rng.normal(1, 1, 200), rng.normal(-1, 1, 200)]; y = np.r_[np.ones(200), np.zeros(200)]
    >>> round(cllr(cross_validated_llrs(s, y), y), 2)   # the fitting trials themselves would say a little less
    0.46
    """
    s, y = _scores_labels(scores, labels)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(s.size, dtype=np.int64)
    for cls in (True, False):  # stratified: each fold keeps both classes where possible
        idx = np.flatnonzero(y == cls)
        fold_of[idx] = rng.permutation(np.arange(idx.size) % folds)
    out = np.empty(s.size)
    for f in range(folds):
        test = fold_of == f
        train = ~test
        if not test.any():
            continue
        if y[train].all() or not y[train].any():
            raise ValueError(f"fold {f}: the other folds lack one class; use fewer folds or more trials")
        q_train = None if quality is None else {k: np.asarray(v)[train] for k, v in quality.items()}
        q_test = None if quality is None else {k: np.asarray(v)[test] for k, v in quality.items()}
        cal = fit_calibration(s[train], y[train], quality=q_train, **fit_kwargs)
        out[test] = cal.llr(s[test], q_test)
    return out


def fit_from_trials(
    trials: Sequence[tuple[int, str, str]],
    embed: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
    prior: float = 0.5,
    use_durations: bool = False,
    rule: str = "probability",
    target: float | None = 0.5,
    threshold_prior: float = 0.5,
    p_target: float = 0.01,
    folds: int = 5,
    data: str | None = None,
    model_fingerprint: str | None = None,
    score_pairs: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    score_type: str = "cosine",
) -> tuple[Calibration, dict[str, Any], np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    """Score labelled ``trials`` ``(label, enroll, test)`` with ``embed`` and fit a calibration with an
    operating point; returns ``(calibration, report, scores, labels, quality)``.

    ``score_pairs(embeddings, a, b)`` scores the pairs of rows ``a[i], b[i]`` as the model scores (its stored
    AS-norm cohort, ``score_type="as_norm_model"``); by default the cosine.

    ``embed(paths)`` returns the embeddings ``[N, D]`` and the durations in seconds ``[N]`` of the unique files
    (each file is embedded once). The report holds the measures on the trials (:func:`calibration_report`)
    and ``cllr_cv``, the Cllr of ``folds``-fold cross-validated LLRs (``None`` with too few trials).
    """
    if not trials:
        raise ConfigError("no trials given")
    files = sorted({p for _, a, b in trials for p in (a, b)})
    index = {p: i for i, p in enumerate(files)}
    emb, durations = embed(files)
    emb = np.asarray(emb, dtype=np.float64)
    durations = np.asarray(durations, dtype=np.float64).reshape(-1)
    if emb.ndim != 2 or emb.shape[0] != len(files) or durations.shape[0] != len(files):
        raise ValueError(
            f"embed returned {emb.shape} embeddings and {durations.shape} durations for {len(files)} files"
        )
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    a = np.fromiter((index[t[1]] for t in trials), dtype=np.int64, count=len(trials))
    b = np.fromiter((index[t[2]] for t in trials), dtype=np.int64, count=len(trials))
    if score_pairs is None:
        scores = np.einsum("ij,ij->i", unit[a], unit[b])
    else:
        scores = np.asarray(score_pairs(emb, a, b), dtype=np.float64)
    labels = np.fromiter((t[0] for t in trials), dtype=np.int64, count=len(trials))
    quality = duration_features(durations[a], durations[b]) if use_durations else None
    names = QUALITY_FEATURES if use_durations else ()
    cal = fit_calibration(
        scores, labels, prior=prior, quality=quality, quality_features=names,
        model_fingerprint=model_fingerprint, data=data, score_type=score_type,
    )  # fmt: skip
    cal.operating_point = choose_operating_point(
        scores, labels, rule, target, calibration=cal, prior=threshold_prior, data=data, score_type=score_type
    )
    if int((labels == 0).sum()) >= 100:  # what identification needs to keep an FPIR at any gallery size
        cal.nontarget = NonTargetTail.from_scores(scores[labels == 0], data=data).to_dict()
    report = calibration_report(scores, labels, cal, quality=quality, p_target=p_target)
    n_min = int(min(labels.sum(), (1 - labels).sum()))
    if n_min >= folds:
        cv = cross_validated_llrs(scores, labels, folds=folds, quality=quality, prior=prior, quality_features=names)
        report["cllr_cv"] = cllr(cv, labels)
        report["act_dcf_cv"] = actual_dcf(cv, labels, p_target=p_target)
    else:
        report["cllr_cv"] = report["act_dcf_cv"] = None
    cal.metrics = {k: v for k, v in report.items() if k != "p_target"} | {"p_target": p_target}
    return cal, report, scores, labels, quality


# ------------------------------------------------------------------------------------------------ inference glue
class ContrastResult(tuple):
    """The answer of a verification: unpacks as ``(score, same)`` like a plain tuple, and also carries the
    calibrated ``llr`` and ``probability`` of "same speaker" at ``prior`` (``None`` without a calibration) and
    the ``threshold`` used with its ``threshold_source`` (a sentence, or a dict).

    >>> r = ContrastResult(0.8, True, llr=2.0, probability=0.88, prior=0.5, threshold=0.6)
    >>> score, same = r
    >>> score, same, r.llr, r.probability
    (0.8, True, 2.0, 0.88)
    >>> r.to_dict()["probability"]
    0.88
    """

    def __new__(
        cls,
        score: float,
        same: bool,
        llr: float | None = None,
        probability: float | None = None,
        prior: float | None = None,
        threshold: float | None = None,
        threshold_source: str | Mapping[str, Any] | None = None,
    ) -> ContrastResult:
        obj = super().__new__(cls, (float(score), bool(same)))
        obj.llr = None if llr is None else float(llr)
        obj.probability = None if probability is None else float(probability)
        obj.prior = None if prior is None else float(prior)
        obj.threshold = None if threshold is None else float(threshold)
        if threshold_source is not None and not isinstance(threshold_source, str):
            threshold_source = dict(threshold_source)
        obj.threshold_source = threshold_source
        return obj

    @property
    def calibrated(self) -> bool:
        """Whether a calibration produced :attr:`llr` and :attr:`probability`."""
        return self.llr is not None

    @property
    def score(self) -> float:
        """The raw score."""
        return self[0]

    @property
    def same(self) -> bool:
        """The decision."""
        return self[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "score": self.score,
            "same": self.same,
            "llr": self.llr,
            "probability": self.probability,
            "prior": self.prior,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
        }

    def __getnewargs__(self):  # copy / pickle of the tuple keep the extras
        return (self.score, self.same, self.llr, self.probability, self.prior, self.threshold, self.threshold_source)


def resolve_threshold(
    model_dir: PathLike, calibration: Calibration | None = None, default: float = 0.5
) -> tuple[float, dict[str, Any]]:
    """The decision threshold of a model folder and where it came from, in order of preference:

    1. the operating point of its calibration (``calibration.json``: rule, target, data);
    2. the EER threshold of its evaluation (``result.json``, or an export's ``meta.json``);
    3. ``default``, with ``{"rule": "default"}`` (a caller should warn: it means nothing for this model).

    Returns ``(threshold, source)``; ``source`` always has ``rule`` and ``file`` (``None`` for the default).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     resolve_threshold(d)
    (0.5, {'rule': 'default', 'file': None})
    """
    folder = Path(model_dir)
    op = calibration.operating_point if calibration is not None else None
    if op and op.get("threshold") is not None:
        source = {k: op.get(k) for k in ("rule", "target", "data", "prior", "far", "frr", "created") if k in op}
        source["file"] = str(folder / CALIBRATION_FILENAME)
        return float(op["threshold"]), source
    for name in ("result.json", "meta.json"):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as err:
                raise CheckpointError(f"{path}: damaged JSON ({err})") from None
            value = data.get("threshold") if isinstance(data, dict) else None
            if value is not None:
                source = {"rule": "eer", "file": str(path)}
                if name == "result.json" and isinstance(data, dict):
                    for key in ("test_list", "trials_list", "trials", "num_trials", "eer"):
                        if key in data:
                            source[key] = data[key]
                return float(value), source
    return float(default), {"rule": "default", "file": None}
