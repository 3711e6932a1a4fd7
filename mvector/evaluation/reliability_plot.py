"""The reliability of calibrated scores: predicted probability of "same speaker" against the observed fraction,
per bin (:func:`reliability_curve`), and its plot (:func:`save_reliability_plot`, PNG, written atomically).

>>> pred, obs, n = reliability_curve([0.2, 0.3, 0.7, 0.8], [0, 1, 0, 1], bins=2)
>>> obs.tolist(), n.tolist()
([0.5, 0.5], [2, 2])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from mvector.errors import ConfigError
from mvector.evaluation.calibration import Calibration, as_float_vector
from mvector.evaluation.metrics import check_scores_labels
from mvector.utils.files import atomic_open

__all__ = ["reliability_curve", "save_reliability_plot"]

PathLike = Union[str, os.PathLike]


def reliability_curve(
    probabilities: Any, labels: Any, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin of predicted probability: ``(mean predicted, observed fraction of targets, count)``; empty bins
    are left out.

    >>> pred, obs, n = reliability_curve([0.1, 0.15, 0.9, 0.95], [0, 0, 1, 1], bins=2)
    >>> pred.round(3).tolist(), obs.tolist(), n.tolist()
    ([0.125, 0.925], [0.0, 1.0], [2, 2])
    """
    p = as_float_vector(probabilities)
    _, y = check_scores_labels(np.where(np.isfinite(p), p, 0.0), labels)
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

    s, y = check_scores_labels(scores, labels)
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
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    return Path(path)
