"""Open-set identification: "who is this, among the enrolled speakers — or nobody we know?"

Closed-set identification always names the best-scoring enrolled speaker, even for a stranger. Open-set
identification may answer *unknown*: when the best score is below a threshold, or when the best and the
second-best speakers are too close to tell apart (a margin). The measures here follow the watch-list
literature (NIST / ISO 19795 "detection and identification rate"):

* **FAR** (false-alarm rate): the fraction of probes from *unknown* speakers that are accepted as someone;
* **DIR** (detection-and-identification rate): the fraction of probes from *enrolled* speakers that are
  accepted *and* named correctly (rank 1);
* **DIR at FAR = x**: the DIR at the lowest threshold whose FAR is at most x (:func:`dir_at_far`).

Inputs are a score matrix ``[n_probes, n_enrolled]`` (cosine, AS-norm or calibrated LLR: any "higher = more
alike" score) and, per probe, the column of its true speaker or ``-1`` for a speaker who is not enrolled.

>>> import numpy as np
>>> scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.45], [0.3, 0.2]])
>>> truth = np.array([0, 1, -1, -1])                     # the last two probes are strangers
>>> open_set_metrics(scores, truth, threshold=0.6)["dir"], open_set_metrics(scores, truth, threshold=0.6)["far"]
(1.0, 0.0)
>>> open_set_decision([("ann", 0.5), ("bob", 0.45)], threshold=0.4, margin=0.1).reason
'ambiguous'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mvector.errors import ConfigError
from mvector.evaluation.score_norm import ScoreNorm
from mvector.evaluation.scoring import cohort_stats
from mvector.evaluation.uncertainty import rate_interval

__all__ = [
    "gallery_scores",
    "OpenSetAnswer",
    "IdentificationResult",
    "open_set_decision",
    "open_set_metrics",
    "dir_at_far",
    "threshold_for_far",
    "open_set_protocol",
]


@dataclass(frozen=True)
class OpenSetAnswer:
    """The answer to one identification query.

    ``name`` is the identified speaker or ``None`` for *unknown*; ``score`` the best score; ``runner_up`` and
    ``runner_up_score`` the second-best (``None`` with one enrolled speaker); ``reason`` one of
    ``"accepted"``, ``"below_threshold"`` (the best score is under the threshold) or ``"ambiguous"`` (best and
    second-best are closer than the margin).

    >>> OpenSetAnswer("ann", 0.8, "bob", 0.3, "accepted").known
    True
    """

    name: str | None
    score: float
    runner_up: str | None
    runner_up_score: float | None
    reason: str

    @property
    def known(self) -> bool:
        """Whether a speaker was named."""
        return self.name is not None


class IdentificationResult(tuple):
    """The answer of ``recognize``: unpacks as ``(name, score)`` (``name`` is ``None`` for *unknown*) and carries
    ``reason``, ``unknown``, ``margin``, the ``runner_up`` and its score, the ``threshold`` and its
    ``threshold_source``, and, with a calibration, the ``llr`` and ``probability`` of the best match at ``prior``.
    Keyword extras of a decision over a gallery (:meth:`MVectorPredictor.recognize`) become attributes too:
    ``rule``, ``promise``, ``gallery_size``, ``expected_fpir``, ``posteriors``, ``p_unknown``, ``unknown_prior``,
    ``fpir`` (``None`` when not given).

    >>> r = IdentificationResult(OpenSetAnswer(None, 0.71, "bob", 0.69, "ambiguous"), threshold=0.5, margin=0.05)
    >>> name, score = r
    >>> name, score, r.unknown, r.reason, r.runner_up
    (None, 0.71, True, 'ambiguous', 'bob')
    """

    def __new__(
        cls,
        answer: OpenSetAnswer,
        threshold: float | None = None,
        margin: float = 0.0,
        llr: float | None = None,
        probability: float | None = None,
        prior: float | None = None,
        threshold_source: str | None = None,
        score_norm: str | None = None,
        **extras: Any,
    ) -> IdentificationResult:
        unknown_keys = sorted(set(extras) - set(_EXTRAS))
        if unknown_keys:
            raise TypeError(f"IdentificationResult: unknown field(s) {unknown_keys}; known: {', '.join(_EXTRAS)}")
        obj = super().__new__(cls, (answer.name, float(answer.score)))
        for key in _EXTRAS:
            setattr(obj, key, extras.get(key))
        obj.reason = answer.reason
        obj.unknown = answer.name is None
        obj.runner_up = answer.runner_up
        obj.runner_up_score = answer.runner_up_score
        obj.threshold = None if threshold is None else float(threshold)
        obj.margin = float(margin)
        obj.llr = None if llr is None else float(llr)
        obj.probability = None if probability is None else float(probability)
        obj.prior = None if prior is None else float(prior)
        obj.threshold_source = threshold_source
        obj.score_norm = score_norm
        return obj

    @property
    def calibrated(self) -> bool:
        """Whether a calibration produced :attr:`llr` and :attr:`probability`."""
        return self.llr is not None

    def __getnewargs_ex__(self):
        answer = OpenSetAnswer(self[0], self[1], self.runner_up, self.runner_up_score, self.reason)
        args = (answer, self.threshold, self.margin, self.llr, self.probability, self.prior, self.threshold_source,
                self.score_norm)  # fmt: skip
        return args, {k: getattr(self, k) for k in _EXTRAS if getattr(self, k, None) is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``name``, ``score`` and every attribute that is set."""
        out: dict[str, Any] = {"name": self[0], "score": self[1]}
        for key in ("unknown", "reason", "runner_up", "runner_up_score", "threshold", "margin", "llr",
                    "probability", "prior", "threshold_source", "score_norm", *_EXTRAS):  # fmt: skip
            value = getattr(self, key, None)
            if value is not None:
                out[key] = value
        return out


