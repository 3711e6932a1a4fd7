"""Decisions over a gallery: who among the N enrolled speakers is this, or someone else?

A search compares a probe with every enrolled speaker, so a threshold chosen for one comparison does not hold for
a search: a stranger passes a threshold with single-pair false-acceptance rate ``p`` against at least one of ``N``
speakers with probability about ``1 − (1 − p)^N`` (40 speakers at 1.5 %: 45 %). Two rules that account for it:

* **posterior** (needs a calibration): each speaker's calibrated LLR ``lᵢ`` compares "this is speaker i" with
  "this is someone else" for that one comparison. With a prior ``π₀`` that the voice belongs to nobody enrolled
  (the user's; default :data:`DEFAULT_UNKNOWN_PRIOR`) and the rest shared equally by the N speakers, the
  posterior of speaker i is ``(1 − π₀)/N · e^{lᵢ} / Z`` and that of "someone else" ``π₀ / Z`` (the scores of
  the other speakers cancel, taken as independent). The answer is the most probable of the N + 1; it names
  speaker i only when ``lᵢ > log(N·π₀ / (1 − π₀))``, a bar that rises with the gallery.
* **fpir**: a score threshold for a target *false-positive identification rate* (the share of strangers given a
  name) at the current gallery size: the single-pair rate ``1 − (1 − FPIR)^{1/N}`` read off the model's non-target
  score distribution (:class:`NonTargetTail`, stored by ``mvector calibrate``). It moves as speakers are enrolled
  or removed.

>>> tail = NonTargetTail.from_scores(np.random.default_rng(0).normal(0.0, 0.1, 20000))
>>> t10, t40 = fpir_threshold(tail, 0.05, 10), fpir_threshold(tail, 0.05, 40)
>>> bool(0.25 < t10 < t40 < 0.35)                        # more speakers enrolled: a higher bar
True
>>> d = gallery_posterior(np.array([3.0, -2.0]), unknown_prior=0.5)
>>> int(d.best), round(d.p_unknown, 3), round(float(d.posteriors.sum()) + d.p_unknown, 6)
(0, 0.09, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy.special import ndtr, ndtri

from mvector.errors import ConfigError

__all__ = [
    "DEFAULT_UNKNOWN_PRIOR",
    "DEFAULT_FPIR",
    "OPEN_SET_RULES",
    "NonTargetTail",
    "GalleryPosterior",
    "gallery_posterior",
    "pair_far_for_fpir",
    "fpir_threshold",
    "expected_fpir",
    "posterior_llr_bar",
    "gallery_as_norm",
]

#: Default prior that a probe belongs to nobody enrolled ("someone else"): as likely as not.
DEFAULT_UNKNOWN_PRIOR = 0.5
#: Default target false-positive identification rate of the ``fpir`` rule.
DEFAULT_FPIR = 0.05
#: Open-set rules: ``posterior_fpir`` is both (a name must be the most probable answer *and* pass the FPIR
#: threshold); ``auto`` picks ``posterior_fpir`` with a calibration that stores the non-target distribution, else
#: ``posterior`` with a calibration, else ``fpir`` with a stored distribution, else ``threshold`` (one score
#: threshold whatever the gallery size).
OPEN_SET_RULES = ("auto", "posterior_fpir", "posterior", "fpir", "threshold")

#: Exceedance probabilities above this are read from the empirical distribution; below, from the tail model.
_EMPIRICAL_FLOOR = 0.1
#: Grid of stored exceedance probabilities (a few numbers, not every non-target score).
_GRID = (0.5, 0.3, 0.2, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01, 0.007, 0.005, 0.003, 0.002, 0.001)


def check_rate(value: Any, what: str) -> float:
    """``value`` as a float strictly between 0 and 1, or a :class:`ConfigError` naming ``what``.

    >>> check_rate("0.25", "fpir")
    0.25
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise ConfigError(f"{what} must be in (0, 1) (exclusive), got {value!r}")
    return v


