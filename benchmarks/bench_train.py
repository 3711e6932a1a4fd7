"""End-to-end training throughput of ``MVectorTrainer``: samples/s and the share of step time spent waiting for data.

A synthetic corpus is written to a temp folder (``mvector.data.synthetic.generate_corpus``): half the speakers as
16 kHz WAV, half as 44.1 kHz FLAC (decoded and resampled by the workers), plus a folder of generated noise for
``augmentation.yml``-style waveform augmentation (speed, volume, shift, noise) and SpecAugment. The trainer runs
unchanged (decode, resample, crop, augment, collate, featurize, forward, backward, step); the benchmark only wraps
``MVectorTrainer._train_epoch`` to time each epoch from outside, and wraps the data loader it is given to time
how long each step waits for its batch.

Three runs in one process, same data, model and seed:

* ``default`` - the data-loader settings of the config (``dataset_conf.num_workers``, ``prefetch_factor``);
* ``baseline_num_workers_0`` - the same training with data loading on the main process;
* ``compute_only`` - the batches are loaded once up front and replayed, i.e. the step time with no data loading
  (the ceiling the data pipeline can reach).

On the CPU (default here) the backbone is ECAPA-TDNN at reduced width (``--channels``, default 128; the CPU cannot
train C=512 at a useful rate); on CUDA it is ECAPA-TDNN C=512 with AMP (bfloat16) and 3 s crops, goal: the GPU
never waits for data, above 2,000 samples/s on an H100.

    python benchmarks/bench_train.py            # CPU < 2 min; on CUDA the full-size model
    python benchmarks/bench_train.py --quick    # < 60 s
    python benchmarks/bench_train.py --device cpu --channels 512 --batch 64

Prints one JSON object; numbers taken while other jobs share the CPU are provisional.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import add_repo_to_path, emit, machine_info, stats

add_repo_to_path()

from mvector.data.synthetic import generate_corpus  # noqa: E402
from mvector.trainer import MVectorTrainer  # noqa: E402


# ------------------------------------------------------------------------------------------------ corpus
def _corpus_part(args: tuple[str, int, int, int, int, bool, float, float]) -> list[str]:
    folder, seed, speakers, utts, rate, flac, min_dur, max_dur = args
    lst = generate_corpus(
        folder,
        speakers,
        utts,
        sample_rate=rate,
        min_duration=min_dur,
        max_duration=max_dur,
        seed=seed,
    )
    lines = []
    for line in lst.read_text().splitlines():
        rel, label = line.split("\t")
        path = Path(folder) / rel
        if flac:
            data, sr = sf.read(path, dtype="int16")
            path.unlink()
            path = path.with_suffix(".flac")
            sf.write(path, data, sr, format="FLAC", subtype="PCM_16")
        lines.append(f"{path}\t{label}")
    return lines


def make_corpus(root: Path, speakers: int, utts: int, jobs: int, max_dur: float) -> tuple[Path, Path, dict]:
    """Training list (half 16 kHz WAV, half 44.1 kHz FLAC) and a small test list; returns (train, test, info).

    Each part is a separate ``generate_corpus`` call with its own seed, so parts can be written in parallel;
    labels are renumbered to be unique across parts.
    """
    per_part = 4
    parts = []
    for k in range(max(2, -(-speakers // per_part))):
        flac = k % 2 == 1
        parts.append(
            (str(root / f"part{k:02d}"), 100 + k, per_part, utts, 44100 if flac else 16000, flac, 1.5, max_dur)
        )
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_corpus_part, parts))
    else:
        results = [_corpus_part(p) for p in parts]
    lines = []
    for k, part in enumerate(results):
        for line in part:
            path, label = line.split("\t")
            lines.append(f"{path}\t{k * per_part + int(label)}\n")
    train = root / "train_list.txt"
    train.write_text("".join(lines))
    test = root / "test_list.txt"  # 2 clips of 4 speakers for the one evaluation the trainer runs at the end
    test.write_text("".join(lines[s * utts + k] for s in range(4) for k in range(2)))
    durations = [sf.info(ln.split("\t")[0]).duration for ln in lines]
    info = {
        "utterances": len(lines),
        "speakers": len(parts) * per_part,
        "hours": round(sum(durations) / 3600, 3),
        "formats": "half the speakers 16 kHz WAV, half 44.1 kHz FLAC (resampled to 16 kHz when loaded)",
        "clip_seconds": [1.5, max_dur],
    }
    return train, test, info


def write_noise(folder: Path, count: int = 6, seconds: float = 5.0, rate: int = 22050) -> None:
    """Coloured noise files at another sample rate (the augmenter decodes and resamples them once per worker)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    n = int(seconds * rate)
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / rate), 20.0)
    for i in range(count):
        spec = np.fft.rfft(rng.standard_normal(n)) / freqs ** (i / max(1, count - 1))
        x = np.fft.irfft(spec, n)
        sf.write(folder / f"noise{i}.wav", (0.1 * x / np.std(x)).astype(np.float32), rate)


