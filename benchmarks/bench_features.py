"""Featurizer throughput: seconds of audio featurized per second, batched torch vs librosa per utterance.

A batch of 32 clips x 3 s at 16 kHz goes through each mvector featurizer (eval mode, normalisation on) on the
CPU, and on CUDA when available; the baseline, measured in the same run, is ``librosa.feature.melspectrogram``
called once per clip with the same STFT / mel settings. Prints one JSON object.

    python benchmarks/bench_features.py            # ~1 minute
    python benchmarks/bench_features.py --quick    # < 20 s

Numbers taken while other jobs load the CPU are provisional.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from typing import Callable

import numpy as np
import torch
from common import add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.features import FEATURIZERS, build_featurizer  # noqa: E402

SAMPLE_RATE = 16000


def _interleaved(jobs: dict[str, tuple[Callable[[], object], Callable[[], None]]], rounds: int) -> dict[str, list]:
    """Time every job once per round, round after round, so a load change on a shared machine hits all alike."""
    for fn, sync in jobs.values():  # warm-up (FFT plans, allocations)
        fn()
        sync()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, (fn, sync) in jobs.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _summary(times: list[float], audio_seconds: float) -> dict[str, float]:
    rates = [audio_seconds / t for t in times]
    return {
        "audio_s_per_s_median": round(statistics.median(rates), 1),
        "audio_s_per_s_min": round(min(rates), 1),
        "audio_s_per_s_max": round(max(rates), 1),
        "batch_ms_median": round(1000 * statistics.median(times), 2),
        "repeats": len(times),
    }


def _no_sync() -> None:
    pass


@torch.inference_mode()
def _featurize(fz: torch.nn.Module, waves: torch.Tensor, lengths: torch.Tensor) -> object:
    return fz(waves, lengths)


def _librosa_per_utterance(librosa, waves: np.ndarray) -> None:
    for wave in waves:
        librosa.feature.melspectrogram(
            y=wave,
            sr=SAMPLE_RATE,
            n_fft=512,
            hop_length=160,
            win_length=400,
            n_mels=80,
            fmin=20.0,
            htk=True,
            pad_mode="reflect",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 20 s)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rounds = 4 if args.quick else 30

    rng = np.random.default_rng(0)
    samples = int(args.seconds * SAMPLE_RATE)
    waves_np = (0.1 * rng.standard_normal((args.batch, samples))).astype(np.float32)
    audio_seconds = args.batch * args.seconds
    lengths = torch.full((args.batch,), samples, dtype=torch.long)
    mel_conf = {"n_fft": 512, "win_length": 400, "hop_length": 160, "f_min": 20.0, "n_mels": 80}

    jobs: dict[str, tuple[Callable[[], object], Callable[[], None]]] = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        sync = torch.cuda.synchronize if device == "cuda" else _no_sync
        waves = torch.from_numpy(waves_np).to(device)
        lens = lengths.to(device)
        for method in FEATURIZERS:
            if method == "Fbank":
                conf = {}
            elif method == "Spectrogram":
                conf = {k: mel_conf[k] for k in ("n_fft", "win_length", "hop_length")}
            else:
                conf = mel_conf
            fz = build_featurizer(method, conf).eval().to(device)
            jobs[f"{method}/{device}"] = (partial(_featurize, fz, waves, lens), sync)

    baseline_what = None
    try:
        import librosa

        jobs["librosa"] = (partial(_librosa_per_utterance, librosa, waves_np), _no_sync)
        baseline_what = f"librosa {librosa.__version__} melspectrogram (htk, same STFT/mel settings), one call per clip"
    except ImportError:
        pass

    times = _interleaved(jobs, rounds)
    results = {name: _summary(t, audio_seconds) for name, t in times.items() if name != "librosa"}
    baseline = None
    if baseline_what:
        baseline = _summary(times["librosa"], audio_seconds)
        baseline["what"] = baseline_what

    figure = results["MelSpectrogram/cpu"]["audio_s_per_s_median"]
    ratio = round(figure / baseline["audio_s_per_s_median"], 2) if baseline else None
    report = {
        "benchmark": "featurizer throughput (seconds of audio per second)",
        "workload": f"{args.batch} clips x {args.seconds:g} s at {SAMPLE_RATE} Hz, eval mode, normalize=True",
        "figure": {"MelSpectrogram/cpu_audio_s_per_s": figure},
        "baseline": baseline,
        "ratio_vs_librosa": ratio,
        "results": results,
        "machine": machine_info(
            ["platform", "processor_or_machine", "cpu_count", "torch_threads", "torch", "numpy", "cuda"],
            names={"processor_or_machine": "processor"},
        ),
        "quick": args.quick,
        "note": "provisional when other jobs share the CPU",
    }
    emit(report, indent=2)


if __name__ == "__main__":
    main()
