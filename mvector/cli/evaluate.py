r"""Evaluate a model folder: EER, minDCF (0.01 and 0.05), threshold, TPR/FPR; prints one JSON line.

The model folder may be a trainer checkpoint or an export. The data lists stored with the model are used unless
given (--configs YAML, or --dataset_conf.test_list=... / --dataset_conf.trials_list=...). Results are written
to MODEL/evaluations/<list>.json; the model's operating point (result.json, whose threshold the predictor uses)
changes only with --set_threshold.

Example:
    mvector eval --no-use_gpu --model_path models/EcapaTdnn_MelSpectrogram/best_model
    mvector eval --model_path models/EcapaTdnn_MelSpectrogram/best_model \
        --dataset_conf.trials_list=dataset/trials.txt
"""

from __future__ import annotations

import sys
from typing import Sequence

from mvector.cli.common import add_flag, apply_threads, base_parser, parse_args, run_cli
from mvector.config import DEFAULT_MODEL_PATH


def build_parser(prog: str | None = None):
    """The argument parser of ``mvector eval`` / ``eval.py``."""
    parser = base_parser(
        __doc__.splitlines()[0], prog=prog, default_configs=None,
        configs_note="default: the configuration stored with the model",
    )
    parser.description = __doc__
    parser.add_argument(
        "--model_path", "--resume_model", dest="model_path", default=DEFAULT_MODEL_PATH,
        help="model folder (a checkpoint or an export); --resume_model is the original project's name for it",
    )
    parser.add_argument("--backend", default="auto", help="auto, torch, onnx or torchscript")
    parser.add_argument("--save_image_path", default=None, help="folder for the DET plot and score histogram")
    parser.add_argument("--cohort_list", default=None, help="path<TAB>label list of cohort utterances for AS-norm")
    parser.add_argument("--asnorm_top_k", type=int, default=300, help="AS-norm: top cohort scores used")
    parser.add_argument("--output", default=None, help="where the metrics JSON goes (default: MODEL/evaluations/)")
    add_flag(
        parser, "--set_threshold", default=False,
        help="store the result as the model's operating point (result.json: the predictor's threshold)",
    )
    add_flag(
        parser, "--calibrate", default=False,
        help="fit a score calibration on these trials and store it in the model folder (calibration.json); "
        "adds cllr, min_cllr, act_dcf to the JSON line; --save_image_path also gets a reliability plot",
    )  # fmt: skip
    parser.add_argument(
        "--calibration_rule", default="probability", choices=("far", "frr", "eer", "probability"),
        help="how the stored operating point is chosen: target FAR, target FRR, the EER point or a minimum "
        "probability of same speaker",
    )  # fmt: skip
    parser.add_argument("--calibration_target", type=float, default=None, help="the rule's target (probability: 0.5)")
    parser.add_argument("--calibration_prior", type=float, default=0.5, help="prior of --calibration_rule probability")
    parser.add_argument("--p_target", type=float, default=0.01, help="P_target of the actual DCF (act_dcf)")
    add_flag(
        parser, "--open_set", default=False,
        help="also measure open-set identification on the test list: part of its speakers enrolled, the rest "
        "unknown (DIR at FAR 1/5/10 %%, decisions at the model's threshold)",
    )  # fmt: skip
    parser.add_argument("--open_set_unknown", type=float, default=1 / 3, help="share of speakers left unknown")
    parser.add_argument("--open_set_enrol", type=int, default=3, help="recordings per enrolled speaker")
    parser.add_argument("--open_set_repeats", type=int, default=10, help="random enrolled/unknown splits averaged")
    parser.add_argument("--margin", type=float, default=0.0, help="open set: unknown when best and second are closer")
    add_flag(
        parser, "--force", default=False,
        help="store an operating point (--set_threshold, --calibrate) even from fewer than 10 speakers or 300 "
        "non-target trials (refused otherwise)",
    )
    return parser


def _main(argv=None, prog=None) -> None:
    args, overrides = parse_args(build_parser(prog), argv)
    apply_threads(args)
    from mvector.evaluation.model_eval import evaluate_model_folder

    run = evaluate_model_folder(
        args.model_path,
        configs=args.configs,
        overrides=overrides,
        use_gpu=args.use_gpu,
        backend=args.backend,
        cohort_list=args.cohort_list,
        asnorm_top_k=args.asnorm_top_k,
        save_image_path=args.save_image_path,
        set_threshold=args.set_threshold,
        output=args.output,
        calibrate=args.calibrate,
        calibration_rule=args.calibration_rule,
        calibration_target=args.calibration_target,
        calibration_prior=args.calibration_prior,
        p_target=args.p_target,
        open_set=args.open_set,
        open_set_unknown=args.open_set_unknown,
        open_set_enrol=args.open_set_enrol,
        open_set_repeats=args.open_set_repeats,
        margin=args.margin,
        force=args.force,
    )
    for note in run.notes:
        print(f"note: {note}", file=sys.stderr)
    result = run.metrics
    print(
        f"EER {result['eer']:.5f}  minDCF(0.01) {result['min_dcf']:.5f}  minDCF(0.05) {result['min_dcf_0.05']:.5f}  "
        f"threshold {result['threshold']:.5f}  TPR {result['tpr']:.4f}  FPR {result['fpr']:.4f}  "
        f"trials {result['num_trials']}"
    )
    lo, hi = result["eer_ci95_trials"]
    print(f"EER 95 % interval {lo:.4f}-{hi:.4f} (trial-level; {result['speakers']} speakers behind the trials)")
    where = f"{run.written}" + (" and the model's result.json (operating point)" if run.operating_point_changed else "")
    print(f"results written to {where}")
    if args.open_set:
        o = result["open_set"]
        print(
            f"open set ({o['n_enrolled_speakers']} enrolled, {o['n_unknown_speakers']} unknown, "
            f"{o['repeats']} splits): "
            f"DIR@FAR1% {o['dir@far=0.01']:.4f}  DIR@FAR5% {o['dir@far=0.05']:.4f}  rank-1 {o['rank1']:.4f}  "
            f"at the threshold: DIR {o['decisions']['dir']:.4f} FAR {o['decisions']['far']:.4f}"
        )
    if args.calibrate:
        print(
            f"calibration: Cllr {result['cllr']:.4f} (min {result['min_cllr']:.4f})  actual DCF({args.p_target:g}) "
            f"{result['act_dcf']:.4f} vs min {result['min_dcf_calibration']:.4f}  stored in "
            f"{result['calibration']['file']}"
        )
    from mvector.utils.files import dumps_json

    print(dumps_json(result))


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command; returns the exit status (an mvector error prints one line and gives 2)."""
    return run_cli(lambda args: _main(args, prog), argv)


if __name__ == "__main__":
    sys.exit(main())