#: Attributes a decision over a gallery adds to an :class:`IdentificationResult`.
_EXTRAS = ("rule", "promise", "gallery_size", "expected_fpir", "posteriors", "p_unknown", "unknown_prior", "fpir")


def _check_margin(margin: Any) -> float:
    try:
        value = float(margin)
    except (TypeError, ValueError):
        raise ConfigError(f"margin must be a number >= 0, got {margin!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"margin must be a finite number >= 0, got {margin!r}")
    return value


def open_set_decision(hits: Sequence[tuple[str, float]], threshold: float, margin: float = 0.0) -> OpenSetAnswer:
    """Decide one query from its candidates ``[(name, score), ...]`` sorted best first.

    The best candidate is named when its score is at least ``threshold`` and it beats the second-best by at
    least ``margin``; otherwise the answer is *unknown* with the reason.

    >>> open_set_decision([("ann", 0.72), ("bob", 0.31)], threshold=0.5).name
    'ann'
    >>> open_set_decision([("ann", 0.42), ("bob", 0.31)], threshold=0.5).reason
    'below_threshold'
    """
    if not hits:
        raise ConfigError("open_set_decision: no candidates (is the speaker database empty?)")
    margin = _check_margin(margin)
    name, best = hits[0][0], float(hits[0][1])
    second_name, second = (hits[1][0], float(hits[1][1])) if len(hits) > 1 else (None, None)
    if best < float(threshold):
        return OpenSetAnswer(None, best, second_name, second, "below_threshold")
    if second is not None and best - second < margin:
        return OpenSetAnswer(None, best, second_name, second, "ambiguous")
    return OpenSetAnswer(name, best, second_name, second, "accepted")


def _inputs(scores: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth).reshape(-1)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(f"scores: expected a [n_probes, n_enrolled] matrix, got shape {tuple(s.shape)}")
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"truth: {t.shape[0]} entries for {s.shape[0]} probes")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"truth: expected integer column indices (-1 = not enrolled), got dtype {t.dtype}")
    if ((t < -1) | (t >= s.shape[1])).any():
        i = int(np.flatnonzero((t < -1) | (t >= s.shape[1]))[0])
        raise ValueError(f"truth[{i}] = {int(t[i])}: not a column of the {s.shape[1]} enrolled speakers nor -1")
    if not np.isfinite(s).all():
        raise ValueError("scores: NaN or infinite values")
    if not (t >= 0).any() or not (t < 0).any():
        raise ValueError("need probes of enrolled speakers (truth >= 0) and of unknown ones (truth = -1)")
    return s, t.astype(np.int64)


