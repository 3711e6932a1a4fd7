"""A tiny trainer on generated speakers, shared by the issue-23 tests (tests/test_tail_*.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mvector.config import load_config
from mvector.data.synthetic import generate_corpus
from mvector.training.trainer import MVectorTrainer


def tiny_trainer(folder: Path, max_clip: float = 1.5, conf_changes: dict | None = None, **overrides: Any):
    """An ``MVectorTrainer`` for a 16-channel TDNN on 3 generated speakers x 4 clips (up to ``max_clip`` s) in
    ``folder``; ``conf_changes`` replaces whole sections, ``overrides`` are dotted keys. Nothing is set up yet."""
    train = generate_corpus(folder / "train", num_speakers=3, utterances_per_speaker=4, max_duration=max_clip)
    conf = load_config("tdnn", validate=False)
    conf["model_conf"] = {"channels": 16, "stats_channels": 32, "embd_dim": 8}
    conf.update(conf_changes or {})
    base = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.batch_size": 4,
        "dataset_conf.max_duration": 1.0,
        "feature_conf.num_mel_bins": 24,
    }
    return MVectorTrainer(load_config(conf, {**base, **overrides}), use_gpu=False)
