"""Fitting a score calibration: prior-weighted logistic regression (:func:`fit_calibration`), operating points
chosen by meaning (:func:`choose_operating_point`), the measures that judge scores and calibration on labelled
trials (:func:`calibration_report`), honest cross-validated LLRs (:func:`cross_validated_llrs`) and the whole
workflow from trials to a calibration with an operating point (:func:`fit_from_trials`). The LLR map itself and
its measures are :mod:`mvector.evaluation.calibration`.

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

import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mvector.errors import ConfigError
from mvector.evaluation.calibration import (
    QUALITY_FEATURES,
    Calibration,
    actual_dcf,
    as_float_vector,
    cllr,
    dcf_at_threshold,
    duration_features,
    logit,
    min_cllr,
    sigmoid,
)
from mvector.evaluation.gallery import NonTargetTail, check_rate
from mvector.evaluation.metrics import check_scores_labels

__all__ = [
    "OPERATING_RULES",
    "fit_calibration",
    "choose_operating_point",
    "calibration_report",
    "cross_validated_llrs",
    "fit_from_trials",
]

#: Ways to choose a threshold (see :func:`choose_operating_point`).
OPERATING_RULES = ("far", "frr", "eer", "probability")


# ------------------------------------------------------------------------------------------------ fitting
def _quality_matrix(quality: Mapping[str, Any] | None, names: Sequence[str], n: int) -> np.ndarray:
    cols = []
    for name in names:
        if name not in QUALITY_FEATURES:
            raise ConfigError(f"unknown quality measure {name!r}; known: {', '.join(QUALITY_FEATURES)}")
        if quality is None or name not in quality:
            raise ConfigError(f"quality measure {name!r} requested but not given")
        q = as_float_vector(quality[name])
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
    s, y = check_scores_labels(scores, labels)
    p = check_rate(prior, "prior")
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
    s, y = check_scores_labels(scores, labels)
    if rule not in OPERATING_RULES:
        raise ConfigError(f"unknown threshold rule {rule!r}; choose one of {', '.join(OPERATING_RULES)}")
    tgt_scores, non_scores = s[y], s[~y]
    record: dict[str, Any] = {"rule": rule, "target": None if target is None else float(target)}
    llr_threshold = None
    if rule in ("far", "frr", "probability"):
        if target is None:
            raise ConfigError(f"threshold rule {rule!r} needs a target")
        check_rate(target, f"target of rule {rule!r}")
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
        p = check_rate(prior, "prior")
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

    s, y = check_scores_labels(scores, labels)
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
    s, y = check_scores_labels(scores, labels)
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
