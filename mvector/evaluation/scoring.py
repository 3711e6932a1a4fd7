"""Trial lists and scoring: read VoxCeleb-style trials, cosine-score them, generate trials, AS-norm, plots.

A trial list has one ``label enroll test`` line per trial (``1`` = same speaker, ``0`` = different):

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> with open(os.path.join(folder, "trials.txt"), "w") as f:
...     _ = f.write("1 a/1.wav a/2.wav\\n0 a/1.wav b/1.wav\\n")
>>> trials = read_trials(os.path.join(folder, "trials.txt"), root="/data")
>>> trials[1]
(0, '/data/a/1.wav', '/data/b/1.wav')
>>> emb = {"/data/a/1.wav": [1.0, 0.0], "/data/a/2.wav": [0.8, 0.6], "/data/b/1.wav": [0.0, 1.0]}
>>> cosine_score_trials(emb, trials).round(3).tolist()
[0.8, 0.0]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from mvector.errors import DataListError
from mvector.evaluation.metrics import check_scores_labels, eer_from_curve, score_curve

__all__ = [
    "read_trials",
    "cosine_score_trials",
    "as_norm",
    "save_det_plot",
    "save_score_histogram",
]

PathLike = Union[str, "os.PathLike[str]"]
_CHUNK = 8192  # trials scored per step: two (8192, D) gathers stay in cache


# ------------------------------------------------------------------------------------------------ reading
def read_trials(path: PathLike, root: PathLike | None = None) -> list[tuple[int, str, str]]:
    """Read a ``label enroll test`` trial list (VoxCeleb format) into ``(label, enroll_path, test_path)``.

    Relative paths are resolved against ``root`` (default: the folder of the trial file); absolute paths are
    kept. Blank lines and lines starting with ``#`` are skipped. A line without exactly three fields or with
    a label other than ``0``/``1`` raises :class:`~mvector.errors.DataListError` naming ``file:line``.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(p, "w").write("1 x.wav y.wav\\n2 x.wav z.wav\\n")
    >>> read_trials(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mvector.errors.DataListError: ...t.txt:2: label must be 0 or 1, got '2'
    """
    path = Path(path)
    if not path.is_file():
        raise DataListError(f"{path}: trial list not found")
    base = Path(root) if root else path.parent
    trials: list[tuple[int, str, str]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                fields = text.split()
                if len(fields) != 3:
                    raise DataListError(
                        f"{path}:{lineno}: expected 'label enroll test' (3 fields), got {len(fields)}: {text[:100]!r}"
                    )
                label, enroll, test = fields
                if label not in ("0", "1"):
                    raise DataListError(f"{path}:{lineno}: label must be 0 or 1, got {label!r}")
                if "\x00" in enroll or "\x00" in test:
                    raise DataListError(f"{path}:{lineno}: a path holds a NUL byte (a binary file, or a damaged line?)")
                trials.append((int(label), _resolve(enroll, base), _resolve(test, base)))
    except UnicodeDecodeError as err:
        raise DataListError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataListError(f"{path}: cannot read the trial list: {err.strerror or err}") from None
    if not trials:
        raise DataListError(f"{path}: no trials in the file")
    return trials


def _resolve(p: str, base: Path) -> str:
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))


# ------------------------------------------------------------------------------------------------ scoring
def _embedding_matrix(embeddings: Any) -> tuple[np.ndarray, Mapping[Any, int] | None]:
    if isinstance(embeddings, Mapping):
        names = list(embeddings)
        if not names:
            raise ValueError("embeddings: the dictionary is empty")
        rows = [_as_array(embeddings[k], f"embedding {k!r}").reshape(-1) for k in names]
        dims = {r.shape[0] for r in rows}
        if len(dims) != 1:
            raise ValueError(f"embeddings: vectors of different sizes {sorted(dims)}")
        return np.stack(rows).astype(np.float32), {k: i for i, k in enumerate(names)}
    if isinstance(embeddings, tuple) and len(embeddings) == 2 and isinstance(embeddings[1], Mapping):
        return _as_array(embeddings[0], "embeddings").astype(np.float32, copy=False), embeddings[1]
    return _as_array(embeddings, "embeddings").astype(np.float32, copy=False), None


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype}")
    return arr


def _trial_rows(trials: Any, index: Mapping[Any, int] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(trials, "detach"):
        trials = trials.detach().cpu().numpy()
    if isinstance(trials, np.ndarray):
        if trials.ndim != 2 or trials.shape[1] not in (2, 3) or not np.issubdtype(trials.dtype, np.integer):
            raise ValueError(
                f"trials: an array must be integer (M, 2) enroll/test rows or (M, 3) label/enroll/test rows, "
                f"got {trials.dtype} {tuple(trials.shape)}"
            )
        a, b = trials[:, -2].astype(np.int64), trials[:, -1].astype(np.int64)
    else:
        trials = list(trials)
        if not trials:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        width = len(trials[0])
        if width not in (2, 3) or any(len(t) != width for t in trials):
            raise ValueError("trials: expected (label, enroll, test) or (enroll, test) items, all of one width")
        ka = [t[width - 2] for t in trials]
        kb = [t[width - 1] for t in trials]
        if isinstance(ka[0], (int, np.integer)) and not isinstance(ka[0], bool):
            a, b = np.asarray(ka, dtype=np.int64), np.asarray(kb, dtype=np.int64)
        else:
            if index is None:
                raise ValueError("trials name embeddings by key; pass a {name: vector} dict or (matrix, {name: row})")
            a, b = _lookup(ka, index, "enroll"), _lookup(kb, index, "test")
    for rows, side in ((a, "enroll"), (b, "test")):
        bad = (rows < 0) | (rows >= n)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataListError(f"trial {i}: {side} row {int(rows[i])} out of range for {n} embeddings")
    return a, b


def _lookup(keys: list, index: Mapping[Any, int], side: str) -> np.ndarray:
    try:
        return np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
    except KeyError:
        i = next(i for i, k in enumerate(keys) if k not in index)
        raise DataListError(f"trial {i}: no embedding for {side} {keys[i]!r}") from None


def cosine_score_trials(embeddings: Any, trials: Any) -> np.ndarray:
    """Cosine similarity of every trial in trial order (computed in float32, returned as float64).

    ``embeddings``: a ``{name: vector}`` dict, a ``(matrix, {name: row})`` pair, or an ``(N, D)`` matrix.
    ``trials``: ``(label, enroll, test)`` or ``(enroll, test)`` items naming embeddings by key (as returned
    by :func:`read_trials`) or by row (as returned by :func:`generate_trials`), or an integer ``(M, 2)`` /
    ``(M, 3)`` array of rows. The embeddings are normalised once; each trial is one gathered row-wise dot.

    >>> import numpy as np
    >>> emb = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]])
    >>> cosine_score_trials(emb, [(1, 0, 1), (0, 0, 2)]).round(4).tolist()
    [0.6, 0.0]
    >>> cosine_score_trials(emb, np.array([[1, 2]])).round(2).tolist()
    [0.8]
    """
    mat, index = _embedding_matrix(embeddings)
    if mat.ndim != 2:
        raise ValueError(f"embeddings: expected an (N, D) matrix, got shape {tuple(mat.shape)}")
    a, b = _trial_rows(trials, index, mat.shape[0])
    if a.size == 0:
        return np.zeros(0, dtype=np.float64)
    used = np.zeros(mat.shape[0], dtype=bool)
    used[a] = True
    used[b] = True
    norms = np.linalg.norm(mat, axis=1)
    bad = used & ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "is all zeros; its cosine similarity is undefined" if norms[row] == 0 else "holds NaN or inf"
        raise ValueError(f"embedding row {row} {what}")
    unit = mat / np.where(used, norms, 1.0).astype(np.float32)[:, None]
    out = np.empty(a.size, dtype=np.float32)
    for c in range(0, a.size, _CHUNK):
        ea = unit[a[c : c + _CHUNK]][:, None, :]
        eb = unit[b[c : c + _CHUNK]][:, :, None]
        out[c : c + _CHUNK] = np.matmul(ea, eb)[:, 0, 0]
    return out.astype(np.float64)


# ------------------------------------------------------------------------------------------------ generation
# ------------------------------------------------------------------------------------------------ AS-norm
def _unit_rows(x: Any, name: str) -> np.ndarray:
    arr = _as_array(x, name).astype(np.float32, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an (M, D) matrix, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: holds NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    return arr / norms


def cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each row's ``top_k`` highest cosine scores against the cohort (rows deduplicated).

    >>> mean, std = cohort_stats(np.eye(2, 3, dtype=np.float32), np.eye(3, dtype=np.float32), 2)
    >>> mean.tolist(), std.tolist()
    ([0.5, 0.5], [0.5, 0.5])
    """
    import torch

    flat = np.ascontiguousarray(emb).view(np.dtype((np.void, emb.dtype.itemsize * emb.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    uniq = torch.from_numpy(np.ascontiguousarray(emb[first]))
    coh = torch.from_numpy(np.ascontiguousarray(cohort))
    mean = np.empty(uniq.shape[0], np.float64)
    std = np.empty(uniq.shape[0], np.float64)
    step = max(1, (1 << 22) // max(1, coh.shape[0]))
    for r in range(0, uniq.shape[0], step):
        top = torch.topk(uniq[r : r + step] @ coh.T, top_k, dim=1).values.double()
        mean[r : r + step] = top.mean(dim=1).numpy()
        std[r : r + step] = top.std(dim=1, unbiased=False).numpy()
    inverse = inverse.reshape(-1)
    return mean[inverse], np.maximum(std[inverse], 1e-6)


def as_norm(scores: Any, enroll_emb: Any, test_emb: Any, cohort_emb: Any, top_k: int = 300) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm) of cosine trial scores.

    For trial ``(e, t)`` with raw score ``s``: ``0.5·((s − μ_e)/σ_e + (s − μ_t)/σ_t)``, where ``μ_e, σ_e``
    are the mean and standard deviation of the ``top_k`` highest cosine scores of ``e`` against the cohort
    (likewise for ``t``). ``enroll_emb`` and ``test_emb`` hold one row per trial (repeated rows are
    computed once); ``cohort_emb`` holds cohort embeddings from speakers outside the trials.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> e, t, cohort = rng.standard_normal((4, 8)), rng.standard_normal((4, 8)), rng.standard_normal((50, 8))
    >>> s = cosine_score_trials(np.vstack((e, t)), np.array([[i, 4 + i] for i in range(4)]))
    >>> as_norm(s, e, t, cohort, top_k=10).shape
    (4,)
    """
    s = _as_array(scores, "scores").astype(np.float64).reshape(-1)
    enroll = _unit_rows(enroll_emb, "enroll_emb")
    test = _unit_rows(test_emb, "test_emb")
    cohort = _unit_rows(cohort_emb, "cohort_emb")
    if not (enroll.shape[0] == test.shape[0] == s.shape[0]):
        raise ValueError(
            f"as_norm: {s.shape[0]} scores but {enroll.shape[0]} enroll and {test.shape[0]} test rows; "
            "give one enroll and one test row per trial"
        )
    if not (enroll.shape[1] == test.shape[1] == cohort.shape[1]):
        raise ValueError(
            f"as_norm: embedding sizes differ (enroll {enroll.shape[1]}, test {test.shape[1]}, "
            f"cohort {cohort.shape[1]})"
        )
    if cohort.shape[0] < 2:
        raise ValueError(f"as_norm: the cohort needs at least 2 embeddings, got {cohort.shape[0]}")
    if not np.isfinite(s).all():
        raise ValueError("as_norm: scores hold NaN or inf")
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if s.size == 0:
        return s
    k = min(int(top_k), cohort.shape[0])
    mu_e, sd_e = cohort_stats(enroll, cohort, k)
    mu_t, sd_t = cohort_stats(test, cohort, k)
    return 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)


# ------------------------------------------------------------------------------------------------ plots
def _new_figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


#: Candidate DET tick positions (rates); those too close on the normal-deviate axis to be read are dropped.
_DET_TICKS = (1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999)


def det_ticks(lo: float, hi: float, min_gap: float = 0.25) -> list[float]:
    """DET tick rates within ``[lo, hi]``, at least ``min_gap`` apart on the normal-deviate axis (no overlap).

    >>> det_ticks(1e-3, 0.999)
    [0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999]
    """
    from scipy.special import ndtri

    out: list[float] = []
    for t in _DET_TICKS:
        if lo <= t <= hi and (not out or ndtri(t) - ndtri(out[-1]) >= min_gap):
            out.append(t)
    return out


def _tick_label(t: float) -> str:
    return f"{100 * t:.10g}"


def save_det_plot(scores: Any, labels: Any, path: PathLike, title: str = "") -> None:
    """Write the DET curve (miss rate vs false-alarm rate on normal-deviate axes) as a PNG, EER marked.

    Both axes run from the smallest rate the trial counts can show (at least 0.01 %) to 99.9 %, so a weak
    model's curve is not cut off; tick labels never overlap; the legend sits below the axes, off the curve.
    ``title`` (e.g. ``"EcapaTdnn_MelSpectrogram on trials.txt"``) heads the plot, with the trial counts.

    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "det.png")
    >>> save_det_plot([0.9, 0.7, 0.4, 0.5, 0.2, 0.1], [1, 1, 1, 0, 0, 0], out, title="TDNN on trials.txt")
    >>> open(out, "rb").read(4)
    b'\\x89PNG'
    """
    from scipy.special import ndtri

    s, y = check_scores_labels(scores, labels)
    c = score_curve(s, y)
    eer, _, _ = eer_from_curve(c)
    fpr, fnr = c.fpr, c.fnr
    if fpr.size > 20000:  # a plot needs no more points than pixels
        keep = np.unique(np.linspace(0, fpr.size - 1, 20000).astype(np.int64))
        fpr, fnr = fpr[keep], fnr[keep]
    fewest = int(min(y.sum(), (~y).sum()))
    lo = min(0.01, max(1e-4, 10 ** np.floor(np.log10(1.0 / max(fewest, 1)))))
    hi = 0.999
    ticks = det_ticks(lo, hi)
    fig = _new_figure((5.5, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ndtri(np.clip(fpr, lo / 2, 1 - lo / 2)), ndtri(np.clip(fnr, lo / 2, 1 - lo / 2)), lw=1.5, label="DET")
    ax.plot([ndtri(lo), ndtri(hi)], [ndtri(lo), ndtri(hi)], "k:", lw=0.8, label="miss = false alarm")
    e = min(max(eer, lo), hi)
    ax.plot([ndtri(e)], [ndtri(e)], "o", color="C3", label=f"EER {100 * eer:.2f}%")
    ax.set_xticks(ndtri(np.array(ticks)))
    ax.set_xticklabels([_tick_label(t) for t in ticks], rotation=90)
    ax.set_yticks(ndtri(np.array(ticks)))
    ax.set_yticklabels([_tick_label(t) for t in ticks])
    ax.set_xlim(ndtri(lo), ndtri(hi))
    ax.set_ylim(ndtri(lo), ndtri(hi))
    ax.set_xlabel("False alarm rate (%)")
    ax.set_ylabel("Miss rate (%)")
    counts = f"{int(y.sum())} target, {int((~y).sum())} non-target trials"
    ax.set_title(f"DET: {title}\n({counts})" if title else f"DET curve ({counts})", fontsize=10)
    ax.grid(True, lw=0.4, alpha=0.6)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    _save(fig, path)


def save_score_histogram(scores: Any, labels: Any, path: PathLike, threshold: float | None = None) -> None:
    """Write overlaid target / non-target score histograms (densities) as a PNG, with an optional threshold line.

    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "hist.png")
    >>> save_score_histogram([0.9, 0.7, 0.4, 0.5, 0.2, 0.1], [1, 1, 1, 0, 0, 0], out, threshold=0.45)
    >>> open(out, "rb").read(4)
    b'\\x89PNG'
    """
    s, y = check_scores_labels(scores, labels)
    edges = np.linspace(s.min(), s.max() if s.max() > s.min() else s.min() + 1.0, 101)
    fig = _new_figure((6.5, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(s[~y], bins=edges, density=True, alpha=0.55, color="C0", label=f"non-target ({int((~y).sum())})")
    ax.hist(s[y], bins=edges, density=True, alpha=0.55, color="C1", label=f"target ({int(y.sum())})")
    if threshold is not None:
        ax.axvline(float(threshold), color="k", ls="--", lw=1.2, label=f"threshold {float(threshold):.4f}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend(loc="upper left")
    ax.grid(True, lw=0.4, alpha=0.6)
    _save(fig, path)
