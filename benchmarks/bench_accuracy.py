"""Verification accuracy on the shared TTS corpus: train for a fixed CPU budget, report EER / minDCF on dev trials.

Trains the bundled ``ecapa_tdnn_fbank`` config (the default before issue 16, so the published figures reproduce;
with the overrides below, chosen for a ~10-minute CPU budget) on
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

Recipe comparison on a generated corpus (``../shared/tools/corpus``: ``train_list.txt`` and ``dev_trials.txt``)::

    python benchmarks/bench_accuracy.py --corpus CORPUS                      # default, seed_like, mfcc; 5 epochs
    python benchmarks/bench_accuracy.py --corpus CORPUS --recipes default,seed_like --seed 7   # another seed
    python benchmarks/bench_accuracy.py --corpus CORPUS --recipes v0_default --epochs 3
    python benchmarks/bench_accuracy.py --list-recipes

trains every named recipe for the same number of epochs on the same data and reports, per recipe, EER / minDCF
on the dev trials after each epoch, the training wall time (evaluation excluded) and the evaluation time. The
recipes (:data:`RECIPES`) are complete settings, so a row of ``benchmarks/RESULTS.md`` stays reproducible when
the bundled default changes; ``default`` is the bundled ``ecapa_tdnn.yml`` + ``augmentation.yml`` as they are now.
``mfcc`` is the untrained MFCC mean+std baseline. In this mode ``--tts DIR`` is not used.

Fine-tuning against both its parents (issue 23), one run: the imported model as it is, the bundled
``campplus_finetune`` recipe started from it, the default from scratch (the JSON's ``finetune`` entry)::

    python benchmarks/bench_accuracy.py --corpus CORPUS --recipes imported,default,campplus_finetune \
        --pretrained models/campplus_zh_en --threads 1 --eval-every 0

``--channels`` narrows the ECAPA recipes only (a CAM++ keeps its shape).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf
import torch
from common import ROOT, add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.data.dataset import EvalDataset, collate_batch  # noqa: E402
from mvector.data.lists import load_utterances  # noqa: E402
from mvector.evaluation.evaluator import EvalSettings, Evaluator  # noqa: E402
from mvector.evaluation.metrics import evaluate_scores  # noqa: E402
from mvector.evaluation.scoring import cosine_score_trials, read_trials  # noqa: E402
from mvector.features import build_featurizer  # noqa: E402
from mvector.training.callbacks import Callback, EvaluationCallback  # noqa: E402
from mvector.training.trainer import MVectorTrainer  # noqa: E402
from mvector.utils.seeding import seed_everything  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "tts"

#: The config of the shared-corpus mode: the default before issue 16, which the published figures were measured on.
TTS_MODE_CONFIG = "ecapa_tdnn_fbank"

#: Overrides of the bundled ecapa_tdnn_fbank config used by default (see the module docstring / --help for why).
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


# ------------------------------------------------------------------------------------------ recipes (--corpus)

#: The bundled default before issue 16 (Kaldi Fbank 80 bins at 100 frames/s, 1 warm-up epoch, cosine to 1e-5,
#: margin ramped 0 -> 0.2 over 5 epochs, SpecAugment at 0.5, speed perturbation with the same label).
V0_CONFIG: dict = {
    "use_model": "EcapaTdnn",
    "use_loss": "AAM",
    "dataset_conf": {"sample_rate": 16000, "max_duration": 3.0, "min_duration": 0.5, "batch_size": 64},
    "preprocess_conf": {"feature_method": "Fbank", "normalize": True},
    "feature_conf": {"sample_rate": 16000, "num_mel_bins": 80, "frame_length": 25, "frame_shift": 10},
    "model_conf": {"embd_dim": 192, "pooling_type": "ASP", "channels": 512},
    "loss_conf": {
        "margin": 0.2,
        "scale": 32,
        "easy_margin": False,
        "label_smoothing": 0.0,
        "margin_scheduler": {"initial_margin": 0.0, "final_margin": 0.2, "start_epoch": 0, "end_epoch": 5},
    },
    "optimizer_conf": {
        "optimizer": "Adam",
        "learning_rate": 0.001,
        "weight_decay": 1.0e-6,
        "scheduler": "WarmupCosine",
        "warmup_epochs": 1,
        "min_lr": 1.0e-5,
    },
    "train_conf": {"seed": 1234},
    # plain cosine scoring, as before issue 23 (a recipe that left the section out took the bundled default's)
    "score_norm_conf": {"cohort": "none"},
}
#: What the pre-issue-16 augmentation.yml did on a machine without noise / RIR folders (both are then off).
V0_AUGMENT: dict = {
    "speed": {"prob": 0.5, "speeds": [0.9, 1.0, 1.1]},
    "volume": {"prob": 0.3, "min_gain_db": -6.0, "max_gain_db": 6.0},
    "spec_aug": {"prob": 0.5, "freq_masks": 1, "freq_mask_width": 8, "time_masks": 1, "time_mask_width": 10},
}
#: The seed's own recipe (mvector 0.3.9 default ECAPA-TDNN) run through this library: 64-bin mel spectrogram with
#: a 1024-point window and a 320-sample hop (50 frames/s), f_max 14 kHz (clamped to Nyquist), Adam 1e-3 with no
#: warm-up and cosine to 2.5e-4, AAM margin 0.2 / scale 30 from the first step, speed + volume at 0.5, no
#: SpecAugment.
SEED_CONFIG: dict = {
    **V0_CONFIG,
    "preprocess_conf": {"feature_method": "MelSpectrogram", "normalize": True},
    "feature_conf": {
        "sample_rate": 16000,
        "n_fft": 1024,
        "win_length": 1024,
        "hop_length": 320,
        "f_min": 50.0,
        "f_max": 8000.0,
        "n_mels": 64,
    },
    "loss_conf": {"margin": 0.2, "scale": 30, "easy_margin": False, "label_smoothing": 0.0},
    "optimizer_conf": {**V0_CONFIG["optimizer_conf"], "warmup_epochs": 0, "min_lr": 2.5e-4},
}
SEED_AUGMENT: dict = {
    "speed": {"prob": 0.5, "speeds": [0.9, 1.0, 1.1]},
    "volume": {"prob": 0.5, "min_gain_db": -6.0, "max_gain_db": 6.0},
}


def _changed(base: dict, changes: Mapping[str, Any]) -> dict:
    """A deep copy of ``base`` with dotted keys set (``{"feature_conf.frame_shift": 20}``); ``None`` deletes."""
    out = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return out


def _seed_variant(
    description: str, config: Mapping[str, Any] | None = None, augment: Mapping[str, Any] | None = None
) -> Recipe:
    """A recipe that changes the seed-like recipe (b): dotted ``config`` and ``augment`` keys set (see _changed)."""
    return Recipe(description, _changed(SEED_CONFIG, config or {}), _changed(SEED_AUGMENT, augment or {}))


#: The default of issue 23 before its retraining remedies (v3_c + AS-norm against 16 training clips per speaker,
#: top 100), frozen here so that the t23_* rows stay reproducible when the bundled default changes.
T23_CONFIG: dict = _changed(
    SEED_CONFIG,
    {
        "dataset_conf.batch_size": 32,
        "optimizer_conf.min_lr": 1.0e-5,
        "score_norm_conf": {"cohort": "utterances", "top_k": 100, "max_per_speaker": 16, "cohort_speeds": [1.0]},
    },
)
T23_AUGMENT: dict = _changed(SEED_AUGMENT, {"speed.speaker_per_speed": True})


def _t23_variant(
    description: str, config: Mapping[str, Any] | None = None, augment: Mapping[str, Any] | None = None
) -> Recipe:
    """A recipe that changes the issue-23 base (``t23_base``): dotted ``config`` and ``augment`` keys set."""
    return Recipe(description, _changed(T23_CONFIG, config or {}), _changed(T23_AUGMENT, augment or {}))


def _fbank(bins: int, window_ms: int) -> dict:
    """Config changes that put Kaldi Fbank (``bins`` bins, ``window_ms`` window, 20 ms shift) in (b)'s place."""
    conf = {"sample_rate": 16000, "num_mel_bins": bins, "frame_length": window_ms, "frame_shift": 20}
    return {"preprocess_conf.feature_method": "Fbank", "feature_conf": conf}


