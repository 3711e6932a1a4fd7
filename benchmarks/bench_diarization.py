"""Diarization error rate and speed: mvector's pipeline against a fixed-window k-means baseline in the same run.

Test material:

* conversations generated from the shared TTS corpus' ``dev`` voices (``../shared/data/tts/dev_list.txt``:
  20 speakers unseen in training), ``--per_count`` conversations of each of 2, 3, 4 and 5 speakers,
  ``--duration`` seconds each (turns 1-6 s, pauses 0.1-1 s, no overlap), with reference RTTM;
* optionally the real 30-second two-speaker recording with reference RTTM that the ``pyannote-audio`` wheel ships
  (``--sample_wav`` / ``--sample_rttm``; get them with ``pip download --no-deps pyannote-audio==4.0.7`` and read
  ``pyannote/audio/sample/sample.wav`` and ``sample.rttm`` out of the wheel, which is a zip).

Systems, scored with DER at ``--collar`` (0.25 s each side of a reference boundary, md-eval style):

* ``mvector``: the default pipeline (VAD, 1.5 s windows every 0.75 s, spectral clustering with the number of
  speakers from the eigengap, re-segmentation);
* ``mvector_oracle_count``: the same told the true number of speakers;
* ``baseline``: one embedding per fixed, non-overlapping 1.5 s window of the same detected speech, k-means at the
  true number of speakers, each window's label kept (no re-segmentation).

Speed: the real-time factor (processing seconds per second of audio) of each system on the CPU, with model
loading excluded. Prints one JSON object.

    python benchmarks/bench_diarization.py --model_path /tmp/models/EcapaTdnn_Fbank/best_model
    python benchmarks/bench_diarization.py --model_path A --model_path B --sample_wav S.wav --sample_rttm S.rttm
    python benchmarks/bench_diarization.py --quick --model_path DIR        # one short conversation per count
    python benchmarks/bench_diarization.py --model_path DIR --memory_only --memory_minutes 5 60   # peak RSS
    python benchmarks/bench_diarization.py --model_path DIR --memory_only --rtf_repeats 3 --speakers 3  # speed
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, add_repo_to_path, emit, machine_info, stats

add_repo_to_path()

from mvector.audio import load_audio  # noqa: E402
from mvector.data.conversations import ListSource, write_conversation  # noqa: E402
from mvector.evaluation.der import Segment, diarization_error_rate, read_rttm  # noqa: E402
from mvector.inference.clustering import kmeans, relabel  # noqa: E402
from mvector.inference.diarization import (  # noqa: E402
    AudioBlocks,
    DiarizationConfig,
    Diarizer,
    PredictorEmbedder,
    _windows,
)
from mvector.predictor import MVectorPredictor  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "tts"


def baseline(embedder: PredictorEmbedder, path: Path, num_speakers: int, window: float = 1.5) -> list[Segment]:
    """Fixed non-overlapping windows over the detected speech, k-means at the true count, labels as they are."""
    diarizer = Diarizer(embedder, DiarizationConfig())
    source = AudioBlocks(path, embedder.sample_rate)
    speech, total = diarizer.detect_speech(source)
    wave = load_audio(str(path), embedder.sample_rate)
    rate = embedder.sample_rate
    spans = []
    for start, end in speech:
        t = start
        while t < end - 1e-9:
            stop = min(end, t + window)
            if stop - t >= 0.2 or not spans:
                spans.append((t, stop))
            else:  # a short tail joins the previous window's label span
                spans[-1] = (spans[-1][0], stop)
            t = stop
    if not spans:
        return []
    emb = embedder.embed_waveforms([wave[int(s * rate) : int(e * rate)] for s, e in spans])
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    labels = kmeans(emb, min(num_speakers, len(spans)), seed=0) if len(spans) > 1 else np.zeros(1, dtype=int)
    return [Segment(s, e, f"k{int(label)}") for (s, e), label in zip(spans, labels)]


def _score(name: str, outputs: list[tuple[list[Segment], float, float]], items, collar: float) -> dict:
    """DER and friends of one system's outputs ``[(turns, seconds, duration)]`` over ``items``."""
    hyp, ref, per_count = {}, {}, {}
    counts_right = 0
    for (turns, _, _), (wav, reference, n) in zip(outputs, items):
        hyp[wav.stem], ref[wav.stem] = turns, reference
        counts_right += len({t.speaker for t in turns}) == n
        per_count.setdefault(n, ({}, {}))
        per_count[n][0][wav.stem], per_count[n][1][wav.stem] = reference, turns
    total = diarization_error_rate(ref, hyp, collar=collar)
    seconds = sum(o[1] for o in outputs)
    audio = sum(o[2] for o in outputs)
    return {
        "system": name,
        "der": round(total.der, 4),
        "missed": round(total.missed / total.total, 4),
        "false_alarm": round(total.false_alarm / total.total, 4),
        "confusion": round(total.confusion / total.total, 4),
        "der_by_speakers": {
            str(n): round(diarization_error_rate(r, h, collar=collar).der, 4) for n, (r, h) in sorted(per_count.items())
        },
        "speaker_count_right": f"{counts_right}/{len(items)}",
        "real_time_factor": round(seconds / audio, 4) if seconds > 0 else None,
        "audio_seconds": round(audio, 1),
    }


