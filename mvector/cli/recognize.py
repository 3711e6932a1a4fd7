"""Enrol speakers and recognise them, from files or the microphone.

Non-interactive (no audio hardware needed); folders are expanded into their audio files:
    mvector recognize --register alice a1.wav a2.wav
    mvector recognize --recognize unknown.wav other.wav --json   # {"file", "name", "score"} per line
    mvector recognize --remove alice
    mvector recognize --list
    mvector recognize --import_folder old_audio_db    # enrol old_audio_db/<name>/*.wav
    mvector recognize --gallery house --recognize unknown.wav --among alice bob   # only these two of "house"
--audio_db_path is a database folder or a postgresql://user:password@host/dbname URL (the store several service
replicas share); --gallery names the gallery inside it (default: "default", the folder's own database).
With no command, an interactive loop records from the microphone (needs a terminal and the "mic" extra).
--recognize goes on past a file it cannot read: that file gets one error line ({"file", "error"} with --json),
and the exit status is 1 when any file failed. A database is created only by --register / --import_folder;
--recognize, --remove and --list refuse a folder (or gallery) without one (a mistyped --audio_db_path).
Other errors (a missing model folder, an unknown speaker, an empty database) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
import time
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
from mvector.errors import MVectorError, SpeakerDBError
from mvector.utils.files import dumps_json

MENU = "0: register from the microphone  1: recognise from the microphone  2: remove  3: list  q: quit"


def _ask(prompt: str) -> str:
    try:
        return input(prompt).strip()
    except EOFError:
        return "q"


def _interactive(predictor, seconds: float) -> None:
    from mvector.inference.microphone import MicrophoneUnavailable, record_seconds

    def capture():
        _ask(f"press Enter, then speak for {seconds:g} s ")
        return record_seconds(seconds, predictor.sample_rate), predictor.sample_rate

    while True:
        choice = _ask(f"{MENU}\n> ").lower()
        try:
            if choice == "0":
                name = _ask("name: ")
                predictor.register(name, capture())
                print(f"registered {name}")
            elif choice == "1":
                name, score = predictor.recognize(capture())
                print(f"{name or 'unknown speaker'} (score {score:.4f})")
            elif choice == "2":
                name = _ask("name: ")
                predictor.remove(name)
                print(f"removed {name}")
            elif choice == "3":
                print("\n".join(predictor.speakers()) or "(no speakers enrolled)")
            elif choice in ("q", "quit", "exit"):
                return
            elif choice:
                print(f"unknown choice {choice!r}")
        except MicrophoneUnavailable:
            raise
        except MVectorError as err:  # a bad name, an unknown speaker, an empty database: say so and go on
            print(f"error: {err}")


def _when(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _listing(db, name: str) -> dict:
    """One speaker of ``--list``: name, number of recordings, first enrolled and last added to (local time)."""
    enrolled, updated = db.enrolment_times(name)
    return {"name": name, "utterances": db.num_utterances(name), "enrolled": _when(enrolled), "updated": _when(updated)}


def _listing_text(row: dict) -> str:
    text = f"{row['name']}\t{row['utterances']} recording(s)"
    if row["enrolled"]:
        text += f"\tenrolled {row['enrolled']}"
        if row["updated"] != row["enrolled"]:
            text += f", last added {row['updated']}"
    return text


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``mvector recognize`` / ``infer_recognition.py``."""
    parser = CliParser(
        prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter,
        epilog=__doc__.split("\n", 1)[1].strip(),
    )
    parser.add_argument("--model_path", default=DEFAULT_MODEL_PATH, help="model or export folder")
    parser.add_argument(
        "--audio_db_path", default="audio_db/", help="speaker database folder, or a postgresql:// URL"
    )
    parser.add_argument("--gallery", default="default", help="the named gallery in the database to use")
    parser.add_argument(
        "--among", nargs="+", metavar="NAME", default=None,
        help="with --recognize: decide only among these enrolled speakers of the gallery",
    )
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the stored one)")
    parser.add_argument(
        "--margin", type=float, default=None,
        help="answer unknown when the best two speakers score closer than this (default: the predictor's)",
    )
    parser.add_argument(
        "--rule", default="auto", choices=["auto", "posterior_fpir", "posterior", "fpir", "threshold"],
        help="open-set decision over the enrolled speakers: posterior (calibrated: the most probable of the "
        "speakers and 'someone else'), fpir (a threshold naming at most --fpir of strangers at the current number "
        "of speakers), posterior_fpir (both), threshold (one score threshold); auto: threshold when --threshold is "
        "given, else posterior_fpir with a calibration from mvector calibrate, else posterior, else fpir, else "
        "threshold",
    )
    parser.add_argument(
        "--unknown_prior", type=float, default=0.5,
        help="posterior rule: prior probability that a voice belongs to nobody enrolled",
    )
    parser.add_argument("--fpir", type=float, default=0.05, help="fpir rule: share of strangers that may be named")
    parser.add_argument(
        "--score_norm", default=None, choices=["as_norm", "gallery"],
        help="AS-norm the scores: against the database's stored cohort, or against the other enrolled speakers "
        "(gallery); normalised scores need their own --threshold",
    )
    parser.add_argument("--cohort_top_k", type=int, default=10, help="--score_norm: best cohort scores used")
    parser.add_argument(
        "--checks", default="warn", choices=["warn", "refuse", "off"],
        help="--register: enrolment quality checks (speech, clipping, level, SNR, bandwidth, agreement)",
    )
    add_use_gpu_flag(parser)
    add_threads_argument(parser)
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "torch", "torchscript", "onnx"], help="how to run the model"
    )
    parser.add_argument("--record_seconds", type=float, default=3.0, help="microphone recording length")
    add_flag(parser, "--keep_audio", default=False, help="keep enrolled audio in the database folder")
    add_flag(parser, "--json", default=False, help="one JSON object per result line")
    parser.add_argument("--top_k", type=int, default=1, help="with --recognize: list the k best candidates")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--register", nargs="+", metavar=("NAME", "FILE"), help="enrol NAME from one or more files")
    group.add_argument("--recognize", nargs="+", metavar="FILE", help="recognise each file")
    group.add_argument("--remove", metavar="NAME", help="remove an enrolled speaker")
    add_flag(group, "--list", default=False, help="list enrolled speakers")
    group.add_argument("--import_folder", metavar="DIR", help="enrol every DIR/<name>/<audio files>")
    return parser


