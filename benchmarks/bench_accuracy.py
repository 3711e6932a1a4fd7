"""Verification accuracy on the shared TTS corpus: train for a fixed CPU budget, report EER / minDCF on dev trials.

Trains the bundled ``ecapa_tdnn`` config (with the overrides below, chosen for a ~10-minute CPU budget) on
``../shared/data/tts/train_list.txt`` (64 speakers, 768 clips) and scores ``dev_trials.txt`` (2,640 trials over 20
unseen speakers). Baselines measured in the same run on the same trials:

* the same network, untrained (random initialisation, same seed);
* MFCC mean+std: mvector's MFCC featurizer (no CMVN), per-utterance mean and standard deviation of each
  coefficient, every dimension standardised over the dev utterances, cosine scoring.

The number of epochs is fitted to ``--minutes`` of training wall time from a short timing of training steps
(``--epochs`` fixes it instead). Prints one JSON object; if the corpus is missing it says so and exits 0.

    python benchmarks/bench_accuracy.py                 # ~10 min of training + ~1 min of evaluation
    python benchmarks/bench_accuracy.py --minutes 2     # a shorter run
    python benchmarks/bench_accuracy.py --quick         # smoke run (< 1 min), accuracy is meaningless

Numbers taken while other jobs load the CPU get fewer epochs into the budget; the JSON carries the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import ROOT, add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.data.dataset import EvalDataset, collate_batch  # noqa: E402
from mvector.data.lists import load_utterances  # noqa: E402
from mvector.features import build_featurizer  # noqa: E402
from mvector.losses import build_head  # noqa: E402
from mvector.metrics import evaluate_scores  # noqa: E402
from mvector.scoring import cosine_score_trials, read_trials  # noqa: E402
from mvector.trainer import MVectorTrainer, SpeakerModel, _seed_everything  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "tts"

#: Overrides of the bundled ecapa_tdnn config used by default (see the module docstring / --help for why).
DEFAULT_OVERRIDES = {
    "model_conf.channels": 256,
    "dataset_conf.max_duration": 2.0,
    "dataset_conf.batch_size": 32,
    "dataset_conf.num_workers": None,
    "optimizer_conf.learning_rate": 0.002,
    "optimizer_conf.warmup_epochs": 1.0,
    "train_conf.log_interval": 1000,
    "train_conf.eval_interval": 0,
    "train_conf.log_backend": "none",
    "train_conf.keep_last_epochs": 1,
}


def write_noise_folder(folder: Path, seed: int = 0, count: int = 12, seconds: float = 6.0, sample_rate: int = 16000):
    """Noise files for the additive-noise augmentation: coloured noise (white → brown) and mains hum.

    The corpus brings no noise recordings, so they are generated (deterministically from ``seed``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    for i in range(count):
        spectrum = np.fft.rfft(rng.standard_normal(n))
        tilt = rng.uniform(0.0, 2.0)  # 0 white, 1 pink, 2 brown
        spectrum /= np.maximum(freqs, 20.0) ** (tilt / 2)
        noise = np.fft.irfft(spectrum, n)
        if i % 4 == 3:  # hum with harmonics on top
            t = np.arange(n) / sample_rate
            base = rng.choice([50.0, 60.0])
            hum = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
            noise = noise / np.std(noise) * 0.3 + hum / np.std(hum)
        noise = 0.1 * noise / np.std(noise)
        sf.write(folder / f"noise_{i:02d}.wav", noise.astype(np.float32), sample_rate)


def augmentation_conf(noise_dir: Path | None, speed: bool) -> dict:
    conf: dict = {
        "volume": {"prob": 0.3},
        "spec_aug": {"prob": 0.5, "freq_masks": 1, "freq_mask_width": 8, "time_masks": 1, "time_mask_width": 10},
    }
    if noise_dir is not None:
        conf["noise"] = {"prob": 0.4, "noise_dir": str(noise_dir), "min_snr_db": 5.0, "max_snr_db": 25.0}
    if speed:
        conf["speed"] = {"prob": 0.3, "speeds": [0.95, 1.0, 1.05]}
    return conf


class TimedTrainer(MVectorTrainer):
    """Records the wall time of each training epoch (evaluation and checkpoint saving are not counted)."""

    epoch_seconds: list[float]

    def _train_epoch(self, *args, **kwargs):
        start = time.perf_counter()
        out = super()._train_epoch(*args, **kwargs)
        self.epoch_seconds = getattr(self, "epoch_seconds", []) + [time.perf_counter() - start]
        return out


def step_seconds(trainer: MVectorTrainer, num_speakers: int, steps: int = 3) -> float:
    """Seconds per training step (featurize + forward + backward + Adam) on random waveforms, median of ``steps``."""
    conf = trainer.configs
    ds = conf["dataset_conf"]
    embedder = trainer.build_embedding_model()
    loss_conf, _ = trainer._loss_conf()
    model = SpeakerModel(
        embedder.backbone, build_head(conf["use_loss"], embedder.backbone.embd_dim, num_speakers, **loss_conf)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = int(ds["batch_size"])
    samples = int(ds["max_duration"] * ds["sample_rate"])
    waves = 0.1 * torch.randn(batch, samples)
    lengths = torch.full((batch,), samples)
    labels = torch.randint(0, num_speakers, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.no_grad():
            feats, frames = embedder.featurizer(waves, lengths)
        loss, _ = model(feats, frames, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def untrained_metrics(trainer: MVectorTrainer) -> dict:
    _seed_everything(int(trainer.configs["train_conf"]["seed"]))
    model = trainer.build_embedding_model().eval()
    return trainer.evaluate_model(model, torch.device("cpu"), progress=False)


def mfcc_baseline(trials: list[tuple[int, str, str]], n_mfcc: int, n_mels: int = 40) -> dict:
    """EER / minDCF of per-utterance MFCC mean+std vectors, dimensions standardised over the utterances."""
    paths = sorted({p for _, a, b in trials for p in (a, b)})
    featurizer = build_featurizer("MFCC", {"n_mfcc": n_mfcc, "n_mels": n_mels}, normalize=False).eval()
    dataset = EvalDataset(paths, max_duration=None)
    vectors = np.zeros((len(paths), 2 * n_mfcc))
    with torch.inference_mode():
        for start in range(0, len(paths), 16):
            batch = collate_batch([dataset[i] for i in range(start, min(start + 16, len(paths)))])
            if batch.skipped:
                raise RuntimeError(f"unreadable dev files: {batch.skipped}")
            feats, frames = featurizer(batch.waveforms, batch.lengths)
            for row, idx in enumerate(batch.labels.tolist()):
                f = feats[row, : int(frames[row])].double()
                vectors[idx] = torch.cat([f.mean(0), f.std(0)]).numpy()
    vectors = (vectors - vectors.mean(0)) / np.maximum(vectors.std(0), 1e-8)
    index = {p: i for i, p in enumerate(paths)}
    pairs = np.array([(index[a], index[b]) for _, a, b in trials])
    labels = np.array([lab for lab, _, _ in trials])
    return _short(evaluate_scores(cosine_score_trials(vectors, pairs), labels))


def _short(metrics: dict) -> dict:
    keys = ("eer", "min_dcf", "min_dcf_0.05", "threshold", "num_trials")
    return {k: (round(float(metrics[k]), 5) if isinstance(metrics[k], float) else metrics[k]) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget (default 10)")
    parser.add_argument("--epochs", type=int, default=0, help="train exactly this many epochs (ignores --minutes)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch of a tiny model on 128 clips")
    parser.add_argument("--no-noise", action="store_true", help="no additive-noise augmentation")
    parser.add_argument("--speed", action="store_true", help="add speed perturbation (0.95/1.05, same label)")
    parser.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--corpus", default=str(CORPUS), help="the tts corpus folder (default ../shared/data/tts)")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value (e.g. model_conf.channels=128)")
    args = parser.parse_args()
    corpus = Path(args.corpus)
    wall_start = time.perf_counter()
    needed = [corpus / n for n in ("train_list.txt", "dev_trials.txt")]
    if not all(p.is_file() for p in needed):
        emit(
            {
                "benchmark": "bench_accuracy",
                "skipped": f"corpus not found: {corpus} (need train_list.txt, "
                "dev_trials.txt); see ../shared/data/README.md",
            }
        )
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = machine_info(["load_average"])["load_average"]

    overrides = {k: str(v) for k, v in DEFAULT_OVERRIDES.items()}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"override {item!r} is not key=value")
        overrides[key.lstrip("-")] = value
    tmp = Path(tempfile.mkdtemp(prefix="bench_accuracy_"))
    train_list = corpus / "train_list.txt"
    if args.quick:  # 16 speakers x 8 clips, a narrow network, one epoch
        lines = [ln for ln in train_list.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if int(ln.split("\t")[1]) < 16]
        keep = [ln for i, ln in enumerate(keep) if i % 12 < 8]
        train_list = tmp / "quick_list.txt"  # the corpus list's paths are relative to it: write absolute ones
        train_list.write_text("".join(f"{corpus / ln.split(chr(9))[0]}\t{ln.split(chr(9))[1]}\n" for ln in keep))
        overrides.update({"model_conf.channels": "32", "dataset_conf.batch_size": "16"})
        args.epochs = 1
    overrides["dataset_conf.train_list"] = str(train_list)
    overrides["dataset_conf.trials_list"] = str(corpus / "dev_trials.txt")
    overrides["train_conf.log_dir"] = str(tmp / "log")

    noise_dir = None
    if not (args.no_noise or args.no_augment):
        noise_dir = tmp / "noise"
        write_noise_folder(noise_dir)
    aug = None if args.no_augment else augmentation_conf(noise_dir, args.speed)
    aug_path = None
    if aug is not None:
        import yaml

        aug_path = tmp / "augmentation.yml"
        aug_path.write_text(yaml.safe_dump(aug))

    trials = read_trials(corpus / "dev_trials.txt")
    t0 = time.perf_counter()
    mfcc = {n: mfcc_baseline(trials, n) for n in (20, 40)}
    mfcc_s = time.perf_counter() - t0

    utts = load_utterances(str(train_list))
    num_speakers = len({u.label for u in utts})
    probe = TimedTrainer("ecapa_tdnn", use_gpu=False, overrides=overrides)
    steps_per_epoch = len(utts) // int(probe.configs["dataset_conf"]["batch_size"])
    step_s = step_seconds(probe, num_speakers)
    if args.epochs:
        epochs = args.epochs
    else:  # 30% allowance: data loading and augmentation share the cores, the loader restarts every epoch
        epochs = max(1, math.floor(args.minutes * 60 / (1.3 * step_s * steps_per_epoch)))
    overrides["train_conf.max_epoch"] = str(epochs)
    margin_end = max(1.0, round(0.4 * epochs, 1))
    overrides.setdefault("loss_conf.margin_scheduler.end_epoch", str(margin_end))

    t0 = time.perf_counter()
    untrained = _short(untrained_metrics(probe))
    untrained_s = time.perf_counter() - t0

    trainer = TimedTrainer("ecapa_tdnn", use_gpu=False, overrides=overrides, augment_conf_path=aug_path)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        result = trainer.train(save_model_path=str(tmp / "models"))
    train_total_s = time.perf_counter() - t0
    train_s = sum(trainer.epoch_seconds)
    trained = _short(result)

    best_mfcc = min(mfcc.values(), key=lambda m: m["eer"])
    report = {
        "benchmark": "bench_accuracy (dev_trials.txt of the shared TTS corpus)",
        "figure": {"eer": trained["eer"], "min_dcf": trained["min_dcf"]},
        "baseline": {"mfcc_mean_std_eer": best_mfcc["eer"], "untrained_eer": untrained["eer"]},
        "ratio_eer_vs_mfcc": round(trained["eer"] / best_mfcc["eer"], 3),
        "trained": trained,
        "untrained": untrained,
        "mfcc_mean_std": {f"n_mfcc_{n}": m for n, m in mfcc.items()},
        "reference_points": {"mfcc_mean_std_eer": "about 0.22-0.24", "ge2e_pretrained_eer": "about 0.11-0.14"},
        "training": {
            "config": "ecapa_tdnn (bundled) + overrides",
            "overrides": {k: v for k, v in overrides.items() if not k.endswith(("_list", "log_dir"))},
            "augmentation": aug,
            "train_utterances": len(utts),
            "speakers": num_speakers,
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "timed_step_s": round(step_s, 3),
            "budget_minutes": None if args.epochs else args.minutes,
            "train_wall_s": round(train_s, 1),
            "epoch_s": [round(s, 1) for s in trainer.epoch_seconds],
            "train_call_s_incl_eval_and_checkpoints": round(train_total_s, 1),
        },
        "seconds": {"mfcc_baselines": round(mfcc_s, 1), "untrained_eval": round(untrained_s, 1)},
        "quick": args.quick,
        "wall_s": round(time.perf_counter() - wall_start, 1),
        "machine": {**machine_info(), "load_average_at_start": load_start},
    }
    emit(report)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