@dataclass(frozen=True)
class Recipe:
    """One row of the comparison: a complete config (``None``: the bundled ``ecapa_tdnn.yml`` as it is now) and
    an augmentation mapping (``"config"``: the config's own ``augment_conf`` section, or the bundled
    ``augmentation.yml`` when it has none; ``None``: no augmentation). A string config names a bundled config."""

    description: str
    config: dict | str | None
    augmentation: dict | str | None
    #: Trained from the weights of ``--pretrained DIR`` (``train.py --pretrained_model DIR``).
    pretrained: bool = False


RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        "the bundled ecapa_tdnn.yml with its augment_conf, else augmentation.yml (as they are now)", None, "config"
    ),
    "v0_default": Recipe("(a) the bundled default before issue 16", V0_CONFIG, V0_AUGMENT),
    "seed_like": Recipe("(b) the seed's recipe run through mvector", SEED_CONFIG, SEED_AUGMENT),
    "seed_no_speed": Recipe(
        "(b) without speed perturbation (volume only)", SEED_CONFIG, _changed(SEED_AUGMENT, {"speed": None})
    ),
    "seed_fbank80": _seed_variant(
        "(b) with Kaldi Fbank 80 bins, 25 ms window, 20 ms shift instead of the 64-bin mel spectrogram",
        _fbank(80, 25),
    ),
    "seed_specaug": Recipe(
        "(b) with v0's SpecAugment (p 0.5, one 8-bin and one 10-frame mask)",
        SEED_CONFIG,
        _changed(SEED_AUGMENT, {"spec_aug": V0_AUGMENT["spec_aug"]}),
    ),
    "seed_v0_schedule": Recipe(
        "(b) with v0's schedule: 1 warm-up epoch, cosine to 1e-5, margin ramped 0 -> 0.2 over 5 epochs, scale 32",
        _changed(SEED_CONFIG, {"loss_conf": V0_CONFIG["loss_conf"], "optimizer_conf": V0_CONFIG["optimizer_conf"]}),
        SEED_AUGMENT,
    ),
    "v1_candidate": _seed_variant(
        "(b) with Kaldi Fbank 80 bins (25 ms window, 20 ms shift) and without speed perturbation",
        _fbank(80, 25), augment={"speed": None},
    ),
    "seed_fbank80_win64": _seed_variant(
        "(b) with Kaldi Fbank 80 bins, 64 ms window (1024-point FFT), 20 ms shift",
        _fbank(80, 64),
    ),
    "seed_fbank64_win64": _seed_variant(
        "(b) with Kaldi Fbank 64 bins, 64 ms window (1024-point FFT), 20 ms shift",
        _fbank(64, 64),
    ),
    "v2_candidate": _seed_variant(
        "(b) with Kaldi Fbank 80 bins (64 ms window, 20 ms shift) and without speed perturbation",
        _fbank(80, 64), augment={"speed": None},
    ),
    "seed_speed_labels": _seed_variant(
        "(b) with each speed trained as a speaker of its own (3 x 100 classes)",
        augment={"speed.speaker_per_speed": True},
    ),
    "seed_repeat": _seed_variant(
        "(b) with short training clips repeated to fill the 3 s crop instead of zero-padded",
        {"dataset_conf.short_clips": "repeat"},
    ),
    "seed_batch32": _seed_variant(
        "(b) with batches of 32 (twice the optimiser steps per epoch)", {"dataset_conf.batch_size": 32}
    ),
    "seed_batch16": _seed_variant(
        "(b) with batches of 16 (four times the optimiser steps per epoch)", {"dataset_conf.batch_size": 16}
    ),
    "seed_lr2e3": _seed_variant(
        "(b) with a peak learning rate of 2e-3 (cosine to 5e-4)",
        {"optimizer_conf.learning_rate": 0.002, "optimizer_conf.min_lr": 5.0e-4},
    ),
    "seed_cmn": _seed_variant(
        "(b) with per-utterance mean normalisation only (no variance normalisation)",
        {"preprocess_conf.normalize": "mean"},
    ),
    "seed_low_floor": _seed_variant(
        "(b) with the cosine schedule ending at 1e-5 instead of 2.5e-4", {"optimizer_conf.min_lr": 1.0e-5}
    ),
    "seed_margin03": _seed_variant("(b) with an AAM margin of 0.3", {"loss_conf.margin": 0.3}),
    "seed_adamw": _seed_variant(
        "(b) with AdamW, decoupled weight decay 0.05",
        {"optimizer_conf.optimizer": "AdamW", "optimizer_conf.weight_decay": 0.05},
    ),
    "seed_channel": _seed_variant(
        "(b) with a random equalizer (p 0.5) and generated coloured noise at 10-30 dB SNR (p 0.5)",
        augment={"equalizer": {"prob": 0.5}, "colored_noise": {"prob": 0.5}},
    ),
    "seed_crop2": _seed_variant("(b) with 2 s training crops", {"dataset_conf.max_duration": 2.0}),
    "v3_a": _seed_variant(
        "(b) with batches of 32 and each speed trained as a speaker of its own",
        {"dataset_conf.batch_size": 32},
        {"speed.speaker_per_speed": True},
    ),
    "v3_c": _seed_variant(
        "v3_a with the cosine schedule ending at 1e-5 (the default since issue 16)",
        {"dataset_conf.batch_size": 32, "optimizer_conf.min_lr": 1.0e-5},
        {"speed.speaker_per_speed": True},
    ),
    "v3_d": _seed_variant(
        "v3_c with batches of 16",
        {"dataset_conf.batch_size": 16, "optimizer_conf.min_lr": 1.0e-5},
        {"speed.speaker_per_speed": True},
    ),
    "campplus_finetune": Recipe(
        "the bundled campplus_finetune.yml from the weights of --pretrained DIR (an imported CAM++), no augmentation",
        "campplus_finetune",
        None,
        pretrained=True,
    ),
    "t23_base": _t23_variant("v3_c with AS-norm against 16 training clips per speaker, top 100 (issue 23's start)"),
    "t23_margin04_last": _t23_variant(
        "t23_base with the AAM margin raised from 0.2 to 0.4 for the 5th epoch (a margin step at epoch 4; 5-epoch "
        "runs only)",
        {"loss_conf.margin_scheduler": {"initial_margin": 0.2, "final_margin": 0.4, "start_epoch": 4, "end_epoch": 4}},
    ),
    "t23_subcenter3": _t23_variant(
        "t23_base with 3 sub-centers per class (sub-center AAM)", {"loss_conf.sub_centers": 3}
    ),
    "t23_equalizer": _t23_variant(
        "t23_base with the random equalizer / band limits at p 0.3 (a random channel per crop)",
        augment={"equalizer": {"prob": 0.3}},
    ),
    "t23_speeds5": _t23_variant(
        "t23_base with speeds 0.9 / 0.95 / 1.0 / 1.05 / 1.1, each a speaker of its own (5 x 100 classes)",
        augment={"speed.speeds": [0.9, 0.95, 1.0, 1.05, 1.1]},
    ),
    "t23_lm": _t23_variant(
        "t23_base with large-margin fine-tuning: the last epoch at margin 0.4 on 5 s crops",
        {"train_conf.large_margin_epochs": 1, "train_conf.large_margin": 0.4, "train_conf.large_margin_crop": 5.0},
    ),
    "t23_lm_crop3": _t23_variant(
        "t23_base with the last epoch at margin 0.4 on the usual 3 s crops",
        {"train_conf.large_margin_epochs": 1, "train_conf.large_margin": 0.4, "train_conf.large_margin_crop": None},
    ),
    "t23_intertopk": _t23_variant(
        "t23_base with the inter-top-k penalty: the 5 nearest non-target classes 0.1 harder",
        {"loss_conf.inter_top_k": 5, "loss_conf.inter_margin": 0.1},
    ),
    "t23_pitch": _t23_variant(
        "t23_base with pitch shifts 0.8 / 1.25 (formants kept) at p 0.5 on clips whose speed was kept, each a "
        "speaker of its own (5 x 100 classes)",
        augment={"pitch": {"prob": 0.5, "factors": [0.8, 1.25], "speaker_per_pitch": True}},
    ),
    "t23_cohort_speeds": _t23_variant(
        "t23_base with the AS-norm cohort's clips also at speeds 0.9 and 1.1 (3 x 1,600 cohort rows; the default "
        "since issue 23)",
        {"score_norm_conf.cohort_speeds": [0.9, 1.0, 1.1]},
    ),
    "v0_hop20": Recipe(
        "(a) with a 20 ms frame shift (50 frames/s)", _changed(V0_CONFIG, {"feature_conf.frame_shift": 20}), V0_AUGMENT
    ),
}