def _check_size(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise ConfigError(f"gallery size must be a positive integer, got {n!r}")
    return int(n)


@dataclass(frozen=True)
class NonTargetTail:
    """The upper tail of a model's non-target (different-speaker) score distribution.

    ``grid`` pairs exceedance probabilities ``p`` with the score exceeded by that share of non-target trials, read
    from the data where at least a tenth of the trials lie above (``p >= 0.1``) and from ``n_tail`` of them
    otherwise; beyond, a normal tail ``P(score >= s) = 1 − Φ((s − loc) / scale)`` fitted by least squares to the
    empirical quantiles between ``p = 0.1`` and ``p = 10 / n`` (cosine scores are bounded, so this errs high).

    >>> tail = NonTargetTail.from_scores(np.random.default_rng(1).normal(0.1, 0.05, 50000), data="pairs.txt")
    >>> round(tail.threshold_for_far(0.01), 2), round(tail.far(0.2163), 2)       # N(0.1, 0.05): 0.216, 0.01
    (0.22, 0.01)
    >>> NonTargetTail.from_dict(tail.to_dict()) == tail
    True
    """

    n: int
    grid: tuple[tuple[float, float], ...]
    loc: float
    scale: float
    data: str | None = None

    @classmethod
    def from_scores(cls, scores: Any, data: str | None = None) -> NonTargetTail:
        """Fit from non-target scores (at least 100, finite)."""
        s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))[::-1]
        if s.size < 100:
            raise ConfigError(f"the non-target distribution needs at least 100 non-target trials, got {s.size}")
        if not np.isfinite(s).all():
            raise ValueError("non-target scores: NaN or infinite values")
        n = s.size

        def at(p: float) -> float:  # the score exceeded by a share p of the trials
            return float(s[min(n - 1, max(0, int(math.ceil(p * n)) - 1))])

        grid = tuple((p, at(p)) for p in _GRID if p * n >= 10)
        lo = max(10.0 / n, 1e-4)
        probs = np.geomspace(lo, _EMPIRICAL_FLOOR, 20) if lo < _EMPIRICAL_FLOOR else np.array([_EMPIRICAL_FLOOR])
        q = np.array([at(float(p)) for p in probs])
        z = ndtri(1.0 - probs)
        if probs.size > 1 and np.ptp(z) > 0:
            scale, loc = np.polyfit(z, q, 1)
        else:
            scale, loc = float(s.std()), float(s.mean())
        scale = float(max(scale, 1e-6))
        return cls(n=int(n), grid=grid, loc=float(loc), scale=scale, data=data)

    def far(self, threshold: float) -> float:
        """The share of non-target trials scoring at least ``threshold`` (single-pair false-acceptance rate)."""
        t = float(threshold)
        floor_score = dict(self.grid).get(_EMPIRICAL_FLOOR)
        if floor_score is not None and t <= floor_score:
            ps = np.array([p for p, _ in self.grid])  # p falls as the score rises
            ss = np.array([v for _, v in self.grid])
            if t <= ss[0]:  # below the median: at least half pass (the exact share is not stored)
                return float(ps[0])
            return float(np.exp(np.interp(t, ss, np.log(ps))))
        value = float(1.0 - ndtr((t - self.loc) / self.scale))
        return min(value, _EMPIRICAL_FLOOR) if floor_score is not None else value

    def threshold_for_far(self, far: float) -> float:
        """The score threshold whose single-pair false-acceptance rate is ``far``."""
        p = check_rate(far, "far")
        grid = dict(self.grid)
        if p >= _EMPIRICAL_FLOOR and grid:
            ps = np.array(list(grid))
            ss = np.array(list(grid.values()))
            return float(np.interp(math.log(p), np.log(ps[::-1]), ss[::-1]))
        return float(self.loc + self.scale * ndtri(1.0 - p))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in ``calibration.json`` under ``nontarget``)."""
        return {
            "n": self.n,
            "grid": [[p, s] for p, s in self.grid],
            "tail": {"kind": "normal", "loc": self.loc, "scale": self.scale},
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "nontarget") -> NonTargetTail:
        """Rebuild from :meth:`to_dict`; a missing or wrong field is a :class:`ConfigError` naming it."""
        try:
            tail = data["tail"]
            grid = tuple((float(p), float(s)) for p, s in data["grid"])
            out = cls(
                n=int(data["n"]), grid=grid, loc=float(tail["loc"]), scale=float(tail["scale"]),
                data=None if data.get("data") is None else str(data["data"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{where}: damaged non-target distribution ({type(err).__name__}: {err})") from None
        if not (out.scale > 0 and math.isfinite(out.loc) and math.isfinite(out.scale)):
            raise ConfigError(f"{where}: the tail's scale must be > 0 and finite")
        return out


def pair_far_for_fpir(fpir: float, gallery_size: int) -> float:
    """The single-pair false-acceptance rate at which a stranger passes against at least one of
    ``gallery_size`` speakers with probability ``fpir``: ``1 − (1 − fpir)^{1/N}``.

    >>> round(pair_far_for_fpir(0.05, 1), 6), round(pair_far_for_fpir(0.05, 40), 6)
    (0.05, 0.001282)
    """
    f = check_rate(fpir, "fpir")
    n = _check_size(gallery_size)
    return float(-math.expm1(math.log1p(-f) / n))


def fpir_threshold(tail: NonTargetTail, fpir: float, gallery_size: int) -> float:
    """The score threshold for a target FPIR at a gallery of ``gallery_size`` speakers."""
    return tail.threshold_for_far(pair_far_for_fpir(fpir, gallery_size))


def expected_fpir(tail: NonTargetTail, threshold: float, gallery_size: int) -> float:
    """The FPIR a score ``threshold`` implies at ``gallery_size`` speakers: ``1 − (1 − FAR(threshold))^N``.

    >>> tail = NonTargetTail.from_scores(np.random.default_rng(0).normal(0.0, 0.1, 20000))
    >>> round(expected_fpir(tail, fpir_threshold(tail, 0.05, 40), 40), 3)
    0.05
    """
    n = _check_size(gallery_size)
    p = min(max(tail.far(threshold), 0.0), 1.0)
    return float(-math.expm1(n * math.log1p(-p))) if p < 1.0 else 1.0


def posterior_llr_bar(gallery_size: int, unknown_prior: float) -> float:
    """The LLR a speaker needs to beat "someone else" under the posterior rule: ``log(N·π₀ / (1 − π₀))``.

    >>> round(posterior_llr_bar(10, 0.5), 3)
    2.303
    """
    n = _check_size(gallery_size)
    p0 = check_rate(unknown_prior, "unknown_prior")
    return float(math.log(n) + math.log(p0) - math.log1p(-p0))


@dataclass(frozen=True)
class GalleryPosterior:
    """Posterior over the N enrolled speakers and "someone else" for one probe.

    ``posteriors[i]`` belongs to the i-th enrolled speaker, ``p_unknown`` to "someone else"; ``best`` is the index
    of the most probable speaker, or ``None`` when "someone else" is the most probable answer.
    """

    posteriors: np.ndarray
    p_unknown: float
    best: int | None


def gallery_posterior(llrs: Any, unknown_prior: float = DEFAULT_UNKNOWN_PRIOR) -> GalleryPosterior:
    """The posterior over the enrolled speakers (one calibrated LLR each) and "someone else".

    >>> d = gallery_posterior([0.0, 0.0, 0.0, 0.0], unknown_prior=0.2)   # no evidence: the priors come back
    >>> d.posteriors.round(3).tolist(), round(d.p_unknown, 3), d.best
    ([0.2, 0.2, 0.2, 0.2], 0.2, None)
    """
    lam = np.asarray(llrs, dtype=np.float64).reshape(-1)
    if lam.size == 0:
        raise ConfigError("gallery_posterior: no enrolled speakers")
    if np.isnan(lam).any():
        raise ValueError("gallery_posterior: NaN LLRs")
    p0 = check_rate(unknown_prior, "unknown_prior")
    logw = np.concatenate([[math.log(p0)], math.log1p(-p0) - math.log(lam.size) + lam])
    logz = float(np.logaddexp.reduce(logw))
    post = np.exp(logw - logz)
    i = int(np.argmax(post))
    # "someone else" wins ties: a name is given only when it is strictly more probable
    best = None if i == 0 or post[i] <= post[0] else i - 1
    return GalleryPosterior(posteriors=post[1:], p_unknown=float(post[0]), best=best)


def gallery_as_norm(probe_scores: Any, model_scores: Any, top_k: int = 10) -> np.ndarray:
    """Adaptive s-norm with the gallery as its cohort: each enrolled speaker is normalised by its ``top_k`` best
    scores against the *other* enrolled speakers, and each probe by its ``top_k`` best scores against the other
    enrolled speakers than the candidate: ``½·((s − μ_spk)/σ_spk + (s − μ_probe)/σ_probe)``.

    ``probe_scores`` is ``[P, N]`` (probe × enrolled cosine), ``model_scores`` ``[N, N]`` (enrolled × enrolled);
    needs at least 3 enrolled speakers (``top_k`` is cut to ``N − 1``).

    >>> models = np.eye(4)
    >>> probe = np.array([[0.9, 0.1, 0.0, 0.05]])
    >>> out = gallery_as_norm(probe @ models.T, models @ models.T, top_k=2)
    >>> int(np.argmax(out)), bool(out[0, 0] > out[0, 1])
    (0, True)
    """
    s = np.asarray(probe_scores, dtype=np.float64)
    m = np.asarray(model_scores, dtype=np.float64)
    if s.ndim != 2 or m.shape != (s.shape[1], s.shape[1]):
        raise ValueError(f"gallery_as_norm: probe scores [P, N] and model scores [N, N], got {s.shape}, {m.shape}")
    n = s.shape[1]
    if n < 3:
        raise ConfigError(f"AS-norm over the gallery needs at least 3 enrolled speakers, got {n}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    k = min(int(top_k), n - 1)
    others = m.copy()
    np.fill_diagonal(others, -np.inf)
    top = -np.sort(-others, axis=1)[:, :k]
    mu_s, sd_s = top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)
    # The probe's k + 1 best: for a candidate among them, drop it; otherwise drop the (k + 1)-th.
    best = -np.sort(-s, axis=1)[:, : k + 1]
    sum_all, sq_all = best.sum(axis=1, keepdims=True), (best**2).sum(axis=1, keepdims=True)
    kth = best[:, k : k + 1]
    inside = s >= kth  # the candidate is one of the k + 1 best (ties: treated as inside)
    drop = np.where(inside, s, kth)
    mu_p = (sum_all - drop) / k
    var_p = np.maximum((sq_all - drop**2) / k - mu_p**2, 0.0)
    sd_p = np.maximum(np.sqrt(var_p), 1e-6)
    return 0.5 * ((s - mu_s[None]) / sd_s[None] + (s - mu_p) / sd_p)
