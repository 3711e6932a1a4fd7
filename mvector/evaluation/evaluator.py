"""The evaluator: embed a test list with any embedder, score trials or every pair, optional AS-norm cohort.

Used by ``eval.py`` / ``mvector eval`` (any model folder: checkpoint, ONNX or TorchScript export) and by the
trainer's evaluation after each epoch (the model being trained). It knows nothing about training.

>>> import tempfile, pathlib, numpy as np
>>> from mvector.data.synthetic import generate_corpus
>>> from mvector.demo import tiny_checkpoint
>>> from mvector.embedding.backends import open_backend
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> test_list = generate_corpus(folder, num_speakers=3, utterances_per_speaker=3, min_duration=1.0, max_duration=1.2)
>>> evaluator = Evaluator(open_backend(tiny_checkpoint(tempfile.mkdtemp())), progress=False)
>>> result = evaluator.evaluate(test_list=test_list)
>>> sorted(k for k in result if k in ("eer", "min_dcf", "num_trials")), result["num_trials"]
(['eer', 'min_dcf', 'num_trials'], 36)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from mvector.data.dataset import EvalDataset, collate_batch
from mvector.data.lists import load_utterances
from mvector.data.trials import generate_trials
from mvector.embedding import embed_batches, length_batches
from mvector.embedding.loop import min_samples_of
from mvector.errors import DataListError
from mvector.evaluation.metrics import all_pairs_metrics, evaluate_scores
from mvector.evaluation.score_norm import ScoreNorm
from mvector.evaluation.scoring import as_norm, cosine_score_trials, read_trials, save_det_plot, save_score_histogram
from mvector.utils.threads import current_plan

__all__ = ["Evaluator", "EvalSettings", "Embeddings", "trial_arrays"]

PathLike = Union[str, os.PathLike]


def trial_arrays(trials: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(label, i, j)`` trials → labels ``[M]`` and index pairs ``[M, 2]`` (int64).

    >>> labels, pairs = trial_arrays([(1, 0, 1), (0, 0, 2)])
    >>> labels.tolist(), pairs.tolist()
    ([1, 0], [[0, 1], [0, 2]])
    """
    arr = np.asarray(trials, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0].copy(), arr[:, 1:].copy()


@dataclass
class EvalSettings:
    """How test audio is read: the ``dataset_conf`` keys that matter for evaluation.

    >>> EvalSettings.from_dataset_conf({"sample_rate": 8000, "eval_batch_size": 4}).sample_rate
    8000
    """

    sample_rate: int = 16000
    max_duration: float | None = 20.0
    batch_size: int = 32
    normalize: bool = True
    target_db: float = -20.0
    vad: bool = False
    num_workers: int = 0

    @classmethod
    def from_dataset_conf(cls, ds: dict[str, Any], num_workers: int = 0) -> EvalSettings:
        defaults = cls()
        return cls(
            sample_rate=int(ds.get("sample_rate", defaults.sample_rate)),
            max_duration=ds.get("eval_max_duration", defaults.max_duration),
            batch_size=int(ds.get("eval_batch_size", defaults.batch_size)),
            normalize=bool(ds.get("use_dB_normalization", defaults.normalize)),
            target_db=float(ds.get("target_dB", defaults.target_db)),
            vad=bool(ds.get("vad", defaults.vad)),
            num_workers=int(num_workers),
        )


@dataclass
class Embeddings:
    """Embeddings of a list of files: ``vectors [N, D]``, ``ok [N]`` (False for an unreadable file), the failures."""

    vectors: np.ndarray
    ok: np.ndarray
    unreadable: list[tuple[str, str]]


