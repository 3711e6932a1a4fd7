"""``mvector calibrate``: fit a score calibration from labelled trials and store it in the model folder.

    mvector calibrate --model_path models/EcapaTdnn_MelSpectrogram/best_model --trials my_pairs.txt
    mvector calibrate --model_path DIR --trials trials.txt --rule far --target 0.01 --save_image_path out/

The trial list is ``label enrol test`` per line (``1`` = same speaker), paths relative to the list's folder (or
``--trials_root``). Every file is embedded once with the model; the cosine scores are mapped to log-likelihood
ratios by prior-weighted logistic regression (``--durations`` adds the two sides' durations as quality
measures), a threshold is chosen by ``--rule``/``--target``, and ``calibration.json`` (with the model's
fingerprint, the data it was fitted on and the operating point) is written atomically into the model folder.
One JSON line reports ``cllr``, ``min_cllr``, ``act_dcf``, ``min_dcf``, ``eer``, the cross-validated
``cllr_cv`` and the threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from mvector.cli.common import (
    CliParser,
    HelpFormatter,
    add_flag,
    add_threads_argument,
    add_use_gpu_flag,
    apply_threads,
    run_cli,
)

__all__ = ["main", "build_parser"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``mvector calibrate``.

    >>> build_parser("mvector calibrate").parse_args(["--model_path", "m", "--trials", "t.txt"]).rule
    'probability'
    """
    parser = CliParser(
        prog=prog,
        description="Fit a score calibration (score -> log-likelihood ratio) from labelled trials and store it "
        "with the model (calibration.json).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model_path", required=True, help="model folder (checkpoint or export)")
    parser.add_argument("--trials", required=True, help="trial list: 'label enrol test' per line, 1 = same")
    parser.add_argument("--trials_root", default=None, help="folder the trial paths are relative to (None: the list's)")
    parser.add_argument("--prior", type=float, default=0.5, help="prior the logistic regression is weighted to")
    add_flag(
        parser, "--durations", default=False, help="also use both sides' durations (QMF-style quality measures)"
    )
    parser.add_argument(
        "--calibration_rule", "--rule",
        dest="rule",
        choices=("far", "frr", "eer", "probability"),
        default="probability",
        help="how the decision threshold is chosen: target false-acceptance rate, target false-rejection rate, "
        "the EER point, or a minimum probability of same speaker (--rule: the same, the name mvector eval "
        "does not use)",
    )
    parser.add_argument(
        "--calibration_target", "--target", dest="target", type=float, default=None,
        help="the rule's target (far/frr: a rate; probability: 0.5 default); --target: the same",
    )
    parser.add_argument(
        "--threshold_prior", type=float, default=0.5, help="prior of same speaker at which --rule probability applies"
    )
    parser.add_argument("--p_target", type=float, default=0.01, help="P_target of the DCF measures")
    parser.add_argument("--folds", type=int, default=5, help="folds of the cross-validated Cllr (cllr_cv)")
    parser.add_argument("--output", default=None, help="where to write (default: MODEL_PATH/calibration.json)")
    add_flag(parser, "--dry_run", default=False, help="fit and report, write nothing")
    add_flag(
        parser, "--force", default=False,
        help="store the calibration even from fewer than 10 speakers or 300 non-target trials (refused otherwise)",
    )
    parser.add_argument("--save_image_path", default=None, help="folder for the reliability plot (reliability.png)")
    add_use_gpu_flag(parser, "embed on CUDA")
    add_threads_argument(parser)
    parser.add_argument("--batch_size", type=int, default=32, help="recordings per embedding batch")
    return parser


