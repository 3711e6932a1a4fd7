"""Evaluate a model folder (checkpoint or export) on a test or trial list: what ``eval.py`` / ``mvector eval`` run.

The data lists stored with the model are used unless others are given; the model's own configuration keys always
win. Results go to ``<model folder>/evaluations/<list name>.json``; the folder's operating point
(``result.json``, whose threshold the predictor uses) changes only when asked (``set_threshold=True``).

>>> import tempfile, pathlib
>>> from mvector.data.synthetic import generate_corpus
>>> from mvector.demo import tiny_checkpoint
>>> test_list = generate_corpus(tempfile.mkdtemp(), num_speakers=3, utterances_per_speaker=2, min_duration=1.0,
...                             max_duration=1.0)
>>> model = tiny_checkpoint(tempfile.mkdtemp())
>>> run = evaluate_model_folder(model, overrides={"dataset_conf.test_list": str(test_list)}, progress=False)
>>> run.metrics["num_trials"], run.written.name, run.operating_point_changed
(15, 'list.json', False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from mvector.build import merge_model_config, model_name
from mvector.config import load_config
from mvector.embedding.backends import Embedder, open_backend
from mvector.errors import ConfigError
from mvector.evaluation.evaluator import EvalSettings, Evaluator, default_num_workers
from mvector.evaluation.score_norm import ScoreNorm
from mvector.utils.device import select_device
from mvector.utils.files import atomic_write_json

__all__ = ["EvaluationRun", "evaluate_model_folder", "run_config"]

PathLike = Union[str, os.PathLike]


@dataclass
class EvaluationRun:
    """What an evaluation produced: the metrics, where they were written, and the configuration used."""

    metrics: dict[str, Any]
    written: Path
    operating_point_changed: bool
    config: dict[str, Any]
    embedder: Embedder
    notes: list[str]


def run_config(
    stored: Mapping[str, Any],
    configs: Union[str, os.PathLike, Mapping[str, Any], None] = None,
    overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
) -> tuple[dict[str, Any], list[str]]:
    """The configuration to evaluate with: ``configs`` (or the model's stored one) with ``overrides``, and the
    model's embedding keys on top; returns it with the differences that were overruled."""
    conf = load_config(dict(stored) if configs is None else configs, overrides, validate=False)
    return merge_model_config(conf, stored)


def evaluate_model_folder(
    model_path: PathLike,
    configs: Union[str, os.PathLike, Mapping[str, Any], None] = None,
    overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
    use_gpu: bool | None = None,
    backend: str = "auto",
    cohort_list: PathLike | None = None,
    asnorm_top_k: int = 300,
    save_image_path: PathLike | None = None,
    set_threshold: bool = False,
    output: PathLike | None = None,
    progress: bool = True,
    calibrate: bool = False,
    calibration_rule: str = "probability",
    calibration_target: float | None = None,
    calibration_prior: float = 0.5,
    p_target: float = 0.01,
    open_set: bool = False,
    open_set_unknown: float = 1 / 3,
    open_set_enrol: int = 3,
    open_set_repeats: int = 10,
    margin: float = 0.0,
    force: bool = False,
    use_score_norm: bool = True,
) -> EvaluationRun:
    """Evaluate ``model_path``; see the module docstring. ``output`` overrides where the metrics JSON goes.

    With ``calibrate`` a score calibration is fitted on the evaluation trials and stored in the model folder
    (``calibration.json``, fingerprinted, with the operating point chosen by ``calibration_rule`` /
    ``calibration_target``: see :func:`mvector.evaluation.calibration.choose_operating_point`); the metrics gain
    ``cllr``, ``min_cllr``, ``act_dcf`` (at ``p_target``), ``cllr_cv`` (5-fold cross-validated) and
    ``calibration``; ``save_image_path`` also gets a reliability plot.

    With ``open_set`` the test list's speakers are split ``open_set_repeats`` times into enrolled speakers (from
    ``open_set_enrol`` recordings each) and unknown ones (``open_set_unknown`` of them), and ``open_set`` in the
    metrics holds the open-set identification measures: DIR at FAR 1 / 5 / 10 %, rank-1, and the decisions at the
    model's threshold with ``margin`` (:func:`mvector.evaluation.openset.open_set_protocol`).

    An operating point (``set_threshold``, ``calibrate``) is refused, before anything is written, when the
    trials come from fewer than :data:`~mvector.evaluation.uncertainty.MIN_SPEAKERS` speakers or hold fewer than
    :data:`~mvector.evaluation.uncertainty.MIN_NONTARGET_TRIALS` non-target trials, unless ``force``. The metrics
    gain ``fpr_ci95`` / ``tpr_ci95`` (Wilson intervals of the rates at the EER threshold), ``eer_ci95_trials``
    (the wider of the EER's Wilson intervals over targets and non-targets) and ``speakers``.
    A model folder holding a score normalisation (``score_norm.npz``, written by training with
    ``score_norm_conf.cohort: speakers``) is scored with it unless ``cohort_list`` is given or ``use_score_norm``
    is false; the metrics then say ``score_type: as_norm_model``, the scale the predictor also scores on.
    """
    device = select_device(use_gpu)
    embedder = open_backend(model_path, backend, device)
    conf, diffs = run_config(embedder.config, configs, overrides)
    notes = [f"using the model configuration stored in {embedder.folder} ({'; '.join(diffs)})"] if diffs else []
    ds = conf["dataset_conf"]
    evaluator = Evaluator(embedder, EvalSettings.from_dataset_conf(ds, default_num_workers(device)), progress)
    stored_norm = ScoreNorm.load(embedder.folder, embedder.embd_dim) if use_score_norm and not cohort_list else None
    metrics = evaluator.evaluate(
        ds["test_list"], ds["trials_list"], ds["trials_root"], ds["num_eval_trials"], cohort_list, asnorm_top_k,
        save_image_path, title=model_name(conf), keep_scores=calibrate, score_norm=stored_norm,
    )
    score_type = "as_norm" if cohort_list else ("as_norm_model" if stored_norm is not None else "cosine")
    metrics["score_type"] = score_type
    source = ds["trials_list"] or ds["test_list"]
    metrics["evaluated_on"] = str(source)
    _add_uncertainty(metrics, ds)
    if set_threshold or calibrate:
        from mvector.evaluation.uncertainty import refuse_weak_operating_point

        what = "the operating point (result.json / calibration.json)"
        note = refuse_weak_operating_point(metrics["speakers"], metrics["num_nontargets"], force, what)
        if note:
            notes.append(note)
    if calibrate:
        metrics.update(
            _calibrate(
                evaluator, embedder, str(source), score_type, calibration_rule, calibration_target,
                calibration_prior, p_target, save_image_path,
            )
        )  # fmt: skip
    if open_set:
        metrics["open_set"] = _open_set(
            evaluator, embedder, ds["test_list"], open_set_unknown, open_set_enrol, open_set_repeats, margin,
            stored_norm,
        )
    written = Path(output) if output else embedder.folder / "evaluations" / f"{Path(str(source)).stem}.json"
    atomic_write_json(written, metrics)
    if set_threshold:
        atomic_write_json(embedder.folder / "result.json", metrics)
    return EvaluationRun(metrics, written, set_threshold, conf, embedder, notes)


def _add_uncertainty(metrics: dict[str, Any], ds: Mapping[str, Any]) -> None:
    """Speakers behind the trials and 95 % Wilson intervals of the rates at the EER threshold, into ``metrics``."""
    from mvector.evaluation.uncertainty import rate_interval, speakers_in_trials

    if ds.get("trials_list"):
        from mvector.evaluation.scoring import read_trials

        metrics["speakers"] = speakers_in_trials(read_trials(ds["trials_list"], ds.get("trials_root")))
    else:
        from mvector.data.lists import load_utterances

        metrics["speakers"] = len({u.label for u in load_utterances(ds["test_list"])})
    n_t, n_n = int(metrics["num_targets"]), int(metrics["num_nontargets"])
    metrics["tpr_ci95"] = list(rate_interval(round(float(metrics["tpr"]) * n_t), n_t))
    metrics["fpr_ci95"] = list(rate_interval(round(float(metrics["fpr"]) * n_n), n_n))
    # the EER is a miss rate over the targets and a false-alarm rate over the non-targets at once: the wider of the
    # two intervals (trial-level, so narrower than a speaker-level bootstrap: mvector calibrate reports that one)
    eer = float(metrics["eer"])
    lo_t, hi_t = rate_interval(round(eer * n_t), n_t)
    lo_n, hi_n = rate_interval(round(eer * n_n), n_n)
    metrics["eer_ci95_trials"] = [min(lo_t, lo_n), max(hi_t, hi_n)]


def _calibrate(
    evaluator: Evaluator,
    embedder: Embedder,
    source: str,
    score_type: str,
    rule: str,
    target: float | None,
    prior: float,
    p_target: float,
    save_image_path: PathLike | None,
) -> dict[str, Any]:
    """Fit and store the calibration on the evaluation's scores; returns the measures that judge it."""
    from mvector.evaluation.calibration import actual_dcf, cllr
    from mvector.evaluation.calibration_fit import (
        calibration_report,
        choose_operating_point,
        cross_validated_llrs,
        fit_calibration,
    )
    from mvector.evaluation.calibration_store import save_calibration
    from mvector.evaluation.reliability_plot import save_reliability_plot

    if evaluator.last_scores is None:
        raise ConfigError("--calibrate needs trial scores, but the evaluation kept none")
    scores, labels = evaluator.last_scores
    if rule == "probability" and target is None:
        target = 0.5
    cal = fit_calibration(scores, labels, model_fingerprint=embedder.fingerprint, data=source, score_type=score_type)
    cal.operating_point = choose_operating_point(
        scores, labels, rule, target, calibration=cal, prior=prior, data=source, score_type=score_type
    )
    report = calibration_report(scores, labels, cal, p_target=p_target)
    out: dict[str, Any] = {k: report[k] for k in ("cllr", "min_cllr", "act_dcf", "cllr_raw")}
    out["min_dcf_calibration"] = report["min_dcf"]
    out["p_target_calibration"] = p_target
    if int(min(labels.sum(), (1 - labels).sum())) >= 5:
        cv = cross_validated_llrs(scores, labels, folds=5)
        out["cllr_cv"] = cllr(cv, labels)
        out["act_dcf_cv"] = actual_dcf(cv, labels, p_target=p_target)
    cal.metrics = {**report, **out}
    written = save_calibration(cal, embedder.folder)
    out["calibration"] = {
        "file": str(written),
        "weights": cal.weights,
        "bias": cal.bias,
        "operating_point": cal.operating_point,
    }
    if save_image_path:
        plot = save_reliability_plot(scores, labels, Path(save_image_path) / "reliability.png", cal)
        out["reliability_plot"] = str(plot)
    return out


def _open_set(
    evaluator: Evaluator,
    embedder: Embedder,
    test_list: PathLike | None,
    unknown: float,
    enrol: int,
    repeats: int,
    margin: float,
    score_norm: ScoreNorm | None,
) -> dict[str, Any]:
    """Open-set identification measures on the test list, decisions at the model's current threshold, scored on
    its scale (the stored AS-norm cohort when the model has one, as the predictor's search does)."""
    import numpy as np

    from mvector.data.lists import load_utterances
    from mvector.evaluation.calibration_store import load_calibration, resolve_threshold
    from mvector.evaluation.openset import open_set_protocol

    if not test_list:
        raise ConfigError("--open_set needs a test list with speaker labels (dataset_conf.test_list)")
    utts = load_utterances(test_list)
    emb = evaluator.embed_paths([u.path for u in utts], desc="open-set")
    speakers = np.array([u.label for u in utts])[emb.ok]
    threshold, source = resolve_threshold(embedder.folder, load_calibration(embedder.folder, embedder.fingerprint))
    out = open_set_protocol(
        emb.vectors[emb.ok], speakers, unknown_fraction=unknown, enrol_per_speaker=enrol, repeats=repeats,
        threshold=threshold, margin=margin, score_norm=score_norm,
    )  # fmt: skip
    out["threshold_source"] = source
    out["score_type"] = "cosine" if score_norm is None else "as_norm_model"
    out["test_list"] = str(test_list)
    return out