class Evaluator:
    """Evaluate an embedder (a backend, or a waveform→embedding module) on a test list or a trial list.

    Args:
        embedder: ``embedder(waves [B, T], lengths [B]) -> [B, D]`` (see :mod:`mvector.embedding`).
        settings: how test audio is read (:class:`EvalSettings`).
        progress: show a progress bar while embedding.
        log: where one-line notes go (unreadable files left out).
    """

    def __init__(
        self,
        embedder: Callable[..., Any],
        settings: EvalSettings | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.embedder = embedder
        self.settings = settings or EvalSettings(sample_rate=int(getattr(embedder, "sample_rate", 16000)))
        self.progress = progress
        self.log = log

    # ------------------------------------------------------------------ embedding
    def embed_paths(self, paths: Sequence[str], desc: str = "embedding", speed: float = 1.0) -> Embeddings:
        """Embed audio files (cut to ``max_duration``), batched by length; unreadable ones are marked, not fatal.
        ``speed`` other than 1.0 embeds them played that many times faster (:class:`EvalDataset`)."""
        st = self.settings
        dataset = EvalDataset(
            list(paths), st.sample_rate, st.max_duration, normalize=st.normalize, target_db=st.target_db, vad=st.vad,
            speed=speed,
        )  # fmt: skip
        batches = length_batches(dataset.durations(), st.batch_size)
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=st.num_workers,
            collate_fn=collate_batch,
            prefetch_factor=2 if st.num_workers > 0 else None,
        )
        unreadable: list[tuple[str, str]] = []
        min_samples = min_samples_of(self.embedder) or 0
        window = f"shorter than one analysis window ({min_samples} samples)"

        def feed():
            for batch in loader:
                unreadable.extend(batch.skipped)
                rows = batch.labels.tolist()
                if min_samples and len(rows) and bool((batch.lengths < min_samples).any()):
                    # Too short to embed (after decoding and VAD): left out and reported like an unreadable file.
                    keep = batch.lengths >= min_samples
                    for row, ok in zip(rows, keep.tolist()):
                        if not ok:
                            unreadable.append((dataset.paths[row], window))
                    rows = [r for r, ok in zip(rows, keep.tolist()) if ok]
                    waves, lengths = batch.waveforms[keep], batch.lengths[keep]
                    if len(rows):
                        waves = waves[:, : int(lengths.max())]
                    yield rows, waves, lengths
                    continue
                yield rows, batch.waveforms, batch.lengths

        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), desc=desc, unit="utt", leave=False)
        try:
            advance = (lambda done: bar.update(done - bar.n)) if bar is not None else None
            vectors = embed_batches(self.embedder, feed(), len(paths), progress=advance, names=dataset.paths)
        finally:
            if bar is not None:
                bar.close()
        index = {p: i for i, p in enumerate(paths)}
        ok = np.ones(len(paths), dtype=bool)
        for path, _ in unreadable:
            if path in index:
                ok[index[path]] = False
        return Embeddings(vectors, ok, unreadable)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        test_list: PathLike | None = None,
        trials_list: PathLike | None = None,
        trials_root: PathLike | None = None,
        num_eval_trials: int | None = None,
        cohort_list: PathLike | None = None,
        asnorm_top_k: int = 300,
        save_image_path: PathLike | None = None,
        title: str = "",
        keep_scores: bool = False,
        score_norm: ScoreNorm | None = None,
    ) -> dict[str, Any]:
        """Metrics of the embedder on ``trials_list``, or on pairs of ``test_list`` utterances.

        With a trial list its trials are scored. Otherwise every pair of distinct test utterances is scored
        exactly in bounded memory, or ``num_eval_trials`` balanced pairs are drawn. Returns ``eer``, ``min_dcf``
        (P_target 0.01), ``min_dcf_0.05``, ``threshold`` (the EER threshold), ``tpr``/``fpr`` there,
        ``num_trials``; ``save_image_path`` adds a DET plot and a score histogram (``images``). With
        ``keep_scores`` the trial scores and labels stay in ``last_scores`` (for all pairs: a sample of up to
        200,000 pairs), e.g. to fit a calibration. ``score_norm`` (a model's stored :class:`~mvector.evaluation.
        score_norm.ScoreNorm`) scores every trial with it instead of plain cosine (``cohort_list`` wins over it).
        """
        self.last_scores = None
        self._score_norm = None if cohort_list else score_norm
        if trials_list:
            scores, labels, metrics, bad = self._trial_list_scores(trials_list, trials_root, cohort_list, asnorm_top_k)
        elif test_list:
            scores, labels, metrics, bad = self._test_list_scores(
                test_list, num_eval_trials, cohort_list, asnorm_top_k, bool(save_image_path) or keep_scores
            )
        else:
            raise DataListError("evaluation needs a test list or a trial list (dataset_conf.test_list / trials_list)")
        if bad:
            metrics["unreadable_files"] = [p for p, _ in bad]
            shown = "; ".join(f"{p}: {why}" for p, why in bad[:5]) + (" ..." if len(bad) > 5 else "")
            self.log(f"evaluation: {len(bad)} unreadable or too short files left out ({shown})")
        if save_image_path and scores is not None:
            source = Path(trials_list or test_list).name
            metrics["images"] = self._plots(scores, labels, metrics, Path(save_image_path), title, source)
        if keep_scores and scores is not None:
            self.last_scores = (np.asarray(scores, dtype=np.float64), np.asarray(labels))
        return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in metrics.items()}

    def _trial_list_scores(self, trials_list, trials_root, cohort_list, top_k):
        trials = read_trials(trials_list, trials_root)
        paths = sorted({p for _, a, b in trials for p in (a, b)})
        emb = self.embed_paths(paths)
        index = {p: i for i, p in enumerate(paths)}
        keep = [(lab, index[a], index[b]) for lab, a, b in trials if emb.ok[index[a]] and emb.ok[index[b]]]
        labels, pairs = trial_arrays(keep)
        if len(set(labels.tolist())) < 2:
            raise DataListError(
                f"{trials_list}: the usable trials hold only one class ({len(keep)} trials); evaluation needs both "
                "target (1) and non-target (0) trials"
            )
        scores = self._normalised(cosine_score_trials(emb.vectors, pairs), emb.vectors, pairs, cohort_list, top_k)
        return scores, labels, evaluate_scores(scores, labels), emb.unreadable

    def _test_list_scores(self, test_list, num_eval_trials, cohort_list, top_k, want_scores):
        utts = load_utterances(test_list)
        emb = self.embed_paths([u.path for u in utts])
        vectors = emb.vectors[emb.ok]
        speaker = np.array([u.label for u in utts], dtype=np.int64)[emb.ok]
        if num_eval_trials or cohort_list or self._score_norm is not None:
            labels, pairs = trial_arrays(generate_trials(speaker.tolist(), num_eval_trials, seed=0))
            scores = self._normalised(cosine_score_trials(vectors, pairs), vectors, pairs, cohort_list, top_k)
            return scores, labels, evaluate_scores(scores, labels), emb.unreadable
        metrics = all_pairs_metrics(vectors, speaker)
        scores = labels = None
        if want_scores:  # the plots use a sample of the pairs
            labels, pairs = trial_arrays(generate_trials(speaker.tolist(), min(200_000, len(speaker) ** 2), seed=0))
            scores = cosine_score_trials(vectors, pairs)
        return scores, labels, metrics, emb.unreadable

    def _normalised(self, scores, vectors, pairs, cohort_list, top_k):
        if getattr(self, "_score_norm", None) is not None:
            return self._score_norm.score_pairs(vectors, pairs)
        if not cohort_list:
            return scores
        cohort_utts = load_utterances(cohort_list)
        cohort = self.embed_paths([u.path for u in cohort_utts], desc="cohort")
        return as_norm(scores, vectors[pairs[:, 0]], vectors[pairs[:, 1]], cohort.vectors[cohort.ok], top_k=top_k)

    @staticmethod
    def _plots(scores, labels, metrics, out: Path, title: str, source: str = "") -> list[str]:
        out.mkdir(parents=True, exist_ok=True)
        stem = title.replace(" ", "_").replace("/", "_") or "evaluation"
        det, hist = out / f"{stem}_det.png", out / f"{stem}_scores.png"
        save_det_plot(scores, labels, det, title=" on ".join(t for t in (title, source) if t))
        save_score_histogram(scores, labels, hist, threshold=metrics["threshold"])
        return [str(det), str(hist)]


def default_num_workers(device: torch.device, configured: int | None = None, cap: int | None = None) -> int:
    """Data-loading workers: the configured number (at most ``cap``), or by default the thread policy's (none on
    CPU, where they compete with the model for the cores; on CUDA up to 4 of the usable CPUs,
    :meth:`mvector.utils.threads.ThreadPlan.loader_workers`). The one rule for training and evaluation loaders.

    >>> default_num_workers(torch.device("cpu")), default_num_workers(torch.device("cpu"), 8, cap=4)
    (0, 4)
    """
    if configured is not None:
        return int(configured) if cap is None else min(int(configured), int(cap))
    return current_plan().loader_workers(device)