def _best_two(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    best_col = np.argmax(s, axis=1)
    best = s[np.arange(len(s)), best_col]
    if s.shape[1] > 1:
        second = np.partition(s, s.shape[1] - 2, axis=1)[:, -2]
    else:
        second = np.full(len(s), -np.inf)
    return best_col, best, second


def threshold_for_far(scores: Any, truth: Any, far: float, margin: float = 0.0) -> float:
    """The lowest threshold at which at most a fraction ``far`` of the unknown-speaker probes is accepted
    (with the margin rule applied too).

    >>> threshold_for_far([[0.9, 0.1], [0.6, 0.2], [0.4, 0.1]], [0, -1, -1], far=0.5)
    0.4000000000000001
    """
    s, t = _inputs(scores, truth)
    if not 0.0 <= float(far) <= 1.0:
        raise ConfigError(f"far must be in [0, 1], got {far!r}")
    margin = _check_margin(margin)
    _, best, second = _best_two(s[t < 0])
    candidates = np.sort(best[best - second >= margin])[::-1]  # probes the margin alone does not reject
    allowed = int(math.floor(float(far) * (t < 0).sum() + 1e-9))
    if allowed >= candidates.size:
        return float(-np.inf)
    return float(np.nextafter(candidates[allowed], np.inf))


def open_set_metrics(scores: Any, truth: Any, threshold: float, margin: float = 0.0) -> dict[str, Any]:
    """Outcome counts and rates of open-set decisions at one ``threshold`` and ``margin``.

    Returns ``dir`` (enrolled probes accepted and named correctly), ``far`` (unknown probes accepted),
    ``misidentified`` (enrolled probes accepted under another name), ``false_reject`` (enrolled probes answered
    *unknown*), ``rank1`` (closed-set accuracy, no threshold), ``accuracy`` (the fraction of all probes given the
    right answer, *unknown* being right for strangers), the counts, and ``dir_ci95`` / ``far_ci95`` (95 % Wilson
    intervals; probes of one speaker are not independent, so a speaker-level bootstrap is wider).

    >>> m = open_set_metrics([[0.9, 0.1], [0.3, 0.7], [0.6, 0.2]], [0, 0, -1], threshold=0.5)
    >>> m["dir"], m["misidentified"], m["far"], round(m["accuracy"], 3)
    (0.5, 0.5, 1.0, 0.333)
    """
    s, t = _inputs(scores, truth)
    margin = _check_margin(margin)
    best_col, best, second = _best_two(s)
    accepted = (best >= float(threshold)) & (best - second >= margin)
    known = t >= 0
    correct = best_col == t
    n_known, n_unknown = int(known.sum()), int((~known).sum())
    hits = int((accepted & known & correct).sum())
    misid = int((accepted & known & ~correct).sum())
    fa = int((accepted & ~known).sum())
    right = hits + (n_unknown - fa)
    return {
        "threshold": float(threshold),
        "margin": margin,
        "n_known_probes": n_known,
        "n_unknown_probes": n_unknown,
        "n_enrolled": int(s.shape[1]),
        "dir": hits / n_known,
        "misidentified": misid / n_known,
        "false_reject": (n_known - hits - misid) / n_known,
        "far": fa / n_unknown,
        "rank1": float(correct[known].mean()),
        "accuracy": right / (n_known + n_unknown),
        "dir_ci95": list(rate_interval(hits, n_known)),
        "far_ci95": list(rate_interval(fa, n_unknown)),
    }


def dir_at_far(
    scores: Any, truth: Any, fars: Sequence[float] = (0.01, 0.05, 0.1), margin: float = 0.0
) -> dict[str, Any]:
    """DIR at each false-alarm rate in ``fars`` (threshold chosen on these probes: an oracle operating point),
    plus the closed-set rank-1 rate; keys ``dir@far=0.01`` etc. and ``threshold@far=0.01``.

    >>> r = dir_at_far([[0.9, 0.1], [0.2, 0.7], [0.5, 0.1], [0.3, 0.2]], [0, 1, -1, -1], fars=(0.01, 0.5))
    >>> r["dir@far=0.01"], r["dir@far=0.5"], r["rank1"]
    (1.0, 1.0, 1.0)
    """
    s, t = _inputs(scores, truth)
    out: dict[str, Any] = {}
    for far in fars:
        thr = threshold_for_far(s, t, far, margin)
        m = open_set_metrics(s, t, thr, margin)
        out[f"dir@far={far:g}"] = m["dir"]
        out[f"threshold@far={far:g}"] = thr
        out[f"far_reached@far={far:g}"] = m["far"]
    out["rank1"] = float((np.argmax(s, axis=1) == t)[t >= 0].mean())
    out["n_known_probes"], out["n_unknown_probes"], out["n_enrolled"] = int((t >= 0).sum()), int((t < 0).sum()), int(
        s.shape[1]
    )
    return out


def gallery_scores(probes: np.ndarray, models: np.ndarray, score_norm: ScoreNorm | None) -> np.ndarray:
    """``[P, S]`` scores of unit probes against unit speaker means: cosine, or the model's AS-norm (both sides
    transformed, each normalised by its top cohort scores) as the speaker database scores a search.

    >>> rng = np.random.default_rng(0)
    >>> probes, models = np.eye(3, 4), np.eye(2, 4)
    >>> gallery_scores(probes, models, None).tolist()
    [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    >>> norm = ScoreNorm.fit(rng.standard_normal((40, 4)), np.repeat(np.arange(8), 5), cohort="utterances", top_k=5)
    >>> gallery_scores(probes, models, norm).shape
    (3, 2)
    """
    if score_norm is None:
        return probes @ models.T
    p, m = score_norm.transform(probes), score_norm.transform(models)
    k = min(score_norm.top_k, score_norm.cohort.shape[0])
    p_mu, p_sd = cohort_stats(p, score_norm.cohort, k)
    m_mu, m_sd = cohort_stats(m, score_norm.cohort, k)
    raw = p.astype(np.float64) @ m.T.astype(np.float64)
    return 0.5 * ((raw - m_mu[None]) / m_sd[None] + (raw - p_mu[:, None]) / p_sd[:, None])


def open_set_protocol(
    embeddings: Any,
    speakers: Sequence[Any],
    unknown_fraction: float = 1 / 3,
    enrol_per_speaker: int = 3,
    repeats: int = 10,
    seed: int = 0,
    fars: Sequence[float] = (0.01, 0.05, 0.1),
    threshold: float | None = None,
    margin: float = 0.0,
    score_norm: ScoreNorm | None = None,
) -> dict[str, Any]:
    """Open-set identification measures on a labelled list of embeddings, averaged over random protocols.

    Each repeat makes ``unknown_fraction`` of the speakers unknown (all their recordings are probes of strangers)
    and enrols every other speaker from ``enrol_per_speaker`` random recordings (length-normalised mean; speakers
    with no recording left to probe are unknown instead); the rest of their recordings are probes. Cosine scores.
    Returns the mean DIR at each FAR in ``fars`` and rank-1 rate (:func:`dir_at_far`) and, with ``threshold``,
    the mean decisions there (:func:`open_set_metrics` with ``margin``), with the protocol's counts.

    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((6, 16))
    >>> emb = np.repeat(centres, 5, axis=0) + 0.3 * rng.standard_normal((30, 16))
    >>> r = open_set_protocol(emb, np.repeat(np.arange(6), 5), repeats=3, threshold=0.5)
    >>> r["n_unknown_speakers"], r["n_enrolled_speakers"], r["rank1"], r["decisions"]["dir"]
    (2, 4, 1.0, 1.0)
    """
    e = np.asarray(embeddings, dtype=np.float64)
    spk = np.asarray(speakers)
    if e.ndim != 2 or e.shape[0] != spk.shape[0]:
        raise ValueError(f"embeddings [N, D] and one speaker per row needed, got {e.shape} and {spk.shape}")
    if not 0.0 < float(unknown_fraction) < 1.0:
        raise ConfigError(f"unknown_fraction must be in (0, 1), got {unknown_fraction!r}")
    for name, value in (("enrol_per_speaker", enrol_per_speaker), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    names, counts = np.unique(spk, return_counts=True)
    probe_able = names[counts > enrol_per_speaker]
    n_unknown = max(1, int(round(len(names) * float(unknown_fraction))))
    if len(probe_able) < 2 or len(names) - n_unknown < 1:
        raise ValueError(
            f"open-set protocol needs speakers with more than {enrol_per_speaker} recordings to enrol and probe; "
            f"{len(probe_able)} of {len(names)} speakers have them"
        )
    rng = np.random.default_rng(seed)
    curves, decisions = [], []
    n_enrolled = 0
    for _ in range(repeats):
        unknown = set(rng.choice(names, size=n_unknown, replace=False).tolist())
        enrolled = [s for s in probe_able.tolist() if s not in unknown]
        if not enrolled:  # every probe-able speaker drawn as unknown: swap one back
            enrolled = [sorted(unknown & set(probe_able.tolist()))[0]]
            unknown.discard(enrolled[0])
        models, probes, truth = [], [], []
        for col, s in enumerate(enrolled):
            rows = rng.permutation(np.flatnonzero(spk == s))
            mean = unit[rows[:enrol_per_speaker]].mean(axis=0)
            models.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
            probes.extend(rows[enrol_per_speaker:].tolist())
            truth.extend([col] * (len(rows) - enrol_per_speaker))
        strangers = np.flatnonzero(~np.isin(spk, enrolled))
        probes.extend(strangers.tolist())
        truth.extend([-1] * len(strangers))
        scores = gallery_scores(unit[np.asarray(probes)], np.stack(models), score_norm)
        curves.append(dir_at_far(scores, np.asarray(truth), fars=fars))
        if threshold is not None:
            decisions.append(open_set_metrics(scores, np.asarray(truth), threshold, margin))
        n_enrolled = len(enrolled)
    out: dict[str, Any] = {
        "repeats": repeats,
        "n_speakers": int(len(names)),
        "n_unknown_speakers": int(len(names) - n_enrolled),
        "n_enrolled_speakers": int(n_enrolled),
        "enrol_per_speaker": enrol_per_speaker,
    }
    for key in curves[0]:
        if key.startswith(("dir@", "rank1")):
            out[key] = float(np.mean([c[key] for c in curves]))
    if decisions:
        out["decisions"] = {
            k: float(np.mean([d[k] for d in decisions]))
            for k in ("dir", "far", "misidentified", "false_reject", "accuracy", "threshold", "margin")
        }
    return out
