"""Score normalisation stored with a model: training statistics for centring (and optional whitening) of the
embeddings, and a cohort of training speakers for adaptive score normalisation (AS-norm).

Training writes ``score_norm.npz`` into each checkpoint folder (:func:`fit_from_lists` / :meth:`ScoreNorm.save`);
evaluation, the predictor and the service read it with :meth:`ScoreNorm.load` and score a pair as AS-norm
(:func:`mvector.evaluation.scoring.as_norm`, the one implementation) of the cosine of the centred embeddings,
against the centred cohort. A score is then in standard deviations above the impostor scores of the two sides,
not a cosine: thresholds fitted on one kind of score do not apply to the other.

>>> rng = np.random.default_rng(0)
>>> vecs, labels = rng.standard_normal((60, 8)) + 3.0, np.repeat(np.arange(12), 5)
>>> sn = ScoreNorm.fit(vecs, labels, top_k=5)
>>> sn.cohort.shape, round(float(np.linalg.norm(sn.transform(vecs[:1]))), 3)
((12, 8), 1.0)
>>> sn.score_pairs(vecs, np.array([[0, 1], [0, 7]])).shape
(2,)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from mvector.config import check_cohort_speeds
from mvector.errors import CheckpointError, ConfigError
from mvector.evaluation.scoring import as_norm, cohort_stats
from mvector.utils.files import atomic_write_bytes

__all__ = ["SCORE_NORM_FILE", "COHORTS", "ScoreNorm", "check_score_norm_conf", "cohort_subset"]

PathLike = Union[str, os.PathLike]

#: The file in a model folder that holds its score normalisation.
SCORE_NORM_FILE = "score_norm.npz"


#: Values of ``score_norm_conf.cohort``.
COHORTS = ("none", "speakers", "utterances")


def check_score_norm_conf(conf: Any) -> dict[str, Any]:
    """The ``score_norm_conf`` section, checked: a bad value raises :class:`ConfigError` naming the key.

    >>> check_score_norm_conf({"cohort": "speakers", "top_k": 20, "centre": False, "max_per_speaker": 8})["top_k"]
    20
    >>> check_score_norm_conf({"cohort": "speaker"})
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: score_norm_conf.cohort must be one of none, speakers, utterances; got 'speaker'
    """
    sc = dict(conf or {})
    sc.setdefault("cohort", "none")
    if sc["cohort"] not in COHORTS:
        raise ConfigError(f"score_norm_conf.cohort must be one of {', '.join(COHORTS)}; got {sc['cohort']!r}")
    for key in ("top_k", "max_per_speaker"):
        value = sc.setdefault(key, 20 if key == "top_k" else 8)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"score_norm_conf.{key} must be a positive integer, got {value!r}")
    for key in ("centre", "whiten"):
        if not isinstance(sc.setdefault(key, False), bool):
            raise ConfigError(f"score_norm_conf.{key} must be true or false, got {sc[key]!r}")
    sc["cohort_speeds"] = check_cohort_speeds(sc.setdefault("cohort_speeds", [1.0]))
    return sc


def cohort_subset(labels: Any, max_per_speaker: int) -> np.ndarray:
    """Indices of the first ``max_per_speaker`` utterances of every speaker (list order, so deterministic).

    >>> cohort_subset([0, 0, 0, 1, 1, 2], 2).tolist()
    [0, 1, 3, 4, 5]
    """
    seen: dict[Any, int] = {}
    keep = []
    for i, label in enumerate(labels):
        if seen.get(label, 0) < max_per_speaker:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class ScoreNorm:
    """Centring / whitening statistics and an AS-norm cohort (one row per training speaker), both from training.

    ``mean`` ``[D]``: the mean of the length-normalised training embeddings, subtracted before scoring;
    ``whitening`` ``[D, D]`` or ``None``: applied after centring; ``cohort`` ``[C, D]``: unit rows, already
    centred / whitened; ``top_k``: how many of the best cohort scores AS-norm uses.
    """

    mean: np.ndarray
    whitening: np.ndarray | None
    cohort: np.ndarray
    top_k: int = 20

    @classmethod
    def fit(
        cls,
        vectors: Any,
        labels: Any,
        centre: bool = True,
        whiten: bool = False,
        cohort: str = "speakers",
        top_k: int = 20,
    ) -> ScoreNorm:
        """Fit from training embeddings ``[N, D]`` and their speaker labels ``[N]``.

        ``cohort="speakers"``: one cohort row per speaker (the mean of its transformed embeddings);
        ``"utterances"``: every transformed embedding. ``whiten`` adds PCA whitening with a little shrinkage.
        """
        x = np.asarray(vectors, dtype=np.float64)
        y = np.asarray(labels).reshape(-1)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
            raise ConfigError(f"score normalisation: need [N, D] embeddings with N labels, got {x.shape}, {y.shape}")
        if not np.isfinite(x).all():
            raise ConfigError("score normalisation: the training embeddings hold NaN or inf")
        if cohort not in ("speakers", "utterances"):
            raise ConfigError(f"score normalisation: cohort must be 'speakers' or 'utterances', got {cohort!r}")
        u = _unit(x)
        mean = u.mean(axis=0) if centre else np.zeros(x.shape[1])
        whitening = None
        if whiten:
            cov = np.cov((u - mean).T) + 1e-3 * np.eye(x.shape[1])
            values, vectors_ = np.linalg.eigh(cov)
            whitening = vectors_ @ np.diag(values**-0.5) @ vectors_.T
        sn = cls(mean.astype(np.float32), None if whitening is None else whitening.astype(np.float32),
                 np.zeros((0, x.shape[1]), np.float32), int(top_k))  # fmt: skip
        t = sn.transform(x)
        if cohort == "speakers":
            speakers = np.unique(y)
            if speakers.size < 2:
                raise ConfigError(f"score normalisation: the cohort needs at least 2 speakers, got {speakers.size}")
            t = np.stack([t[y == s].mean(axis=0) for s in speakers])
        sn.cohort = _unit(t).astype(np.float32)
        return sn

    def transform(self, vectors: Any) -> np.ndarray:
        """Length-normalise, centre, whiten (if fitted) and length-normalise again: ``[N, D]`` unit rows."""
        x = _unit(np.asarray(vectors, dtype=np.float64)) - self.mean
        if self.whitening is not None:
            x = x @ self.whitening
        return _unit(x).astype(np.float32)

    def score_pairs(self, vectors: Any, pairs: Any, top_k: int | None = None) -> np.ndarray:
        """AS-norm scores of ``pairs`` ``[M, 2]`` (row indices into ``vectors``) after :meth:`transform`: the
        same as :meth:`score` of the pairs' rows, with each row's cohort statistics computed once and the pairs
        scored in blocks (no ``[M, D]`` copy)."""
        t = self.transform(vectors)
        p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        k = min(int(top_k or self.top_k), self.cohort.shape[0])
        mu, sd = cohort_stats(t, self.cohort, k)
        out = np.empty(p.shape[0], np.float64)
        step = 1 << 18
        for r in range(0, p.shape[0], step):
            i, j = p[r : r + step, 0], p[r : r + step, 1]
            s = np.einsum("nd,nd->n", t[i].astype(np.float64), t[j])
            out[r : r + step] = 0.5 * ((s - mu[i]) / sd[i] + (s - mu[j]) / sd[j])
        return out

    def score(self, enroll: Any, test: Any, top_k: int | None = None, transformed: bool = False) -> np.ndarray:
        """AS-norm score of each row of ``enroll`` against the same row of ``test`` (both ``[M, D]``)."""
        e = np.asarray(enroll) if transformed else self.transform(enroll)
        t = np.asarray(test) if transformed else self.transform(test)
        cosine = np.sum(e.astype(np.float64) * t, axis=1)
        return as_norm(cosine, e, t, self.cohort, top_k=int(top_k or self.top_k))

    # ------------------------------------------------------------------ storage
    def to_bytes(self) -> bytes:
        """The contents of ``score_norm.npz`` (numpy arrays only: read back with ``allow_pickle=False``)."""
        buf = io.BytesIO()
        arrays = {"mean": self.mean, "cohort": self.cohort, "top_k": np.array(self.top_k)}
        if self.whitening is not None:
            arrays["whitening"] = self.whitening
        np.savez(buf, **arrays)
        return buf.getvalue()

    def save(self, folder: PathLike) -> Path:
        """Write ``folder/score_norm.npz`` atomically; returns its path."""
        path = Path(folder) / SCORE_NORM_FILE
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, folder: PathLike, embd_dim: int | None = None) -> ScoreNorm | None:
        """The score normalisation stored in ``folder``, or ``None`` when it has none. A damaged file or one
        whose size does not match ``embd_dim`` raises :class:`CheckpointError` naming the file."""
        path = Path(folder) / SCORE_NORM_FILE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                mean, cohort, top_k = data["mean"], data["cohort"], int(data["top_k"])
                whitening = data["whitening"] if "whitening" in data.files else None
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: unreadable score normalisation ({err})") from None
        dim = mean.shape[0] if mean.ndim == 1 else -1
        ok = (
            dim > 0
            and cohort.ndim == 2
            and cohort.shape[1] == dim
            and cohort.shape[0] >= 2
            and top_k >= 1
            and (whitening is None or whitening.shape == (dim, dim))
            and (embd_dim is None or dim == embd_dim)
            and np.isfinite(mean).all()
            and np.isfinite(cohort).all()
        )
        if not ok:
            raise CheckpointError(
                f"{path}: score normalisation does not fit the model (mean {mean.shape}, cohort {cohort.shape}, "
                f"embedding size {embd_dim}); delete the file to score with plain cosine"
            )
        return cls(mean.astype(np.float32), None if whitening is None else whitening.astype(np.float32),
                   cohort.astype(np.float32), top_k)  # fmt: skip
