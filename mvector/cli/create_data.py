"""Prepare data lists for training and evaluation: `mvector create-data <corpus> ROOT --output_dir DIR`.

Writes DIR/train_list.txt and DIR/test_list.txt (`path<TAB>label`; audio inside DIR relative to DIR, audio
outside DIR absolute, see --paths), DIR/trials.txt
(`label enrol test`, 1 = same speaker) and, when files were unusable, DIR/skipped.txt. Never prompts.

Examples:
    mvector create-data folder dataset/my_speakers --output_dir dataset
    mvector create-data zhvoice dataset/zhvoice --output_dir dataset --convert_wav --num_workers 8
    mvector create-data cnceleb dataset/CN-Celeb_flac dataset/CN-Celeb2_flac --output_dir dataset
    mvector create-data voxceleb dataset/voxceleb1 dataset/voxceleb2 --trials_file veri_test2.txt
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from mvector.cli.common import CliParser, HelpFormatter, add_flag, run_cli
from mvector.data.corpora import CORPORA, prepare_corpus
from mvector.data.corpora.common import DEFAULT_MAX_TRIALS, PATH_MODES


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = CliParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("corpus", choices=sorted(CORPORA), help="layout of ROOT")
    parser.add_argument("root", nargs="+", metavar="ROOT", help="corpus folder (cnceleb/voxceleb accept several)")
    parser.add_argument("--output_dir", default="dataset", help="where the lists go (default: dataset)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--test_ratio", type=float, default=0.1, help="share of speakers held out for testing")
    split.add_argument("--test_speakers", type=int, default=None, help="exact number of held-out test speakers")
    parser.add_argument(
        "--num_trials",
        type=int,
        default=None,
        help=f"trials to generate (default: min(2 x target pairs, {DEFAULT_MAX_TRIALS})); "
        "with official trials, subsample to this many",
    )
    parser.add_argument(
        "--paths",
        choices=PATH_MODES,
        default="inside",
        help="how audio paths are written: inside = relative for audio inside --output_dir, absolute for audio "
        "outside it (the lists keep working when the list folder is moved); relative = relative always "
        "(../ too: move lists and audio together); absolute = absolute always",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the speaker split and trial sampling")
    add_flag(parser, "--check_audio", default=False, help="decode every file fully (default: header only)")
    parser.add_argument("--num_workers", type=int, default=None, help="threads for checks and conversion")
    add_flag(parser, "--convert_wav", default=False, help="zhvoice: convert mp3 to 16 kHz wav (keeps mp3)")
    parser.add_argument("--wav_dir", default=None, help="zhvoice: put converted wavs here instead of next to the mp3")
    parser.add_argument("--infodata", default=None, help="zhvoice: infodata.json (default ROOT/text/infodata.json)")
    parser.add_argument("--trials_file", default=None, help="voxceleb: official trial list, e.g. veri_test2.txt")
    return parser


def _main(argv=None, prog=None) -> None:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    options = {
        "test_ratio": args.test_ratio,
        "test_speakers": args.test_speakers,
        "num_trials": args.num_trials,
        "seed": args.seed,
        "check_audio": args.check_audio,
        "num_workers": args.num_workers,
        "paths": args.paths,
    }
    corpus_only = {"convert_wav": "zhvoice", "wav_dir": "zhvoice", "infodata": "zhvoice", "trials_file": "voxceleb"}
    for name, corpus in corpus_only.items():
        value = getattr(args, name)
        if value not in (None, False):
            if corpus != args.corpus:
                parser.error(f"--{name} applies to the {corpus} corpus only")
            options[name] = value
    if args.corpus in ("folder", "zhvoice") and len(args.root) != 1:
        parser.error(f"{args.corpus} takes exactly one ROOT")
    root = args.root[0] if len(args.root) == 1 else args.root
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = prepare_corpus(args.corpus, root, args.output_dir, **options)
    print(result.summary())
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    small = small_test_split_warning(result.num_test_speakers)
    if small:
        print(f"warning: {small}", file=sys.stderr)


def small_test_split_warning(num_test_speakers: int) -> str | None:
    """The warning for a test split too small to mean anything (``None`` when it is big enough).

    >>> small_test_split_warning(2)[:40]
    'the test split holds 2 speakers: an EER '
    >>> small_test_split_warning(30) is None
    True
    """
    from mvector.evaluation.uncertainty import MIN_SPEAKERS

    if num_test_speakers == 0 or num_test_speakers >= MIN_SPEAKERS:
        return None
    return (
        f"the test split holds {num_test_speakers} speakers: an EER or threshold measured on so few voices is a "
        f"guess (EER 0 is easy with 2), and eval.py --set_threshold / mvector calibrate refuse to store an operating "
        f"point from fewer than {MIN_SPEAKERS} without --force; hold out more (--test_speakers {MIN_SPEAKERS})"
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command; returns the exit status (an mvector error prints one line and gives 2)."""
    return run_cli(lambda args: _main(args, prog), argv)


if __name__ == "__main__":
    sys.exit(main())