def recipe_config(recipe: Recipe) -> dict:
    """The complete configuration mapping of ``recipe`` (the bundled ``ecapa_tdnn.yml`` for ``config=None``)."""
    if isinstance(recipe.config, dict):
        return copy.deepcopy(recipe.config)
    import yaml

    return yaml.safe_load((ROOT / "mvector" / "configs" / f"{recipe.config or 'ecapa_tdnn'}.yml").read_text())


def recipe_augmentation(recipe: Recipe) -> dict | None:
    """The augmentation mapping of ``recipe`` (``None`` for ``"config"``: the config's ``augment_conf`` is used)."""
    if recipe.augmentation == "config":
        if recipe_config(recipe).get("augment_conf"):
            return None
        import yaml

        return yaml.safe_load((ROOT / "mvector" / "configs" / "augmentation.yml").read_text())
    return copy.deepcopy(recipe.augmentation)


class _TimedEvaluation(Callback):
    """Runs the trainer's evaluation callback and adds its wall time to the epoch record (``eval_seconds``)."""

    def __init__(self, inner: EvaluationCallback) -> None:
        self.inner = inner

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        start = time.perf_counter()
        self.inner.on_epoch_end(trainer, epoch, record)
        if "eer" in record:
            record["eval_seconds"] = time.perf_counter() - start


