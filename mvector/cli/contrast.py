"""Are two recordings the same speaker? Prints the cosine score and the verdict.

Example:
    mvector contrast --audio_path1 a.wav --audio_path2 b.wav \
        --model_path models/EcapaTdnn_MelSpectrogram/best_model
    mvector contrast --audio_path1 a.wav --audio_path2 b.wav --json     # {"score": 0.81, "same_speaker": true}

Errors (a missing file or model folder, unreadable audio) print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from typing import Sequence

from mvector.cli.common import (
    CliParser,
    HelpFormatter,
    add_flag,
    add_threads_argument,
    add_use_gpu_flag,
    apply_threads,
    run_cli,
)
from mvector.config import DEFAULT_MODEL_PATH


def build_parser(prog: str | None = None) -> CliParser:
    """The ``mvector contrast`` parser.

    >>> build_parser("mvector contrast").prog
    'mvector contrast'
    """
    parser = CliParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--audio_path1", required=True, help="first recording")
    parser.add_argument("--audio_path2", required=True, help="second recording")
    parser.add_argument("--model_path", default=DEFAULT_MODEL_PATH, help="model or export folder")
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the stored one)")
    add_use_gpu_flag(parser)
    add_threads_argument(parser)
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "torch", "torchscript", "onnx"], help="how to run the model"
    )
    parser.add_argument(
        "--prior", type=float, default=None, help="prior probability of 'same speaker' for the calibrated probability"
    )
    add_flag(
        parser, "--json", default=False,
        help='print one JSON object: {"score", "same_speaker", "llr", "probability", "prior", "threshold", '
        '"threshold_source"} (the names of POST /v1/verify)',
    )
    return parser


def _main(argv=None, prog=None) -> None:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    apply_threads(args)
    from mvector.inference.predictor import MVectorPredictor, iter_audio_files

    iter_audio_files([args.audio_path1, args.audio_path2], must_exist=True)  # fail before loading the model
    predictor = MVectorPredictor(
        model_path=args.model_path, use_gpu=args.use_gpu, threshold=args.threshold, backend=args.backend
    )
    result = predictor.contrast(args.audio_path1, args.audio_path2, prior=args.prior)
    score, same_speaker = result
    if args.json:
        from mvector.utils.files import dumps_json

        print(dumps_json({**result.to_dict(), "score": round(score, 6)}))
        return
    verdict = "the same speaker" if same_speaker else "different speakers"
    pair = f"{args.audio_path1} vs {args.audio_path2}"
    line = f"{pair}: score {score:.5f} -> {verdict} (threshold {result.threshold:.5f})"
    if result.llr is not None:
        line += f"; calibrated LLR {result.llr:+.2f}, P(same) {result.probability:.3f} at prior {result.prior:g}"
    print(line)
    print(f"threshold: {result.threshold_source}")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command; returns the exit status (an mvector error prints one line and gives 2)."""
    return run_cli(lambda args: _main(args, prog), argv)


if __name__ == "__main__":
    sys.exit(main())
