"""Featurizer throughput: seconds of audio featurized per second, against a batched plain-torch baseline.

A batch of clips (default 32 x 3 s at 16 kHz) goes through each mvector featurizer (eval mode, per-utterance
normalisation on, lengths given) on the CPU, and on CUDA when available. The baseline, timed in the same run
and interleaved round by round with the featurizers, is the work torchaudio's ``MelSpectrogram`` does, written in
plain torch on the whole batch: ``torch.stft`` (n_fft 512, Hann 400, hop 160, ``center=True`` reflect padding),
power ``re² + im²``, one matrix product with an 80-filter HTK mel bank. A second baseline adds the natural log
(the work of a log-mel front end). Each featurizer's ratio to both is reported; ``figure`` holds the ratios of
MelSpectrogram and Fbank to the plain STFT + mel baseline (goal: >= 1.0). The previous implementation (the
functional path, kept for tracing and ONNX export) is timed too, as ``<method>/functional``.

    python benchmarks/bench_features.py              # ~1 minute on 2 cores
    python benchmarks/bench_features.py --quick      # ~15 s
    python benchmarks/bench_features.py --threads 1  # one torch thread (steadier on a shared machine)

Prints one JSON object. Medians come with min/max over the rounds; ``cpu_ms`` is process CPU time per batch
(user + system over all threads), which a busy machine inflates less than wall time. Numbers taken while other
jobs load the CPU (see ``machine.load_average``) are provisional.
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
MEL_CONF = {"n_fft": 512, "win_length": 400, "hop_length": 160, "f_min": 20.0, "n_mels": 80}
Job = tuple[Callable[[], object], Callable[[], None]]


def _interleaved(jobs: dict[str, Job], rounds: int) -> tuple[dict[str, list], dict[str, list]]:
    """Time every job once per round, round after round, so a load change on a shared machine hits all alike.

    Returns wall-clock and process-CPU seconds per job.
    """
    for fn, sync in jobs.values():  # warm-up (FFT plans, allocations)
        fn()
        fn()
        sync()
    wall: dict[str, list[float]] = {name: [] for name in jobs}
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, (fn, sync) in jobs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def _summary(wall: list[float], cpu: list[float], audio_seconds: float) -> dict[str, float]:
    rates = [audio_seconds / t for t in wall]
    return {
        "audio_s_per_s_median": round(statistics.median(rates), 1),
        "audio_s_per_s_min": round(min(rates), 1),
        "audio_s_per_s_max": round(max(rates), 1),
        "batch_ms_median": round(1000 * statistics.median(wall), 2),
        "cpu_ms_median": round(1000 * statistics.median(cpu), 2),
        "repeats": len(wall),
    }


def _no_sync() -> None:
    pass


@torch.inference_mode()
def _featurize(fz: torch.nn.Module, waves: torch.Tensor, lengths: torch.Tensor) -> object:
    return fz(waves, lengths)


@torch.inference_mode()
def _plain_torch(waves: torch.Tensor, window: torch.Tensor, mel_fb: torch.Tensor, log: bool) -> torch.Tensor:
    """The baseline: batched STFT + power + mel product (+ log), the operations torchaudio runs."""
    spec = torch.stft(
        waves, 512, hop_length=160, win_length=400, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(power.transpose(1, 2), mel_fb)
    return mel.clamp_min(1e-10).log() if log else mel


def _librosa_per_utterance(librosa, waves: np.ndarray) -> None:
    for wave in waves:
        librosa.feature.melspectrogram(
            y=wave, sr=SAMPLE_RATE, n_fft=512, hop_length=160, win_length=400, n_mels=80, fmin=20.0, htk=True
        )


def _conf(method: str) -> dict:
    if method == "Fbank":
        return {}
    if method == "Spectrogram":
        return {k: MEL_CONF[k] for k in ("n_fft", "win_length", "hop_length")}
    return dict(MEL_CONF)


def build_jobs(device: str, batch: int, seconds: float, functional: bool) -> dict[str, Job]:
    """The timed jobs on one device: both baselines, every featurizer, and (optionally) the functional path."""
    rng = np.random.default_rng(0)
    samples = int(seconds * SAMPLE_RATE)
    waves = torch.from_numpy((0.1 * rng.standard_normal((batch, samples))).astype(np.float32)).to(device)
    lengths = torch.full((batch,), samples, dtype=torch.long)
    sync = torch.cuda.synchronize if device == "cuda" else _no_sync
    mel = build_featurizer("MelSpectrogram", MEL_CONF).to(device)
    window = torch.hann_window(400, periodic=True, device=device)
    jobs: dict[str, Job] = {
        f"baseline_stft_mel/{device}": (partial(_plain_torch, waves, window, mel.mel_fb, False), sync),
        f"baseline_stft_mel_log/{device}": (partial(_plain_torch, waves, window, mel.mel_fb, True), sync),
    }
    for method in FEATURIZERS:
        fz = build_featurizer(method, _conf(method)).eval().to(device)
        jobs[f"{method}/{device}"] = (partial(_featurize, fz, waves, lengths.to(device)), sync)
        if functional and method in ("MelSpectrogram", "Fbank"):
            slow = build_featurizer(method, _conf(method)).eval().to(device)
            slow.use_fast_path = False
            jobs[f"{method}/functional/{device}"] = (partial(_featurize, slow, waves, lengths.to(device)), sync)
    return jobs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (~15 s)")
    parser.add_argument("--batch", type=int, default=32, help="clips per batch on the CPU")
    parser.add_argument("--cuda-batch", type=int, default=128, help="clips per batch on CUDA")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip duration")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all", help="devices to time")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 30, --quick 6)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (6 if args.quick else 30)
    devices = [d for d in ("cpu", "cuda") if args.device in ("all", d)]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")

    results: dict[str, dict] = {}
    for device in devices:
        batch = args.cuda_batch if device == "cuda" else args.batch
        jobs = build_jobs(device, batch, args.seconds, functional=not args.quick)
        if device == "cpu":
            try:
                import librosa

                rng = np.random.default_rng(0)
                waves_np = (0.1 * rng.standard_normal((batch, int(args.seconds * SAMPLE_RATE)))).astype(np.float32)
                jobs[f"librosa_{librosa.__version__}_per_clip/cpu"] = (
                    partial(_librosa_per_utterance, librosa, waves_np),
                    _no_sync,
                )
            except ImportError:
                pass
        wall, cpu = _interleaved(jobs, rounds)
        audio_seconds = batch * args.seconds
        for name in jobs:
            results[name] = _summary(wall[name], cpu[name], audio_seconds)
        base = results[f"baseline_stft_mel/{device}"]["audio_s_per_s_median"]
        base_log = results[f"baseline_stft_mel_log/{device}"]["audio_s_per_s_median"]
        for name in jobs:
            if name.endswith(f"/{device}"):
                rate = results[name]["audio_s_per_s_median"]
                results[name]["ratio_vs_stft_mel"] = round(rate / base, 2)
                results[name]["ratio_vs_stft_mel_log"] = round(rate / base_log, 2)

    figure = {
        f"{m}/{d}_ratio_vs_stft_mel": results[f"{m}/{d}"]["ratio_vs_stft_mel"]
        for d in devices
        for m in ("MelSpectrogram", "Fbank")
    }
    report = {
        "benchmark": "featurizer throughput (seconds of audio per second)",
        "workload": (
            f"{args.batch} clips (CUDA: {args.cuda_batch}) x {args.seconds:g} s at {SAMPLE_RATE} Hz, eval mode, "
            "normalize=True, lengths given"
        ),
        "figure": figure,
        "goal": "MelSpectrogram and Fbank >= 1.0x the batched plain-torch STFT + mel baseline",
        "baseline": (
            "plain torch on the whole batch: torch.stft(n_fft 512, hann 400, hop 160, center, reflect) + re^2 + im^2 "
            "+ 80-filter mel matmul (torchaudio MelSpectrogram's work); *_log adds clamp + natural log"
        ),
        "results": results,
        "machine": machine_info(
            ["platform", "processor_or_machine", "cpu_count", "torch_threads", "torch", "numpy", "cuda"]
            + ["load_average"],
            names={"processor_or_machine": "processor"},
        ),
        "rounds": rounds,
        "note": "provisional when other jobs share the CPU (see load_average)",
    }
    emit(report, indent=2)
    return report


if __name__ == "__main__":
    main()
