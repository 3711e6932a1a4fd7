"""train_conf.gpu_augment: augmentation as batched operations on the training device (tested here on the CPU)."""

from __future__ import annotations

import torch

from mvector.config import load_config
from mvector.data.synthetic import generate_corpus
from mvector.training.trainer import MVectorTrainer, StepInfo


def test_device_augmentation_replaces_the_workers_augmentation_and_trains(tmp_path):
    train = generate_corpus(tmp_path / "train", num_speakers=3, utterances_per_speaker=4, max_duration=2.0)
    conf = load_config("tdnn", validate=False)
    conf["model_conf"] = {"channels": 16, "stats_channels": 32, "embd_dim": 8}
    conf["augment_conf"] = {"speed": {"prob": 1.0, "speeds": [0.9, 1.1]}, "volume": {"prob": 0.5}}
    overrides = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.batch_size": 4,
        "dataset_conf.max_duration": 1.0,
        "feature_conf.num_mel_bins": 24,
        "train_conf.gpu_augment": True,
    }
    trainer = MVectorTrainer(load_config(conf, overrides), use_gpu=False)
    trainer.setup_data()
    assert trainer.gpu_aug is not None and trainer.dataset.augmenter is None  # workers only decode and crop
    assert trainer.dataset.max_duration == 1.0 * trainer.gpu_aug.max_speed  # a sped-up clip still fills the crop
    trainer.setup_model()
    trainer.setup_optimizer()
    record = trainer.train_epoch(1)
    assert record["train_loss"] > 0 and torch.isfinite(torch.tensor(record["train_loss"]))
    info = StepInfo(epoch=1, max_epoch=1, steps=trainer.steps_per_epoch)
    trainer.train_step(next(iter(trainer.loader)), info)
    assert info.step == 1

    auto = MVectorTrainer(load_config(conf, {**overrides, "train_conf.gpu_augment": "auto"}), use_gpu=False)
    auto.setup_data()
    assert auto.gpu_aug is None and auto.dataset.augmenter is not None  # auto: on CUDA only


def test_a_step_before_any_epoch_runs_with_device_augmentation(tmp_path):
    train = generate_corpus(tmp_path / "train", num_speakers=2, utterances_per_speaker=2, max_duration=1.5)
    conf = load_config("tdnn", validate=False)
    conf["model_conf"] = {"channels": 16, "stats_channels": 32, "embd_dim": 8}
    conf["augment_conf"] = {"speed": {"prob": 1.0, "speeds": [0.9, 1.1]}}
    overrides = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.batch_size": 2,
        "dataset_conf.max_duration": 1.0,
        "feature_conf.num_mel_bins": 24,
        "train_conf.gpu_augment": True,
    }
    trainer = MVectorTrainer(load_config(conf, overrides), use_gpu=False)
    trainer.setup_data()
    trainer.setup_model()
    trainer.setup_optimizer()
    info = StepInfo(epoch=1, max_epoch=1, steps=trainer.steps_per_epoch)
    trainer.train_step(next(iter(trainer.loader)), info)  # benchmarks call train_step without train_epoch
    assert info.step == 1
