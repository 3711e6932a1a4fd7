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
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.audio import load_audio  # noqa: E402
from mvector.data.conversations import ListSource, write_conversation  # noqa: E402
from mvector.evaluation.der import Segment, diarization_error_rate, read_rttm  # noqa: E402
from mvector.inference.clustering import kmeans  # noqa: E402
from mvector.inference.diarization import (  # noqa: E402
    AudioBlocks,
    DiarizationConfig,
    Diarizer,
    PredictorEmbedder,
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


def run_system(name: str, fn, items: list[tuple[Path, dict, int]], collar: float) -> dict:
    hyp, ref, seconds, audio = {}, {}, 0.0, 0.0
    counts_right = 0
    per_count: dict[int, dict] = {}
    for wav, reference, n in items:
        began = time.perf_counter()
        turns, duration = fn(wav, n)
        seconds += time.perf_counter() - began
        audio += duration
        hyp[wav.stem] = turns
        ref[wav.stem] = reference
        counts_right += len({t.speaker for t in turns}) == n
        per_count.setdefault(n, {"ref": {}, "hyp": {}})
        per_count[n]["ref"][wav.stem] = reference
        per_count[n]["hyp"][wav.stem] = turns
    total = diarization_error_rate(ref, hyp, collar=collar)
    return {
        "system": name,
        "der": round(total.der, 4),
        "missed": round(total.missed / total.total, 4),
        "false_alarm": round(total.false_alarm / total.total, 4),
        "confusion": round(total.confusion / total.total, 4),
        "der_by_speakers": {
            str(n): round(diarization_error_rate(v["ref"], v["hyp"], collar=collar).der, 4)
            for n, v in sorted(per_count.items())
        },
        "speaker_count_right": f"{counts_right}/{len(items)}",
        "real_time_factor": round(seconds / audio, 4),
        "audio_seconds": round(audio, 1),
    }


def evaluate_model(model_path: str, items, sample, collar: float) -> dict:
    predictor = MVectorPredictor(model_path, use_gpu=False)
    embedder = PredictorEmbedder(predictor)
    out = {"model": model_path, "threshold": round(predictor.threshold, 4)}

    def ours(config_kwargs):
        def fn(wav, n):
            conf = DiarizationConfig(**{k: (n if v == "oracle" else v) for k, v in config_kwargs.items()})
            result = Diarizer(embedder, conf)(wav)
            return result.turns, result.duration

        return fn

    def base(wav, n):
        from mvector.audio import audio_duration

        return baseline(embedder, wav, n), audio_duration(wav)

    systems = [("mvector", ours({})), ("mvector_oracle_count", ours({"num_speakers": "oracle"})), ("baseline", base)]
    out["conversations"] = [run_system(name, fn, items, collar) for name, fn, in systems]
    if sample is not None:
        out["pyannote_sample"] = [run_system(name, fn, [sample], collar) for name, fn in systems]
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
    args = parser.parse_args()
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
    sample = None
    if args.sample_wav and args.sample_rttm:
        ref = read_rttm(args.sample_rttm)
        stem = Path(args.sample_wav).stem
        turns = ref[stem] if stem in ref else next(iter(ref.values()))
        sample = (Path(args.sample_wav), turns, len({t.speaker for t in turns}))
    report = {
        "benchmark": "diarization",
        "material": {
            "conversations": len(items),
            "speakers": args.speakers,
            "per_count": args.per_count,
            "duration_s": args.duration,
            "source": str(dev_list),
            "generation_s": round(generation, 1),
            "work_dir": str(work),
        },
        "collar": args.collar,
        "machine": machine_info(),
        "results": [evaluate_model(m, items, sample, args.collar) for m in args.model_path],
    }
    emit(report)


if __name__ == "__main__":
    sys.exit(main())