def ours(diarizer: Diarizer, wav: Path, variants: dict[str, DiarizationConfig]) -> dict:
    """The pipeline on ``wav``; speech detection and embeddings once, clustering onwards per config variant.

    The time of the first variant covers the whole pipeline (reading, VAD, embeddings, clustering, turns); the
    others add only their own clustering and re-segmentation time to the shared part.
    """
    began = time.perf_counter()
    source = AudioBlocks(wav, diarizer.sample_rate, diarizer.config.block_seconds)
    speech, total = diarizer.detect_speech(source)
    spans, owner = _windows(speech, total, diarizer.sample_rate, diarizer.config)
    emb = diarizer.embed_windows(source, spans)
    shared = time.perf_counter() - began
    out = {}
    for name, conf in variants.items():
        started = time.perf_counter()
        d = Diarizer(diarizer.embedder, conf)
        labels = relabel(d.cluster(emb))
        turns, _ = d.name_speakers(d.segment(speech, spans, owner, emb, labels), emb, labels)
        out[name] = (turns, shared + time.perf_counter() - started, total / diarizer.sample_rate)
    return out


def evaluate_model(model_path: str, items, collar: float) -> dict:
    predictor = MVectorPredictor(model_path, use_gpu=False)
    embedder = PredictorEmbedder(predictor)
    diarizer = Diarizer(embedder)
    out = {"model": model_path, "threshold": round(predictor.threshold, 4)}
    names = ["mvector", "mvector_oracle_count", "mvector_no_resegmentation", "mvector_spectral_eigengap"]
    results: dict[str, list] = {name: [] for name in names + ["baseline"]}
    for wav, _, n in items:
        variants = {
            "mvector": DiarizationConfig(),
            "mvector_oracle_count": DiarizationConfig(num_speakers=n),
            "mvector_no_resegmentation": DiarizationConfig(num_speakers=n, resegment=False),
            "mvector_spectral_eigengap": DiarizationConfig(clustering="spectral"),
        }
        for name, value in ours(diarizer, wav, variants).items():
            results[name].append(value)
        from mvector.audio import audio_duration

        began = time.perf_counter()
        turns = baseline(embedder, wav, n)
        results["baseline"].append((turns, time.perf_counter() - began, audio_duration(wav)))
    conv = [i for i, item in enumerate(items) if item[0].stem != "sample"]
    real = [i for i, item in enumerate(items) if item[0].stem == "sample"]
    for key, idx in (("conversations", conv), ("pyannote_sample", real)):
        if idx:
            out[key] = [
                _score(name, [outputs[i] for i in idx], [items[i] for i in idx], collar)
                for name, outputs in results.items()
            ]
    return out


def speed(model_path: str, wav: Path, num_speakers: int, repeats: int) -> dict:
    """Median real-time factor of the whole pipeline and of the baseline, interleaved on one recording."""
    from mvector.audio import audio_duration

    predictor = MVectorPredictor(model_path, use_gpu=False)
    embedder = PredictorEmbedder(predictor)
    duration = audio_duration(wav)
    ours_s, base_s = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        Diarizer(embedder)(wav)
        ours_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        baseline(embedder, wav, num_speakers)
        base_s.append(time.perf_counter() - began)
    ours_rtf, base_rtf = float(np.median(ours_s)) / duration, float(np.median(base_s)) / duration
    return {
        "model": model_path,
        "file": wav.name,
        "seconds_of_audio": round(duration, 1),
        "mvector_rtf": stats([t / duration for t in ours_s], 4),
        "baseline_rtf": stats([t / duration for t in base_s], 4),
        "ratio_mvector_to_baseline": round(ours_rtf / base_rtf, 3),
    }