def _run(args: argparse.Namespace) -> dict:
    import numpy as np

    from mvector.errors import ConfigError
    from mvector.evaluation.calibration_fit import fit_from_trials
    from mvector.evaluation.calibration_store import save_calibration
    from mvector.evaluation.reliability_plot import save_reliability_plot
    from mvector.evaluation.scoring import read_trials
    from mvector.inference.predictor import MVectorPredictor

    if args.rule in ("far", "frr") and args.target is None:
        raise ConfigError(f"--calibration_rule {args.rule} needs --calibration_target (a rate, e.g. 0.01)")
    target = 0.5 if args.rule == "probability" and args.target is None else args.target
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    trials = read_trials(args.trials, args.trials_root)
    from mvector.evaluation.uncertainty import refuse_weak_operating_point, speakers_in_trials

    n_speakers = speakers_in_trials(trials)
    n_non = sum(1 for t in trials if int(t[0]) == 0)
    note = None
    if not args.dry_run:  # checked before anything is embedded
        note = refuse_weak_operating_point(n_speakers, n_non, args.force, "a calibration and operating point")
    predictor = MVectorPredictor(model_path=args.model_path, use_gpu=args.use_gpu, threshold=0.0)

    def embed(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(paths), predictor.embd_dim), dtype=np.float32)
        durations = np.zeros(len(paths))
        chunk = 256  # bounded memory: decode and embed a few hundred files at a time
        for start in range(0, len(paths), chunk):
            waves = [predictor.load(p) for p in paths[start : start + chunk]]
            durations[start : start + len(waves)] = [len(w) / predictor.sample_rate for w in waves]
            out[start : start + len(waves)] = predictor.embed_batch(
                [(w, predictor.sample_rate) for w in waves], batch_size=args.batch_size
            )
        return out, durations

    cal, report, scores, labels, quality = fit_from_trials(
        trials,
        embed,
        prior=args.prior,
        use_durations=args.durations,
        rule=args.rule,
        target=target,
        threshold_prior=args.threshold_prior,
        p_target=args.p_target,
        folds=args.folds,
        data=str(Path(args.trials)),
        model_fingerprint=predictor.fingerprint,
        score_pairs=None if predictor.score_norm is None else (
            lambda emb, a, b: predictor.score_norm.score_pairs(emb, np.stack([a, b], axis=1))
        ),
        score_type=predictor.score_type,  # the scale the predictor scores on (its stored AS-norm cohort, or cosine)
    )
    result = _summary(args, cal, report, scores, labels, trials, n_speakers)
    if note:
        result["note"] = note
    if not args.dry_run:
        output = Path(args.output) if args.output else predictor.model_path
        result["saved"] = str(save_calibration(cal, output))
    if args.save_image_path:
        result["reliability_plot"] = str(
            save_reliability_plot(scores, labels, Path(args.save_image_path) / "reliability.png", cal, quality)
        )
    return result


def _summary(
    args: argparse.Namespace, cal: Any, report: dict, scores: Any, labels: Any, trials: list, n_speakers: int
) -> dict:
    """What ``mvector calibrate`` prints: the fit's measures, the operating point with Wilson intervals of its
    rates, and speaker-bootstrap intervals of the EER and minDCF."""
    result = {
        "cllr": report["cllr"],
        "min_cllr": report["min_cllr"],
        "act_dcf": report["act_dcf"],
        "min_dcf": report["min_dcf"],
        "eer": report["eer"],
        "cllr_cv": report["cllr_cv"],
        "cllr_raw": report["cllr_raw"],
        "p_target": args.p_target,
        "n_target": report["n_target"],
        "n_nontarget": report["n_nontarget"],
        "weights": cal.weights,
        "bias": cal.bias,
        "operating_point": cal.operating_point,
        "speakers": n_speakers,
        "nontarget_distribution_stored": cal.nontarget is not None,
    }
    from mvector.evaluation.uncertainty import rate_interval, trial_bootstrap_metrics, trial_speakers

    op = cal.operating_point or {}
    if op.get("far") is not None:
        n_t, n_n = report["n_target"], report["n_nontarget"]
        result["far_ci95"] = list(rate_interval(round(op["far"] * n_n), n_n))
        result["frr_ci95"] = list(rate_interval(round(op["frr"] * n_t), n_t))
    spk = trial_speakers(trials)
    if len(set(spk.values())) >= 2:
        ci = trial_bootstrap_metrics(scores, labels, [spk[t[1]] for t in trials], [spk[t[2]] for t in trials],
                                     p_target=args.p_target, rounds=100)  # fmt: skip
        result["eer_ci95"], result["min_dcf_ci95"] = ci["eer"], ci["min_dcf"]
    return result


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``mvector calibrate``; prints one JSON line; returns the exit status (2 on a bad input)."""
    parser = build_parser(prog)

    def body(argv: Sequence[str] | None) -> None:
        args = parser.parse_args(argv)
        apply_threads(args)
        print(json.dumps(_run(args)), flush=True)

    return run_cli(body, argv)


if __name__ == "__main__":
    sys.exit(main())