class TimedTrainer(MVectorTrainer):
    """The trainer with each evaluation timed; every epoch record (``history``) has ``seconds`` (training only)."""

    def default_callbacks(self, model_dir, overwrite):
        callbacks = super().default_callbacks(model_dir, overwrite)
        return [_TimedEvaluation(c) if isinstance(c, EvaluationCallback) else c for c in callbacks]

    @property
    def epoch_seconds(self) -> list[float]:
        """Training wall time of each epoch (evaluation and checkpoint saving excluded)."""
        return [float(r["seconds"]) for r in self.history]


def step_seconds(trainer: MVectorTrainer, num_speakers: int, steps: int = 3) -> float:
    """Seconds per training step (featurize + forward + backward + Adam) on random waveforms, median of ``steps``."""
    conf = trainer.configs
    ds = conf["dataset_conf"]
    trainer.num_speakers = num_speakers
    trainer.setup_model()
    embedder, model = trainer.embedding_model, trainer.model
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


def step_time_ratios(names: list[str], batch: int, rounds: int, channels: int = 0) -> dict:
    """Training-step time of each recipe's model (featurizer + backbone + head, Adam; no data loading), on the
    same random 3 s waveforms, interleaved round by round so that a change of machine load hits every recipe
    alike; median over ``rounds`` after one warm-up round, and each recipe's ratio to the first one."""
    built = {}
    for name in names:
        overrides: dict[str, Any] = {"dataset_conf.batch_size": batch}
        if channels:
            overrides["model_conf.channels"] = channels
        trainer = MVectorTrainer(recipe_config(RECIPES[name]), use_gpu=False, overrides=overrides)
        trainer.num_speakers = 100
        seed_everything(0)
        trainer.setup_model()
        built[name] = (trainer, torch.optim.Adam(trainer.model.parameters(), lr=1e-4))
    ds = next(iter(built.values()))[0].configs["dataset_conf"]
    samples = int(ds["max_duration"] * ds["sample_rate"])
    gen = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(batch, samples, generator=gen)
    lengths = torch.full((batch,), samples)
    labels = torch.randint(0, 100, (batch,), generator=gen)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds + 1):
        for name, (trainer, opt) in built.items():
            start = time.perf_counter()
            with torch.no_grad():
                feats, frames = trainer.embedding_model.featurizer(waves, lengths)
            loss, _ = trainer.model(feats, frames, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t[1:])) for name, t in times.items()}
    first = medians[names[0]]
    return {
        "batch": batch,
        "crop_s": samples / ds["sample_rate"],
        "rounds": rounds,
        "step_s": {name: round(m, 3) for name, m in medians.items()},
        "ratio_to_" + names[0]: {name: round(m / first, 3) for name, m in medians.items()},
    }