def _memory_child(wav: str, model_path: str) -> None:
    """Run in a subprocess: diarize ``wav`` and print the peak resident memory (MiB) and the seconds taken."""
    import resource

    predictor = MVectorPredictor(model_path, use_gpu=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    began = time.perf_counter()
    result = Diarizer(PredictorEmbedder(predictor))(wav)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(peak, 1), "after_model_load_mib": round(before, 1),
                      "seconds": round(seconds, 1), "windows": result.num_windows, "duration": result.duration}))


def memory_scaling(model_path: str, source_wavs: list[Path], minutes: list[float], work: Path) -> list[dict]:
    """Peak RSS of the whole pipeline on recordings of ``minutes`` made by repeating ``source_wavs`` end to end.

    Each length runs in a fresh process (the peak of one process never hides another's).
    """
    import subprocess

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", action="append", required=True, help="model folder (repeat for several)")
    parser.add_argument("--corpus", default=str(CORPUS), help="the shared tts corpus folder")
    parser.add_argument("--per_count", type=int, default=3, help="conversations per number of speakers")
    parser.add_argument("--speakers", type=int, nargs="+", default=[2, 3, 4, 5], help="numbers of speakers")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per conversation")
    parser.add_argument("--collar", type=float, default=0.25, help="DER collar, seconds each side")
    parser.add_argument("--sample_wav", default=None, help="pyannote-audio's sample.wav")
    parser.add_argument("--sample_rttm", default=None, help="pyannote-audio's sample.rttm")
    parser.add_argument("--work_dir", default=None, help="keep the generated conversations here")
    parser.add_argument("--quick", action="store_true", help="one 30 s conversation per speaker count")
    parser.add_argument(
        "--memory_minutes", type=float, nargs="*", default=[], help="also measure peak RSS on recordings this long"
    )
    parser.add_argument("--memory_only", action="store_true", help="only the memory / speed measurements (no DER)")
    parser.add_argument(
        "--rtf_repeats", type=int, default=0, help="also time pipeline and baseline N times on the first recording"
    )
    parser.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.model_path[0])
        return
    dev_list = Path(args.corpus) / "dev_list.txt"
    if not dev_list.is_file():
        emit({"skipped": f"{dev_list} not found (the shared corpus is not on this machine)"})
        return
    if args.quick:
        args.per_count, args.duration = 1, 30.0
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_diar_"))
    source = ListSource(dev_list)
    items = []
    generated_at = time.perf_counter()
    for n in args.speakers:
        for i in range(args.per_count):
            seed = 1000 * n + i
            wav, rttm = write_conversation(work, f"dev{n}spk_{i}", n, args.duration, source=source, seed=seed)
            items.append((wav, read_rttm(rttm)[wav.stem], n))
    generation = time.perf_counter() - generated_at
    if args.sample_wav and args.sample_rttm:
        ref = read_rttm(args.sample_rttm)
        wav = Path(args.sample_wav)
        if wav.stem != "sample":
            parser.error("--sample_wav must be pyannote-audio's sample.wav (file name sample.wav)")
        turns = ref[wav.stem] if wav.stem in ref else next(iter(ref.values()))
        items.append((wav, turns, len({t.speaker for t in turns})))
    report = {
        "benchmark": "diarization",
        "material": {
            "conversations": sum(1 for item in items if item[0].stem != "sample"),
            "speakers": args.speakers,
            "per_count": args.per_count,
            "duration_s": args.duration,
            "source": str(dev_list),
            "generation_s": round(generation, 1),
            "work_dir": str(work),
        },
        "collar": args.collar,
        "machine": machine_info(),
        "results": [] if args.memory_only else [evaluate_model(m, items, args.collar) for m in args.model_path],
    }
    if args.rtf_repeats:
        wav, _, n = items[0]
        report["speed"] = [speed(m, wav, n, args.rtf_repeats) for m in args.model_path]
    if args.memory_minutes:
        report["memory"] = {
            "model": args.model_path[-1],
            "made_of": "the generated conversations repeated end to end",
            "runs": memory_scaling(args.model_path[-1], [w for w, _, _ in items], args.memory_minutes, work),
        }
    emit(report)


if __name__ == "__main__":
    sys.exit(main())
