"""How sure is a figure? Confidence intervals for rates and speaker-level bootstrap intervals, and the smallest
evidence an operating point may be stored from.

Trials are not independent: every trial of one speaker shares that speaker's voice, so an interval that counts
trials as independent is too narrow. :func:`speaker_bootstrap` resamples *speakers* (with replacement) and
recomputes the figure on the trials whose speakers were drawn; :func:`rate_interval` is the Wilson interval of a
proportion, right when the counted events are independent (e.g. one probe per stranger).

>>> lo, hi = rate_interval(5, 100)
>>> round(lo, 3), round(hi, 3)
(0.022, 0.112)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import ndtri

from mvector.errors import ConfigError

__all__ = [
    "MIN_SPEAKERS",
    "MIN_NONTARGET_TRIALS",
    "rate_interval",
    "speaker_bootstrap",
    "trial_bootstrap_metrics",
    "evidence_problem",
    "speakers_in_trials",
    "trial_speakers",
    "refuse_weak_operating_point",
    "tail_metrics",
]

#: An operating point is not stored from trials of fewer speakers than this unless forced.
MIN_SPEAKERS = 10
#: ... nor from fewer non-target trials than this (a 1 % FAR needs a few hundred to be more than a guess).
MIN_NONTARGET_TRIALS = 300


def rate_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` at confidence ``level`` (``(0, 1)`` when ``n`` is 0).

    >>> rate_interval(0, 50)[1] > 0.05            # none in 50 still allows up to about 7 %
    True
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"rate_interval: {k} events of {n}")
    z = float(ndtri(0.5 + level / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def speaker_bootstrap(
    statistic: Callable[[np.ndarray], float],
    speakers: Sequence[Any],
    rounds: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(weights)`` over speaker-level bootstrap resamples.

    ``speakers`` lists the distinct speakers; each round draws as many with replacement and calls
    ``statistic`` with the number of times each was drawn (``weights[i]`` for ``speakers[i]``); the statistic
    weighs or repeats each speaker's trials by it. Rounds whose statistic is undefined (NaN) are skipped.

    >>> rates = np.array([0.1, 0.2, 0.3, 0.4])          # one rate per speaker
    >>> lo, hi = speaker_bootstrap(lambda w: float(np.average(rates, weights=w)), ["a", "b", "c", "d"])
    >>> bool(lo < 0.25 < hi)
    True
    """
    n = len(speakers)
    if n < 2:
        raise ConfigError(f"a speaker-level bootstrap needs at least 2 speakers, got {n}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(rounds)):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        v = float(statistic(weights))
        if math.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _trial_sides(
    spk1: Sequence[Any], spk2: Sequence[Any], n: int, what: str
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The distinct speakers of ``n`` trials and each trial's two sides as indices into them."""
    names = sorted(set(map(str, spk1)) | set(map(str, spk2)))
    index = {name: i for i, name in enumerate(names)}
    a = np.array([index[str(v)] for v in spk1])
    b = np.array([index[str(v)] for v in spk2])
    if a.size != n or b.size != n:
        raise ValueError(f"{what}: {n} scores, {a.size} / {b.size} speaker labels")
    return names, a, b


def trial_bootstrap_metrics(
    scores: Any,
    labels: Any,
    spk1: Sequence[Any],
    spk2: Sequence[Any],
    threshold: float | None = None,
    p_target: float = 0.01,
    rounds: int = 100,
    seed: int = 0,
) -> dict[str, list[float]]:
    """95 % speaker-level bootstrap intervals of EER, minDCF and (with ``threshold``) FAR / FRR of trials whose
    sides belong to speakers ``spk1[i]`` and ``spk2[i]``. A trial's weight is the product of its speakers'
    draw counts, so a resample keeps the trials between drawn speakers (the usual speaker bootstrap of pairs).

    >>> rng = np.random.default_rng(0)
    >>> spk = np.repeat(np.arange(8), 4); i, j = np.triu_indices(32, 1)
    >>> y = (spk[i] == spk[j]).astype(int); s = rng.normal(y * 2.0, 1.0)
    >>> ci = trial_bootstrap_metrics(s, y, spk[i], spk[j], rounds=30)
    >>> sorted(ci), ci["eer"][0] < ci["eer"][1]
    (['eer', 'min_dcf'], True)
    """
    from mvector.evaluation.metrics import check_scores_labels, compute_eer, compute_min_dcf

    s, y = check_scores_labels(scores, labels)
    names, a, b = _trial_sides(spk1, spk2, s.size, "trial_bootstrap_metrics")
    out: dict[str, list[float]] = {}

    def draw(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        w = weights[a] * weights[b]
        reps = w.astype(np.int64)
        keep = reps > 0
        ss, yy = np.repeat(s[keep], reps[keep]), np.repeat(y[keep], reps[keep])
        if yy.all() or not yy.any():
            return None
        return ss, yy

    def stat(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray], float]:
        def inner(weights: np.ndarray) -> float:
            got = draw(weights)
            return float("nan") if got is None else fn(*got)

        return inner

    measures: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "eer": lambda ss, yy: compute_eer(ss, yy)[0],
        "min_dcf": lambda ss, yy: compute_min_dcf(ss, yy, p_target=p_target)[0],
    }
    if threshold is not None:
        measures["far"] = lambda ss, yy: float((ss[~yy.astype(bool)] >= threshold).mean())
        measures["frr"] = lambda ss, yy: float((ss[yy.astype(bool)] < threshold).mean())
    for key, fn in measures.items():
        out[key] = list(speaker_bootstrap(stat(fn), names, rounds=rounds, seed=seed))
    return out


def evidence_problem(n_speakers: int, n_nontarget: int) -> str | None:
    """Why an operating point should not be stored from these trials, or ``None`` when there is enough.

    >>> evidence_problem(2, 50)
    'the trials come from 2 speakers (at least 10 needed) and hold 50 non-target trials (at least 300 needed)'
    >>> evidence_problem(20, 5000) is None
    True
    """
    problems = []
    if n_speakers < MIN_SPEAKERS:
        problems.append(f"the trials come from {n_speakers} speakers (at least {MIN_SPEAKERS} needed)")
    if n_nontarget < MIN_NONTARGET_TRIALS:
        problems.append(f"hold {n_nontarget} non-target trials (at least {MIN_NONTARGET_TRIALS} needed)")
    if not problems:
        return None
    if len(problems) == 1 and problems[0].startswith("hold"):
        return "the trials " + problems[0]
    return " and ".join(problems)


def trial_speakers(trials: Sequence[tuple[int, str, str]]) -> dict[str, int]:
    """Each file's speaker in a trial list ``(label, enroll, test)``: files joined by same-speaker trials are one
    speaker (connected components), so a list labelled by files only still tells its speakers (at most).

    >>> trial_speakers([(1, "a1", "a2"), (0, "a1", "b1"), (1, "b1", "b2"), (0, "a2", "c1")])
    {'a1': 0, 'a2': 0, 'b1': 1, 'b2': 1, 'c1': 2}
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for label, a, b in trials:
        ra, rb = find(a), find(b)
        if int(label) == 1 and ra != rb:
            parent[ra] = rb
    roots: dict[str, int] = {}
    return {x: roots.setdefault(find(x), len(roots)) for x in list(parent)}


def speakers_in_trials(trials: Sequence[tuple[int, str, str]]) -> int:
    """How many speakers a trial list can hold at most (:func:`trial_speakers`).

    >>> speakers_in_trials([(1, "a1", "a2"), (0, "a1", "b1"), (1, "b1", "b2"), (0, "a2", "c1")])
    3
    """
    return len(set(trial_speakers(trials).values()))


def refuse_weak_operating_point(n_speakers: int, n_nontarget: int, force: bool, what: str) -> str | None:
    """Raise a :class:`ConfigError` saying why ``what`` (an operating point about to be stored) rests on too
    little evidence, unless ``force``; with ``force`` returns the problem as a note (``None`` when there is none).

    >>> refuse_weak_operating_point(2, 40, True, "result.json")[:26]
    'stored anyway (--force): t'
    """
    problem = evidence_problem(n_speakers, n_nontarget)
    if problem is None:
        return None
    if not force:
        raise ConfigError(
            f"not storing {what}: {problem}. A threshold or FAR from so few voices is a guess (two test speakers "
            "can give EER 0 and a threshold that separates nothing elsewhere); evaluate on more speakers, or pass "
            "--force to store it anyway"
        )
    return f"stored anyway (--force): {problem}"


def tail_metrics(
    scores: Any,
    labels: Any,
    speakers_a: Sequence[Any],
    speakers_b: Sequence[Any],
    rounds: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """EER, minDCF at P_target 0.01 and 0.001, and the false-rejection rate at 1 % and 0.1 % false acceptance of
    scored trials, each with a :func:`speaker_bootstrap` interval (``<name>_ci``: ``[low, high]``); a trial counts
    as often as the product of its two speakers' draws (``speakers_a[i]``, ``speakers_b[i]``). ``num_nontargets``
    says how far the 0.1 % figures can be trusted: below a few thousand they rest on a handful of false alarms.

    >>> rng = np.random.default_rng(0)
    >>> spk = np.repeat(np.arange(10), 4); i, j = np.triu_indices(40, 1)
    >>> y = spk[i] == spk[j]; s = rng.normal(2.0 * y, 1.0)
    >>> m = tail_metrics(s, y, spk[i], spk[j], rounds=20)
    >>> m["eer_ci"][0] <= m["eer"] <= m["eer_ci"][1], m["num_nontargets"], "min_dcf_0.001_ci" in m
    (True, 720, True)
    """
    from mvector.evaluation.metrics import TAIL_FIGURES, check_scores_labels, weighted_curve

    s, y = check_scores_labels(scores, labels)
    names, a, b = _trial_sides(speakers_a, speakers_b, s.size, "tail_metrics")
    full = weighted_curve(s, y, np.ones(s.size))
    out: dict[str, Any] = {name: float(fn(full)) for name, fn in TAIL_FIGURES.items()}
    for name, fn in TAIL_FIGURES.items():

        def statistic(weights: np.ndarray, fn: Callable = fn) -> float:
            curve = weighted_curve(s, y, weights[a] * weights[b])
            return float(fn(curve)) if curve.n_t and curve.n_n else float("nan")

        out[f"{name}_ci"] = list(speaker_bootstrap(statistic, names, rounds=rounds, level=level, seed=seed))
    out.update(num_targets=full.n_t, num_nontargets=full.n_n, ci_rounds=int(rounds), ci_level=float(level))
    return out