def untrained_metrics(trainer: MVectorTrainer) -> dict:
    seed_everything(int(trainer.configs["train_conf"]["seed"]))
    model = trainer.build_embedding_model().eval()
    ds = trainer.configs["dataset_conf"]
    evaluator = Evaluator(model, EvalSettings.from_dataset_conf(ds), progress=False)
    return evaluator.evaluate(ds["test_list"], ds["trials_list"], ds["trials_root"], ds["num_eval_trials"])


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


def tail_figures(model_folder: Path, trials_path: Path, rounds: int = 200) -> dict:
    """EER, minDCF(0.01 / 0.001), FRR at FAR 1 % / 0.1 %, each with a 95 % speaker-bootstrap interval, of the model
    in ``model_folder`` on ``trials_path``, scored as the predictor scores (with the folder's stored score
    normalisation when it has one). A trial side's speaker is its file's folder (the corpus layout)."""
    from mvector.embedding.backends import open_backend
    from mvector.evaluation.score_norm import ScoreNorm
    from mvector.evaluation.uncertainty import tail_metrics

    embedder = open_backend(model_folder, "torch")
    norm = ScoreNorm.load(model_folder, embedder.embd_dim)
    trials = read_trials(trials_path)
    paths = sorted({p for _, a, b in trials for p in (a, b)})
    evaluator = Evaluator(embedder, EvalSettings.from_dataset_conf(embedder.config["dataset_conf"]), progress=False)
    emb = evaluator.embed_paths(paths)
    if not emb.ok.all():
        raise RuntimeError(f"unreadable dev files: {emb.unreadable[:3]}")
    index = {p: i for i, p in enumerate(paths)}
    pairs = np.array([(index[a], index[b]) for _, a, b in trials])
    labels = np.array([lab for lab, _, _ in trials])
    scores = cosine_score_trials(emb.vectors, pairs) if norm is None else norm.score_pairs(emb.vectors, pairs)
    spk = [Path(p).parent.name for p in paths]
    m = tail_metrics(scores, labels, [spk[i] for i in pairs[:, 0]], [spk[j] for j in pairs[:, 1]], rounds=rounds)
    out = {k: ([round(x, 5) for x in v] if isinstance(v, list) else round(v, 5)) for k, v in m.items()}
    out["score_type"] = "cosine" if norm is None else "as_norm_model"
    return out