# ------------------------------------------------------------------------------------------------ timing
class _TimedLoader:
    """Wraps the trainer's DataLoader: times every ``next()`` (the step's wait for data) and counts samples."""

    def __init__(self, loader, record: dict):
        self.loader = loader
        self.record = record

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        rec = self.record
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            waited = time.perf_counter() - start
            rec["waits"].append(waited)
            rec["samples"] += len(batch)
            yield batch


class _ReplayLoader:
    """The first ``len(loader)`` batches of the loader, loaded once and replayed (no data loading in the epoch)."""

    def __init__(self, loader):
        self.batches = list(loader)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class BenchTrainer(MVectorTrainer):
    """``MVectorTrainer`` with each epoch timed from outside (the training code itself is not changed)."""

    def __init__(self, *args, replay: bool = False, sync=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.replay = replay
        self.sync = sync or (lambda: None)
        self.epochs: list[dict] = []
        self._replay_loader = None

    def _train_epoch(self, epoch, max_epoch, loader, *rest):
        if self.replay:
            if self._replay_loader is None:
                self._replay_loader = _ReplayLoader(loader)
            loader = self._replay_loader
        rec = {"waits": [], "samples": 0}
        self.sync()
        start = time.perf_counter()
        out = super()._train_epoch(epoch, max_epoch, _TimedLoader(loader, rec), *rest)
        self.sync()
        rec["wall"] = time.perf_counter() - start
        self.epochs.append(rec)
        return out


def run_training(name: str, overrides: dict, aug_path: Path, out_dir: Path, use_gpu: bool, replay: bool) -> dict:
    sync = torch.cuda.synchronize if use_gpu else None
    trainer = BenchTrainer(
        "ecapa_tdnn", use_gpu=use_gpu, overrides=overrides, augment_conf_path=aug_path, replay=replay, sync=sync
    )
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train(save_model_path=str(out_dir / name))
    timed = trainer.epochs[1:]  # the first epoch warms up (allocator, kernels, FFT plans); it is not counted
    rates = [e["samples"] / e["wall"] for e in timed]
    wait_share = [sum(e["waits"]) / e["wall"] for e in timed]
    first_wait = [e["waits"][0] for e in timed]
    steady_wait = [sum(e["waits"][1:]) / e["wall"] for e in timed]
    return {
        "samples_per_s": stats(rates, 2),
        "data_wait_share": stats(wait_share, 4),
        "data_wait_share_after_first_batch": stats(steady_wait, 4),
        "first_batch_wait_s": stats(first_wait, 3),
        "epoch_s": [round(e["wall"], 2) for e in trainer.epochs],
        "steps_per_epoch": len(trainer.epochs[0]["waits"]),
        "samples_per_epoch": trainer.epochs[0]["samples"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpus and model, 3 epochs (< 60 s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--channels", type=int, default=0, help="ECAPA-TDNN width (default: 128 CPU, 512 CUDA)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: 32 CPU, 128 CUDA)")
    parser.add_argument("--crop", type=float, default=3.0, help="training crop in seconds (default 3)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per run, the first is warm-up (default 3)")
    parser.add_argument("--steps", type=int, default=0, help="steps per epoch (sets the corpus size)")
    parser.add_argument("--workers", type=int, default=-1, help="num_workers of the default run (default: config)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the num_workers=0 run")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (corpus, checkpoints)")
    args = parser.parse_args()

    use_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_gpu and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    started = time.perf_counter()
    load_start = machine_info(["load_average"])["load_average"]
    if use_gpu:
        channels, batch, epochs, steps = args.channels or 512, args.batch or 128, args.epochs or 3, args.steps or 20
        if args.quick:
            steps, epochs = args.steps or 8, args.epochs or 3
    else:
        channels, batch, epochs, steps = args.channels or 128, args.batch or 32, args.epochs or 3, args.steps or 8
        if args.quick:
            channels, batch, steps = args.channels or 32, args.batch or 8, args.steps or 3
    epochs = max(2, epochs)
    utts_per_speaker = 4 if args.quick else 8
    speakers = max(8, -(-batch * steps // utts_per_speaker))
    speakers = -(-speakers // 4) * 4

    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        t0 = time.perf_counter()
        jobs = min(8, os.cpu_count() or 1)
        train_list, test_list, corpus = make_corpus(root / "corpus", speakers, utts_per_speaker, jobs, args.crop + 2.0)
        write_noise(root / "noise")
        corpus["seconds_to_write"] = round(time.perf_counter() - t0, 1)
        aug_path = root / "augmentation.yml"
        aug_path.write_text(
            "speed: {prob: 0.5, speeds: [0.9, 1.0, 1.1]}\n"
            "volume: {prob: 0.3, min_gain_db: -6.0, max_gain_db: 6.0}\n"
            f"noise: {{prob: 0.3, noise_dir: '{root / 'noise'}', min_snr_db: 5.0, max_snr_db: 20.0}}\n"
            "shift: {prob: 0.3, max_shift_ms: 100.0}\n"
            "spec_aug: {prob: 0.5, freq_masks: 1, freq_mask_width: 8, time_masks: 1, time_mask_width: 10}\n"
        )
        overrides = {
            "dataset_conf.train_list": str(train_list),
            "dataset_conf.test_list": str(test_list),
            "dataset_conf.batch_size": str(batch),
            "dataset_conf.max_duration": str(args.crop),
            "model_conf.channels": str(channels),
            "train_conf.max_epoch": str(epochs),
            "train_conf.eval_interval": "0",
            "train_conf.log_interval": "1000000",
            "train_conf.log_backend": "none",
            "train_conf.keep_last_epochs": "1",
            "train_conf.log_dir": str(root / "log"),
        }
        if use_gpu:
            overrides.update({"train_conf.amp": "true", "train_conf.amp_dtype": "bfloat16"})
        default_over = dict(overrides)
        if args.workers >= 0:
            default_over["dataset_conf.num_workers"] = str(args.workers)
        runs: dict[str, dict] = {}
        out = root / "models"
        runs["default"] = run_training("default", default_over, aug_path, out, use_gpu, replay=False)
        if not args.no_baseline:
            base_over = {**overrides, "dataset_conf.num_workers": "0"}
            runs["baseline_num_workers_0"] = run_training("baseline", base_over, aug_path, out, use_gpu, replay=False)
        runs["compute_only"] = run_training("replay", overrides, aug_path, out, use_gpu, replay=True)
        conf = BenchTrainer("ecapa_tdnn", use_gpu=False, overrides=default_over).configs["dataset_conf"]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    figure = runs["default"]["samples_per_s"]["median"]
    base = runs.get("baseline_num_workers_0")
    ceiling = runs["compute_only"]["samples_per_s"]["median"]
    device = torch.cuda.get_device_name(0) if use_gpu else "cpu"
    report = {
        "benchmark": "bench_train (MVectorTrainer end to end: decode, resample, crop, augment, features, step)",
        "figure": {
            "samples_per_s": figure,
            "data_wait_share": runs["default"]["data_wait_share"]["median"],
        },
        "baseline": None if base is None else {"what": "same training, num_workers=0", **base["samples_per_s"]},
        "ratio_vs_num_workers_0": None if base is None else round(figure / base["samples_per_s"]["median"], 3),
        "fraction_of_compute_only": round(figure / ceiling, 3),
        "goal": "CUDA: GPU never waits for data; ECAPA-TDNN C=512, 3 s crops > 2000 samples/s on an H100"
        if use_gpu
        else None,
        "setup": {
            "device": device,
            "model": f"EcapaTdnn channels={channels}" + (" (reduced width for the CPU)" if not use_gpu else ""),
            "features": "Fbank 80 (on the training device)",
            "amp": "bfloat16" if use_gpu else None,
            "batch_size": batch,
            "crop_s": args.crop,
            "epochs_per_run": epochs,
            "timed_epochs": epochs - 1,
            "num_workers_default": conf["num_workers"],
            "prefetch_factor": conf["prefetch_factor"],
            "augmentation": "speed 0.5, volume 0.3, noise 0.3 (generated 22.05 kHz noise), shift 0.3, SpecAugment 0.5",
            "corpus": corpus,
        },
        "runs": runs,
        "quick": args.quick,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {**machine_info(), "load_average_at_start": load_start},
        "note": "data_wait_share = time the training loop spent in next(loader) / epoch wall time; "
        "on CUDA it is host-side wait (the GPU may still be busy with queued work meanwhile), so compare "
        "samples_per_s with compute_only as well",
    }
    emit(report)


if __name__ == "__main__":
    main()
