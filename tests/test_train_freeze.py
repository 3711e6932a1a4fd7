"""train_conf.freeze_backbone_epochs: the first epochs train the head only (fine-tuning a pretrained model)."""

from __future__ import annotations

import torch

from mvector.config import load_config
from mvector.data.synthetic import generate_corpus
from mvector.training.trainer import MVectorTrainer


def test_frozen_epochs_leave_the_backbone_and_its_statistics_untouched(tmp_path):
    train = generate_corpus(tmp_path / "train", num_speakers=3, utterances_per_speaker=4, max_duration=1.5)
    conf = load_config("tdnn", validate=False)
    conf["model_conf"] = {"channels": 16, "stats_channels": 32, "embd_dim": 8}
    overrides = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.batch_size": 4,
        "dataset_conf.max_duration": 1.0,
        "feature_conf.num_mel_bins": 24,
        "train_conf.freeze_backbone_epochs": 1,
    }
    trainer = MVectorTrainer(load_config(conf, overrides, validate=False), use_gpu=False)
    trainer.setup_data()
    trainer.setup_model()
    trainer.setup_optimizer()
    backbone = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    head = {k: v.clone() for k, v in trainer.head.state_dict().items()}
    trainer.train_epoch(1)
    assert all(torch.equal(v, trainer.model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert any(not torch.equal(v, trainer.head.state_dict()[k]) for k, v in head.items())
    trainer.train_epoch(2)  # after the frozen epochs everything trains
    assert any(not torch.equal(v, trainer.model.backbone.state_dict()[k]) for k, v in backbone.items())