def frames_per_second(conf: Mapping[str, Any]) -> float:
    """Feature frames per second of audio that the featurizer of ``conf`` produces (the backbone's time axis)."""
    fz = build_featurizer(
        conf["preprocess_conf"]["feature_method"], conf.get("feature_conf") or {}, conf["preprocess_conf"]["normalize"]
    )
    rate = int(conf["dataset_conf"]["sample_rate"])
    return float(fz.frame_lengths(torch.tensor([10 * rate]))[0]) / 10.0


def run_recipe(
    name: str,
    recipe: Recipe,
    corpus: Path,
    epochs: int,
    eval_every: int,
    tmp: Path,
    channels: int = 0,
    seed: int | None = None,
    keep_models: Path | None = None,
    pretrained: Path | None = None,
) -> dict:
    """Train ``recipe`` on ``corpus/train_list.txt`` for ``epochs`` and score ``corpus/dev_trials.txt``.

    A ``pretrained`` recipe starts from the weights in the ``pretrained`` folder, as ``train.py
    --pretrained_model`` does.

    ``channels`` > 0 replaces the recipe's ``model_conf.channels`` (a cheaper proxy of the same recipe);
    ``seed`` replaces its ``train_conf.seed`` (initialisation, data order, augmentation draws);
    ``keep_models`` keeps the model folder (with the last 3 epochs' checkpoints) as ``keep_models/<name>``.
    """
    conf = recipe_config(recipe)
    if recipe.pretrained and pretrained is None:
        raise SystemExit(f"--recipes {name}: needs --pretrained DIR (the model folder it starts from)")
    # --channels: a narrower ECAPA; a model without a channels setting (CAM++) keeps its shape
    has_channels = "channels" in (conf.get("model_conf") or {})
    overrides: dict[str, Any] = {"model_conf.channels": channels} if channels and has_channels else {}
    if seed is not None:
        overrides["train_conf.seed"] = seed
    overrides |= {
        "dataset_conf.train_list": str(corpus / "train_list.txt"),
        "dataset_conf.trials_list": str(corpus / "dev_trials.txt"),
        "dataset_conf.num_workers": None,
        "train_conf.max_epoch": epochs,
        "train_conf.eval_interval": eval_every,
        "train_conf.log_backend": "none",
        "train_conf.log_interval": 1000,
        "train_conf.keep_last_epochs": 3 if keep_models else 1,
        "train_conf.log_dir": str(tmp / name / "log"),
    }
    models = (keep_models / name) if keep_models else (tmp / name / "models")
    aug = recipe_augmentation(recipe)
    trainer = TimedTrainer(conf, use_gpu=False, overrides=overrides, augment_conf_path=aug or None)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        result = trainer.train(
            save_model_path=str(models),
            overwrite=keep_models is not None,
            pretrained_model=pretrained if recipe.pretrained else None,
        )
    call_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    tail = tail_figures(Path(result["model_dir"]) / "last_model", corpus / "dev_trials.txt")
    tail_s = time.perf_counter() - t1
    shutil.rmtree(tmp / name, ignore_errors=True)
    evaluated = [r for r in trainer.history if "eer" in r]
    fc = trainer.configs
    return {
        "description": recipe.description,
        **({"pretrained_model": str(pretrained)} if recipe.pretrained else {}),
        **_short(result),
        "tail": tail,
        "tail_eval_s": round(tail_s, 1),
        "eer_per_evaluation": {int(r["epoch"]): round(float(r["eer"]), 5) for r in evaluated},
        "train_wall_s": round(sum(trainer.epoch_seconds), 1),
        "epoch_s": [round(x, 1) for x in trainer.epoch_seconds],
        "eval_s": [round(float(r.get("eval_seconds", 0.0)), 1) for r in evaluated],
        "train_call_s_incl_eval_and_checkpoints": round(call_s, 1),
        "features": {
            "method": fc["preprocess_conf"]["feature_method"],
            "frames_per_second": frames_per_second(fc),
            **{k: v for k, v in (fc.get("feature_conf") or {}).items() if k != "sample_rate"},
        },
        "optimizer_conf": fc["optimizer_conf"],
        "loss_conf": fc["loss_conf"],
        "train_conf": {k: fc["train_conf"][k] for k in ("freeze_backbone_epochs", "freeze_backbone_bn", "head_init")},
        "model_conf": fc["model_conf"],
        "augmentation": fc.get("augment_conf") or None,
    }


