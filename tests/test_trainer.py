"""MVectorTrainer (mvector.training.trainer): a backbone added through the registry trains; the trainer runs in
phases with callbacks and returns a history; resuming keeps the run's augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mvector.config import load_config
from mvector.data.synthetic import generate_corpus
from mvector.models import BACKBONES, build_backbone
from mvector.training.callbacks import Callback
from mvector.training.trainer import MVectorTrainer

ROOT = Path(__file__).resolve().parents[1]
TINY_TDNN = {"channels": 16, "stats_channels": 32, "embd_dim": 8}


class ToyBackbone(nn.Module):
    """A linear layer per frame and a length-masked mean: the smallest thing that is a backbone."""

    def __init__(self, input_size: int, embd_dim: int = 8, hidden: int = 16):
        super().__init__()
        self.embd_dim = embd_dim
        self.proj = nn.Sequential(nn.Linear(input_size, hidden), nn.ReLU(), nn.Linear(hidden, embd_dim))

    def forward(self, features, lengths=None):
        mask = torch.ones(features.shape[:2], device=features.device)
        if lengths is not None:
            mask = (torch.arange(features.shape[1], device=features.device)[None] < lengths[:, None]).float()
        pooled = (features * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.proj(pooled)


@pytest.fixture
def toy_registered():
    BACKBONES.register("ToyNet", aliases=("toy",))(ToyBackbone)
    yield
    BACKBONES.remove("ToyNet")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    train = generate_corpus(
        folder / "train", num_speakers=4, utterances_per_speaker=4, min_duration=1.0, max_duration=1.5
    )
    test = generate_corpus(
        folder / "test", num_speakers=3, utterances_per_speaker=2, min_duration=1.0, max_duration=1.2, seed=1
    )
    return train, test


def small_config(corpus, name: str, model_conf: dict, **extra) -> dict:
    """A bundled config made tiny: the given backbone widths, 24 mel bins, batches of 4, one epoch, no logs."""
    train, test = corpus
    conf = load_config(name, validate=False)
    conf["model_conf"] = dict(model_conf)
    mel_key = "n_mels" if conf["preprocess_conf"]["feature_method"] == "MelSpectrogram" else "num_mel_bins"
    overrides = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.test_list": str(test),
        "dataset_conf.batch_size": 4,
        "dataset_conf.max_duration": 1.0,
        f"feature_conf.{mel_key}": 24,
        "train_conf.max_epoch": 1,
        "train_conf.log_backend": "none",
        **extra,
    }
    return load_config(conf, overrides, validate=False)


def test_a_toy_backbone_added_through_the_registry_trains_one_step(toy_registered, corpus):
    assert "toy" in BACKBONES and build_backbone("toynet", 24).embd_dim == 8
    conf = small_config(corpus, "ecapa_tdnn", {"embd_dim": 8, "hidden": 16}, use_model="ToyNet")
    trainer = MVectorTrainer(conf, use_gpu=False)
    trainer.setup_data()
    trainer.setup_model()
    trainer.setup_optimizer()
    before = [p.detach().clone() for p in trainer.model.backbone.parameters()]
    from mvector.training.trainer import StepInfo

    info = StepInfo(epoch=1, max_epoch=1, steps=trainer.steps_per_epoch)
    trainer.train_step(next(iter(trainer.loader)), info)
    after = list(trainer.model.backbone.parameters())
    assert info.step == 1 and trainer.global_step == 1 and torch.isfinite(torch.as_tensor(info.loss_sum))
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "one step must change the weights"


def test_train_returns_a_history_and_callbacks_see_every_step(corpus, tmp_path):
    class Count(Callback):
        steps = epochs = 0

        def on_step_end(self, trainer, info):
            self.steps += 1

        def on_epoch_end(self, trainer, epoch, record):
            self.epochs += 1

    counter = Count()
    conf = small_config(corpus, "tdnn", TINY_TDNN, **{"train_conf.max_epoch": 2})
    trainer = MVectorTrainer(conf, use_gpu=False, callbacks=[counter])
    result = trainer.train(save_model_path=tmp_path)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    assert all("train_loss" in r and "eer" in r for r in result["history"])
    assert counter.epochs == 2 and counter.steps == 2 * trainer.steps_per_epoch
    assert result["eer"] == result["history"][-1]["eer"]


def test_resume_without_the_flag_keeps_the_augmentation_the_run_started_with(corpus, tmp_path):
    augment = ROOT / "mvector" / "configs" / "augmentation.yml"
    conf = small_config(corpus, "tdnn", TINY_TDNN)
    first = MVectorTrainer(conf, use_gpu=False, augment_conf_path=augment)
    assert first.configs["augment_conf"]["speed"]["prob"] > 0
    first.train(save_model_path=tmp_path)
    last = Path(tmp_path) / first.model_name / "last_model"
    resumed = MVectorTrainer(conf, use_gpu=False, overrides={"train_conf.max_epoch": 2})
    assert not resumed.configs["augment_conf"]  # nothing given on the command line...
    resumed.train(save_model_path=tmp_path, resume_model=last)
    assert resumed.configs["augment_conf"] == first.configs["augment_conf"]  # ...the run's own is used
    assert resumed.dataset.augmenter is not None and resumed.spec_aug is not None