def _check_before_loading(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Everything that can be checked without the model, so mistakes fail fast; returns the audio files."""
    if args.register is not None and len(args.register) < 2:
        parser.error("--register needs a NAME and at least one FILE")
    if args.top_k < 1:
        parser.error("--top_k must be at least 1")
    if args.score_norm and args.recognize and args.threshold is None and args.top_k == 1:
        parser.error("--score_norm gives scores on another scale: pass --threshold (chosen on normalised scores)")
    if not (args.register or args.recognize or args.remove or args.list or args.import_folder):
        if not sys.stdin.isatty():
            raise MVectorError(
                "the interactive loop needs a terminal (stdin is not one); "
                "use --register NAME FILE..., --recognize FILE..., --remove NAME or --list"
            )
        from mvector.inference.microphone import require_pyaudio

        require_pyaudio()
    from mvector.inference.predictor import iter_audio_files
    from mvector.inference.speaker_names import validate_name
    from mvector.store import check_gallery, open_store

    files = []
    if args.register:
        validate_name(args.register[0])
        files = [str(f) for f in iter_audio_files(args.register[1:], must_exist=True)]
    elif args.recognize:
        files = [str(f) for f in iter_audio_files(args.recognize)]  # a missing file is reported in the loop
        if not files:
            raise MVectorError(f"--recognize: no audio files in {' '.join(args.recognize)}")
    if args.among is not None and not args.recognize:
        parser.error("--among goes with --recognize")
    check_gallery(args.gallery)
    if args.recognize or args.remove or args.list:
        store = open_store(args.audio_db_path)
        try:
            found = args.gallery in store.gallery_names()
        finally:
            store.close()
        if not found:
            raise SpeakerDBError(
                f"no speaker database in {store.where} (no gallery {args.gallery!r}); check --audio_db_path and "
                "--gallery, or create one with --register NAME FILE... or --import_folder DIR"
            )
    return files


def _register(predictor, args, files, emit) -> None:
    from mvector.inference.enrolment import QualityConfig, enrol
    from mvector.inference.speaker_names import validate_name

    name = validate_name(args.register[0])
    before = predictor.db.num_utterances(name) if name in predictor.db else 0
    if args.checks == "off":
        predictor.register(name, files)
        issues = []
    else:
        report = enrol(predictor, name, files, QualityConfig(policy=args.checks))
        issues = [issue.message for issue in report.warnings]
    info = {"registered": name, "files": len(files), "warnings": issues}
    if before:
        total = before + len(files)
        emit(
            {**info, "added_to_existing": True, "utterances": total},
            f"{name} was already enrolled: added {len(files)} recording(s) to it "
            f"(now {total}); use --remove {name} first to replace it",
        )
    else:
        emit(info, f"registered {name} from {len(files)} file(s)")


def _recognize(predictor, args, files, emit) -> int:
    if len(predictor.db) == 0:
        raise SpeakerDBError(
            f"no speakers enrolled in {predictor.db.path}; register speakers first with "
            "--register NAME FILE... or --import_folder DIR"
        )
    failed = 0
    for path in files:
        try:
            if args.top_k > 1:
                result = predictor.rank_speakers(path, top_k=args.top_k, score_norm=args.score_norm,
                                                 cohort_top_k=args.cohort_top_k, among=args.among)  # fmt: skip
            else:
                result = predictor.recognize(path, margin=args.margin, score_norm=args.score_norm,
                                             cohort_top_k=args.cohort_top_k, threshold=args.threshold,
                                             among=args.among)  # fmt: skip
        except MVectorError as err:  # one bad file: say so on its own line and go on with the others
            failed += 1
            message = str(err) if path in str(err) else f"{path}: {err}"
            if args.json:
                emit({"file": path, "error": message}, "")
            else:
                print(f"error: {message}", file=sys.stderr, flush=True)
            continue
        if args.top_k > 1:
            emit(
                {"file": path, "candidates": [{"name": n, "score": round(s, 6)} for n, s in result]},
                f"{path}: " + ", ".join(f"{n} ({s:.4f})" for n, s in result),
            )
            continue
        name, score = result
        keys = ("reason", "runner_up", "llr", "probability", "threshold", "rule", "promise", "gallery_size",
                "expected_fpir", "posteriors", "p_unknown")  # fmt: skip
        extra = {k: getattr(result, k, None) for k in keys}
        text = f"{path}: {name or 'unknown speaker'} (score {score:.4f}"
        if extra["llr"] is not None:
            text += f", LLR {extra['llr']:+.2f}, P(same) {extra['probability']:.3f}"
        if extra["p_unknown"] is not None:
            text += f", P(someone else) {extra['p_unknown']:.3f}"
        if extra["rule"] is not None:
            text += f"; rule {extra['rule']}"
        if name is None and extra["reason"] == "ambiguous":
            text += f"; too close to tell from {extra['runner_up']}"
        emit({"file": path, "name": name, "score": round(score, 6), **extra}, text + ")")
    if failed and not args.json:
        print(f"{failed} of {len(files)} file(s) could not be recognised", file=sys.stderr)
    return failed


def _main(argv=None, prog=None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    apply_threads(args)
    files = _check_before_loading(parser, args)
    from mvector.inference.predictor import MVectorPredictor

    predictor = MVectorPredictor(
        model_path=args.model_path,
        audio_db_path=args.audio_db_path,
        use_gpu=args.use_gpu,
        threshold=args.threshold,
        backend=args.backend,
        keep_audio=args.keep_audio,
        open_set_rule=args.rule,
        unknown_prior=args.unknown_prior,
        fpir=args.fpir,
        gallery=args.gallery,
    )
    emit = (lambda obj, text: print(dumps_json(obj), flush=True)) if args.json else (lambda obj, text: print(text))
    failed = 0
    with predictor:
        if args.register:
            _register(predictor, args, files, emit)
        elif args.recognize:
            failed = _recognize(predictor, args, files, emit)
        elif args.remove:
            predictor.remove(args.remove)
            emit({"removed": args.remove}, f"removed {args.remove}")
        elif args.list:
            names = predictor.speakers()
            rows = [_listing(predictor.db, n) for n in names]
            emit(
                {"speakers": names, "details": rows, "utterances": {r["name"]: r["utterances"] for r in rows}},
                "\n".join(_listing_text(r) for r in rows) if names else "(no speakers enrolled)",
            )
        elif args.import_folder:
            counts = predictor.import_folder(args.import_folder)
            emit({"imported": counts}, f"imported {sum(counts.values())} recordings of {len(counts)} speakers")
        else:
            _interactive(predictor, args.record_seconds)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command; returns the exit status: 0, 1 when some --recognize file failed, 2 on an mvector error."""
    return run_cli(lambda args: _main(args, prog), argv)


if __name__ == "__main__":
    sys.exit(main())