def imported_row(folder: Path, trials_path: Path) -> dict:
    """The ``imported`` row: the model folder of ``--pretrained`` scored as it is (no training), the same way as
    the trained rows (``tail_figures``)."""
    t0 = time.perf_counter()
    tail = tail_figures(folder, trials_path)
    return {
        "description": f"the model in --pretrained ({folder}) as it is, no training",
        "eer": tail["eer"],
        "tail": tail,
        "tail_eval_s": round(time.perf_counter() - t0, 1),
    }


def corpus_mode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--corpus DIR``: the named recipes (and the MFCC baseline) at the same budget on a generated corpus."""
    corpus = Path(args.corpus)
    needed = [corpus / n for n in ("train_list.txt", "dev_trials.txt")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        parser.error(f"--corpus {corpus}: missing {', '.join(missing)} (make one with ../shared/tools/corpus)")
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("mfcc", "imported") and n not in RECIPES]
    if unknown or not names:
        parser.error(f"--recipes: unknown {unknown or names}; choose from mfcc, imported, {', '.join(RECIPES)}")
    pretrained = Path(args.pretrained) if args.pretrained else None
    needs = [n for n in names if n == "imported" or (n in RECIPES and RECIPES[n].pretrained)]
    if needs and (pretrained is None or not (pretrained / "model.pt").is_file()):
        parser.error(f"--recipes {','.join(needs)}: needs --pretrained DIR, a model folder (mvector import ...)")
    if args.step_times:
        if args.step_times < 1 or "mfcc" in names or "imported" in names or len(names) < 2:
            parser.error("--step-times N needs N >= 1 and at least two trained recipes (not mfcc) in --recipes")
        if args.threads:
            torch.set_num_threads(args.threads)
        load_start = machine_info(["load_average"])["load_average"]
        result = step_time_ratios(names, args.step_batch, args.step_times, args.channels)
        emit(
            {
                "benchmark": "bench_accuracy --step-times (training step of each recipe's model, interleaved)",
                **result,
                "channels": args.channels or "as in each recipe",
                "machine": {**machine_info(), "load_average_at_start": load_start},
            }
        )
        return
    if args.epochs < 0 or args.eval_every < 0 or args.channels < 0:
        parser.error("--epochs, --eval-every and --channels must be >= 0")
    epochs = args.epochs or 5
    if args.threads:
        torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()
    load_start = machine_info(["load_average"])["load_average"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_accuracy_"))
    rows: dict[str, dict] = {}
    try:
        for name in names:
            t0 = time.perf_counter()
            if name == "mfcc":
                trials = read_trials(corpus / "dev_trials.txt")
                mfcc = {f"n_mfcc_{n}": mfcc_baseline(trials, n) for n in (20, 40)}
                best = min(mfcc.values(), key=lambda m: m["eer"])
                rows[name] = {"description": "MFCC mean+std, untrained (best of 20 / 40 MFCC)", **best, **mfcc}
            elif name == "imported":
                rows[name] = imported_row(pretrained, corpus / "dev_trials.txt")
            else:
                rows[name] = run_recipe(
                    name, RECIPES[name], corpus, epochs, args.eval_every, tmp, args.channels, args.seed,
                    Path(args.keep_models) if args.keep_models else None, pretrained,
                )
            rows[name]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(f"{name}: EER {rows[name]['eer']:.4f} in {rows[name]['wall_s']} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report: dict[str, Any] = {
        "benchmark": f"bench_accuracy --corpus (dev_trials.txt of {corpus})",
        "epochs": epochs,
        "channels": args.channels or "as in each recipe",
        "seed": args.seed if args.seed is not None else "as in each recipe",
        "recipes": rows,
    }
    if "default" in rows and "seed_like" in rows:
        d, b = rows["default"], rows["seed_like"]
        report["figure"] = {"default_eer": d["eer"], "seed_like_eer": b["eer"],
                            "default_min_dcf_0.01": d["tail"]["min_dcf_0.01"],
                            "seed_like_min_dcf_0.01": b["tail"]["min_dcf_0.01"]}  # fmt: skip
        report["ratio_min_dcf_0.01_default_vs_seed_like"] = round(
            d["tail"]["min_dcf_0.01"] / max(b["tail"]["min_dcf_0.01"], 1e-9), 3
        )
        report["ratio_eer_default_vs_seed_like"] = round(d["eer"] / max(b["eer"], 1e-9), 3)
        report["ratio_train_time_default_vs_seed_like"] = round(d["train_wall_s"] / max(b["train_wall_s"], 1e-9), 3)
    if all(n in rows for n in ("campplus_finetune", "imported", "default")):
        report["finetune"] = finetune_figure(rows)
    report["wall_s"] = round(time.perf_counter() - wall_start, 1)
    report["machine"] = {**machine_info(), "load_average_at_start": load_start}
    emit(report)


def finetune_figure(rows: Mapping[str, Mapping[str, Any]]) -> dict:
    """Issue 23 item 3: the fine-tuned model against both its parents (the imported model as it is, the default
    trained from scratch), EER / minDCF(0.01) / FRR at FAR 1 % with their intervals; ``beats_both`` compares the
    EERs."""
    keys = ("eer", "min_dcf_0.01", "frr_at_far_1%")
    out: dict[str, Any] = {
        name: {k: rows[name]["tail"][k] for k in keys} | {f"{k}_ci": rows[name]["tail"][f"{k}_ci"] for k in keys}
        for name in ("campplus_finetune", "imported", "default")
    }
    ft = rows["campplus_finetune"]["tail"]["eer"]
    out["beats_both"] = bool(ft < rows["imported"]["tail"]["eer"] and ft < rows["default"]["tail"]["eer"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget (default 10)")
    parser.add_argument("--epochs", type=int, default=0, help="train exactly this many epochs (ignores --minutes)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch of a tiny model on 128 clips")
    parser.add_argument("--no-noise", action="store_true", help="no additive-noise augmentation")
    parser.add_argument("--speed", action="store_true", help="add speed perturbation (0.95/1.05, same label)")
    parser.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--tts", default=str(CORPUS), help="the shared tts corpus folder (default ../shared/data/tts)")
    parser.add_argument(
        "--corpus",
        default=None,
        help="recipe comparison on this generated corpus (train_list.txt, dev_trials.txt) instead of the "
        "single budgeted run on --tts",
    )
    parser.add_argument(
        "--recipes",
        default="default,seed_like,mfcc",
        help="with --corpus: comma list of recipes to train (mfcc = the untrained MFCC baseline)",
    )
    parser.add_argument(
        "--eval-every", type=int, default=1, help="with --corpus: evaluate every N epochs (0: only at the end)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="with --corpus: train_conf.seed for every recipe (default: the recipe's)"
    )
    parser.add_argument(
        "--channels", type=int, default=0, help="with --corpus: model_conf.channels for every recipe (0: the recipe's)"
    )
    parser.add_argument(
        "--step-times",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="with --corpus: only time a training step of each recipe's model (ROUNDS interleaved rounds, no "
        "training run) and report ratios to the first recipe",
    )
    parser.add_argument(
        "--keep-models", default=None, metavar="DIR",
        help="with --corpus: keep each recipe's model folder as DIR/<recipe>/<Model>_<Feature> (last 3 epochs)",
    )
    parser.add_argument("--step-batch", type=int, default=16, help="batch size of the --step-times steps")
    parser.add_argument(
        "--pretrained", default=None, metavar="DIR",
        help="with --corpus: the model folder that the imported row scores as it is and campplus_finetune starts "
        "from (mvector import campplus_zh_en --output_dir DIR)",
    )
    parser.add_argument("--list-recipes", action="store_true", help="print the recipe names and exit")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value (e.g. model_conf.channels=128)")
    args = parser.parse_args()
    if args.list_recipes:
        for name, recipe in RECIPES.items():
            print(f"{name:18s} {recipe.description}")
        print(f"{'mfcc':18s} MFCC mean+std baseline, untrained")
        print(f"{'imported':18s} the model folder of --pretrained as it is, untrained here")
        return
    if args.corpus is not None:
        if args.overrides or args.quick or args.no_noise or args.speed or args.no_augment:
            parser.error(
                "--corpus runs the named --recipes; overrides, --quick, --no-noise, --speed and "
                "--no-augment belong to the --tts mode"
            )
        corpus_mode(args, parser)
        return
    corpus = Path(args.tts)
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
    probe = TimedTrainer(TTS_MODE_CONFIG, use_gpu=False, overrides=overrides)
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

    trainer = TimedTrainer(TTS_MODE_CONFIG, use_gpu=False, overrides=overrides, augment_conf_path=aug_path)
    if aug_path is None:  # --no-augment: not even the bundled config's own augment_conf
        trainer.configs["augment_conf"] = {}
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
