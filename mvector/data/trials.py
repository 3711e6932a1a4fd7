"""Trial pairs from speaker labels: the one balanced sampler used by evaluation and by ``create_data.py``.

>>> generate_trials(["a", "a", "b"])
[(1, 0, 1), (0, 0, 2), (0, 1, 2)]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mvector.errors import DataListError

__all__ = ["generate_trials", "MAX_ALL_PAIRS"]

#: At most this many pairs are listed when every pair is asked for.
MAX_ALL_PAIRS = 10_000_000


def _sample_family(
    rng: np.random.Generator, first: np.ndarray, count: np.ndarray, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Row ``p`` pairs with ``first[p] .. first[p] + count[p] - 1``; draw ``k`` distinct pairs (all when None)."""
    cum = np.cumsum(count)
    total = int(cum[-1]) if cum.size else 0
    if k is None or k >= total:
        lin = np.arange(total, dtype=np.int64)
    else:
        lin = np.sort(rng.choice(total, size=k, replace=False)).astype(np.int64)
    row = np.searchsorted(cum, lin, side="right")
    col = first[row] + (lin - (cum[row] - count[row]))
    return row, col


def generate_trials(
    labels: Sequence[Any], num_pairs: int | None = None, seed: int = 0, balanced: bool = False
) -> list[tuple[int, int, int]]:
    """Trials ``(label, i, j)`` (``i < j`` utterance indices) from the speaker labels of a test list.

    ``num_pairs=None``: every pair of distinct utterances (at most 10 M; use
    :func:`mvector.evaluation.metrics.all_pairs_metrics` beyond that). Otherwise ``num_pairs`` distinct pairs drawn
    uniformly, half target and half non-target; when one kind runs short, the other fills in (or, with
    ``balanced``, is capped to match, so the result stays balanced), and when fewer pairs exist, all are
    returned. Deterministic for a given ``seed``; sorted by ``(i, j)``.

    >>> generate_trials(["a", "a", "b"])
    [(1, 0, 1), (0, 0, 2), (0, 1, 2)]
    >>> trials = generate_trials([0] * 10 + [1] * 10, num_pairs=20, seed=1)
    >>> len(trials), sum(t[0] for t in trials)
    (20, 10)
    >>> [t[0] for t in generate_trials([0, 0, 1, 2, 3], num_pairs=100, balanced=True)]
    [1, 0]
    """
    lab = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if lab.ndim != 1:
        raise DataListError(f"labels: expected one label per utterance (1-D), got shape {tuple(lab.shape)}")
    n = lab.shape[0]
    if n < 2:
        raise DataListError(f"need at least 2 utterances to make trials, got {n}")
    if num_pairs is not None:
        if isinstance(num_pairs, bool) or int(num_pairs) != num_pairs or num_pairs < 1:
            raise ValueError(f"num_pairs must be a positive integer or None, got {num_pairs!r}")
        num_pairs = int(num_pairs)
    _, spk = np.unique(lab, return_inverse=True)
    spk = spk.reshape(-1)
    order = np.argsort(spk, kind="stable")
    ends = np.cumsum(np.bincount(spk))[spk[order]]  # sorted position p: first position of the next speaker
    pos = np.arange(n, dtype=np.int64)
    t_first, t_count = pos + 1, ends - pos - 1
    n_first, n_count = ends.astype(np.int64), n - ends
    s_t, s_n = int(t_count.sum()), int(n_count.sum())
    rng = np.random.default_rng(seed)
    if num_pairs is None:
        if s_t + s_n > MAX_ALL_PAIRS:
            raise ValueError(
                f"{n} utterances make {s_t + s_n} pairs (more than {MAX_ALL_PAIRS}); pass num_pairs, "
                "or use mvector.evaluation.metrics.all_pairs_metrics for exact metrics over all pairs"
            )
        k_t = k_n = None
    elif balanced:
        half = num_pairs // 2
        k_t = min(half, s_t)
        k_n = min(num_pairs - half if k_t == half else k_t, s_n)
        k_t = min(k_t, k_n)
    else:
        k_t = min(num_pairs // 2, s_t)
        k_n = min(num_pairs - k_t, s_n)
        k_t = min(num_pairs - k_n, s_t)
    tr, tc = _sample_family(rng, t_first, t_count, k_t)
    nr, nc = _sample_family(rng, n_first, n_count, k_n)
    i = order[np.concatenate((tr, nr))]
    j = order[np.concatenate((tc, nc))]
    lab01 = np.concatenate((np.ones(tr.size, np.int64), np.zeros(nr.size, np.int64)))
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    srt = np.lexsort((hi, lo))
    return list(zip(lab01[srt].tolist(), lo[srt].tolist(), hi[srt].tolist()))
