"""CPU cost per training sample of each data-pipeline stage, and the loader workers a GPU needs at 2,000 samples/s.

A synthetic corpus is written to a temp folder: 16 kHz WAV files and the same audio as 44.1 kHz FLAC (so decode
and resample are timed apart), ``--file-seconds`` long (default 8 s, about a VoxCeleb utterance), plus noise and
impulse-response folders. With one thread, on one core, each stage is timed per sample (median over the files,
3 s crops, 3.3 s first crops when speed perturbation is on, as the dataset does):

* ``decode_wav`` / ``decode_flac_44k`` (whole file, as ``load_audio`` does today) and ``decode_wav_crop_only``
  (reading only the crop from the file, ``soundfile`` ``start``/``frames``: what a seeking loader would cost);
* ``resample_44k_to_16k`` (soxr HQ), ``normalize_db``, ``crop``;
* each CPU augmentation applied unconditionally: ``speed``, ``reverb``, ``noise``, ``volume``, ``shift``;
* ``collate`` (padding into a batch, per sample), ``featurizer_fbank_cpu`` (80-bin Fbank + CMVN in a batch of 32);
* ``gpu_augmenter_on_cpu`` (:class:`~mvector.audio.gpu_augment.GpuAugmenter`, all sections on, run on the CPU);
* the worker's whole item: ``item_cpu_augment`` (``TrainDataset`` with the bundled augmentation probabilities)
  and ``item_decode_crop`` (no augmentation: what a worker does when the GPU augments).

From the item costs: loader workers needed for 2,000 samples/s (``ceil(2000 x cost)``, one core each) and the
samples/s 15 workers give on a 16-core machine (one core left to the training process), assuming that machine's
cores are as fast as this one's. Prints one JSON object.

    python benchmarks/bench_pipeline.py             # ~1 minute
    python benchmarks/bench_pipeline.py --quick     # ~20 s
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf
import torch
from common import add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.audio import crop, load_audio, normalize_db, resample, save_wav  # noqa: E402
from mvector.audio.augment import WaveAugmenter  # noqa: E402
from mvector.audio.gpu_augment import GpuAugmenter  # noqa: E402
from mvector.data.dataset import TrainDataset, collate_batch  # noqa: E402
from mvector.data.lists import Utterance  # noqa: E402
from mvector.data.synthetic import make_voices, synthesize_utterance  # noqa: E402
from mvector.features import build_featurizer  # noqa: E402

SR = 16000
GOAL = 2000.0


def _median_ms(fn: Callable[[int], Any], count: int, repeats: int = 1) -> float:
    """Median milliseconds of ``fn(i)`` over ``i < count`` (each call timed ``repeats`` times, best kept)."""
    times = []
    for i in range(count):
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(i)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    return 1000 * statistics.median(times)


def make_files(root: Path, count: int, seconds: float) -> dict[str, list]:
    voices = make_voices(8, seed=3)
    wavs, flacs = [], []
    for i in range(count):
        audio = synthesize_utterance(voices[i % 8], seconds, SR, rng=np.random.default_rng(i))
        wav = root / f"u{i}.wav"
        save_wav(wav, audio, SR)
        flac = root / f"u{i}.flac"
        sf.write(flac, resample(audio, SR, 44100), 44100, format="FLAC", subtype="PCM_16")
        wavs.append(str(wav))
        flacs.append(str(flac))
    (root / "noise").mkdir()
    (root / "rir").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        save_wav(root / "noise" / f"n{i}.wav", (0.1 * rng.standard_normal(SR * 6)).astype(np.float32), SR)
        rir = rng.standard_normal(SR // 4) * np.exp(-np.arange(SR // 4) / 600.0) * 0.3
        rir[20] = 1.0
        save_wav(root / "rir" / f"r{i}.wav", rir.astype(np.float32), SR)
    return {"wav": wavs, "flac": flacs, "noise_dir": str(root / "noise"), "rir_dir": str(root / "rir")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer files")
    parser.add_argument("--files", type=int, default=24, help="files timed per stage")
    parser.add_argument("--file-seconds", type=float, default=8.0, help="duration of each file")
    parser.add_argument("--crop-seconds", type=float, default=3.0, help="training crop")
    parser.add_argument("--cores", type=int, default=16, help="cores of the GPU machine the estimate is for")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    count = 8 if args.quick else args.files
    crop_n = int(args.crop_seconds * SR)
    first_n = int(math.ceil(crop_n * 1.1))
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mvector-pipeline-") as tmp:
        files = make_files(Path(tmp), count, args.file_seconds)
        wavs, flacs = files["wav"], files["flac"]
        conf = {
            "speed": {"prob": 1.0, "speeds": [0.9, 1.1]},
            "volume": {"prob": 1.0},
            "noise": {"prob": 1.0, "noise_dir": files["noise_dir"]},
            "reverb": {"prob": 1.0, "rir_dir": files["rir_dir"]},
            "shift": {"prob": 1.0},
        }
        cpu_aug = WaveAugmenter(conf)
        clips = [load_audio(w, SR)[:first_n] for w in wavs]
        rng = np.random.default_rng(0)
        for name in ("speed", "reverb", "noise"):  # fill the augmenter's file cache first
            getattr(cpu_aug, f"_{name}")(clips[0], SR, rng)

        def read_crop(path: str, frames: int) -> np.ndarray:
            with sf.SoundFile(path) as f:
                f.seek(int(rng.integers(0, max(1, f.frames - frames))))
                return f.read(frames, dtype="float32")

        stages["decode_wav"] = _median_ms(lambda i: sf.read(wavs[i], dtype="float32"), count)
        stages["decode_wav_crop_only"] = _median_ms(lambda i: read_crop(wavs[i], first_n), count)
        stages["decode_flac_44k"] = _median_ms(lambda i: sf.read(flacs[i], dtype="float32"), count)
        flac_crop = int(first_n * 44100 / SR)
        stages["decode_flac_44k_crop_only"] = _median_ms(lambda i: read_crop(flacs[i], flac_crop), count)
        flac_audio = [sf.read(f, dtype="float32")[0] for f in flacs]
        stages["resample_44k_to_16k"] = _median_ms(lambda i: resample(flac_audio[i], 44100, SR), count)
        full = [load_audio(w, SR) for w in wavs]
        stages["normalize_db"] = _median_ms(lambda i: normalize_db(full[i]), count)
        stages["crop"] = _median_ms(lambda i: crop(full[i], first_n, rng=rng).copy(), count)
        for name in ("speed", "reverb", "noise", "volume", "shift"):
            augment = getattr(cpu_aug, f"_{name}")
            stages[f"augment_{name}"] = _median_ms(lambda i, f=augment: f(clips[i], SR, rng), count)
        batch_items = [(c[:crop_n], 0) for c in clips]
        stages["collate"] = _median_ms(lambda i: collate_batch(batch_items), 3, 3) / len(batch_items)
        fz = build_featurizer("Fbank", {"num_mel_bins": 80}).train()
        batch = collate_batch([(clips[i % count][:crop_n], 0) for i in range(32)])
        with torch.no_grad():
            stages["featurizer_fbank_cpu"] = _median_ms(lambda i: fz(batch.waveforms, batch.lengths), 5, 2) / 32
        gpu_aug = GpuAugmenter.from_config(conf, SR)
        long_batch = collate_batch([(clips[i % count], 0) for i in range(32)])
        gen = torch.Generator().manual_seed(0)
        stages["gpu_augmenter_on_cpu"] = (
            _median_ms(lambda i: gpu_aug(long_batch.waveforms, long_batch.lengths, gen, out_samples=crop_n), 3, 2) / 32
        )
        bundled = WaveAugmenter(
            {"noise": {"noise_dir": files["noise_dir"]}, "reverb": {"rir_dir": files["rir_dir"]}}
        )  # the bundled probabilities: speed 0.5, reverb 0.2, noise 0.3, volume 0.3
        items = {}
        for kind, paths in (("wav16k", wavs), ("flac44k", flacs)):
            utts = [Utterance(p, 0) for p in paths]
            with_aug = TrainDataset(utts, SR, max_duration=args.crop_seconds, min_duration=0.0, augmenter=bundled)
            plain = TrainDataset(utts, SR, max_duration=args.crop_seconds * 1.1, min_duration=0.0)
            with_aug[0], plain[0]  # noqa: B018 - warm the caches
            # Several epochs per file: each draws its own crop and augmentations.
            items[f"item_cpu_augment_{kind}"] = (with_aug, 3)
            items[f"item_decode_crop_{kind}"] = (plain, 3)
        for name, (ds, epochs) in items.items():
            per_epoch = []
            for epoch in range(epochs):
                ds.set_epoch(epoch)
                per_epoch.append(_median_ms(lambda i, d=ds: d[i], count))
            stages[name] = statistics.median(per_epoch)

    per_item = {k: stages[k] for k in items}
    workers = {
        k: {
            "ms_per_sample": round(v, 3),
            "workers_for_2000_per_s": math.ceil(GOAL * v / 1000.0),
            f"samples_per_s_with_{args.cores - 1}_workers": round((args.cores - 1) * 1000.0 / v, 0),
        }
        for k, v in per_item.items()
    }
    report = {
        "benchmark": "data pipeline: CPU milliseconds per training sample, one thread",
        "workload": (
            f"{count} synthetic files of {args.file_seconds:g} s, {args.crop_seconds:g} s crops "
            f"({first_n} samples first crop when speed perturbation is on)"
        ),
        "stages_ms_per_sample": {k: round(v, 3) for k, v in stages.items()},
        "workers": workers,
        "goal": f"{GOAL:.0f} samples/s into one GPU with {args.cores} CPU cores",
        "baseline": "item_cpu_augment_*: every augmentation in the workers (the CPU path)",
        "ratio_cpu_augment_over_decode_crop_wav16k": round(
            per_item["item_cpu_augment_wav16k"] / per_item["item_decode_crop_wav16k"], 2
        ),
        "assumption": "the GPU machine's cores are as fast as this machine's; one core per worker",
        "machine": machine_info(["platform", "processor_or_machine", "cpu_count", "torch", "numpy", "load_average"]),
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
