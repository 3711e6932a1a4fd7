"""End-to-end training and evaluation on CPU: CLI scripts, resume exactness, torchrun DDP, bad data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import TINY_TRAINING, recomputed_eer

import mvector.data.dataset as dataset_module
from mvector.data.synthetic import generate_corpus
from mvector.errors import AudioError, CheckpointError, DataListError
from mvector.training.trainer import MVectorTrainer

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    **TINY_TRAINING,
    "train_conf.max_epoch": "2",
    "train_conf.log_interval": "2",
    "train_conf.log_backend": "none",
    "loss_conf.margin_scheduler.end_epoch": "1",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    train = generate_corpus(root / "train", 6, 6, seed=0, min_duration=1.0, max_duration=1.6)
    test = generate_corpus(root / "test", 4, 4, seed=1, min_duration=1.0, max_duration=1.6)
    return {"train": train, "test": test, "root": root}


def _overrides(corpus, **extra):
    out = dict(
        SMALL, **{"dataset_conf.train_list": str(corpus["train"]), "dataset_conf.test_list": str(corpus["test"])}
    )
    out.update({k: str(v) for k, v in extra.items()})
    return out


def _cli(args, cwd, env_extra=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return proc


@pytest.mark.slow
def test_train_and_eval_scripts_end_to_end(corpus, tmp_path):
    flags = [f"--{k}={v}" for k, v in _overrides(corpus).items()]
    save = tmp_path / "models"
    proc = _cli(
        [
            str(ROOT / "train.py"),
            "--configs",
            "ecapa_tdnn",
            "--use_gpu",
            "False",
            "--save_model_path",
            str(save),
            *flags,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    model_dir = save / "EcapaTdnn_MelSpectrogram"
    for name in ("best_model", "last_model", "epoch_1", "epoch_2"):
        assert (model_dir / name / "model.pt").is_file(), name
    assert "samples/s" in proc.stdout and "ETA" in proc.stdout
    proc = _cli(
        [
            str(ROOT / "eval.py"),
            "--configs",
            "ecapa_tdnn",
            "--use_gpu",
            "False",
            "--resume_model",
            str(model_dir / "best_model"),
            "--save_image_path",
            str(tmp_path / "img"),
            *flags,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((model_dir / "best_model" / "result.json").read_text())
    for key in ("eer", "min_dcf", "min_dcf_0.05", "threshold", "tpr", "fpr", "num_trials"):
        assert key in result
    assert result["num_trials"] == 16 * 15 // 2
    assert result["eer"] == pytest.approx(recomputed_eer(model_dir / "best_model", corpus["test"]), abs=1e-6)
    assert (tmp_path / "img" / "EcapaTdnn_MelSpectrogram_det.png").stat().st_size > 1000


def test_resume_continues_exactly(corpus, tmp_path):
    full = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=_overrides(corpus))
    full.train(save_model_path=tmp_path / "full")
    resumed = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=_overrides(corpus))
    full_dir = tmp_path / "full" / "EcapaTdnn_MelSpectrogram"
    resumed.train(save_model_path=tmp_path / "resumed", resume_model=full_dir / "epoch_1")
    a = torch.load(tmp_path / "full" / "EcapaTdnn_MelSpectrogram" / "last_model" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "EcapaTdnn_MelSpectrogram" / "last_model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())
    assert worst <= 1e-6
    state = json.loads((tmp_path / "resumed" / "EcapaTdnn_MelSpectrogram" / "last_model" / "state.json").read_text())
    assert state["epoch"] == 2


def test_resume_refuses_other_model_config(corpus, tmp_path):
    MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=_overrides(corpus, **{"train_conf.max_epoch": 1})).train(
        save_model_path=tmp_path
    )
    other = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=_overrides(corpus, **{"model_conf.channels": 48}))
    with pytest.raises(CheckpointError, match="channels"):
        other.train(save_model_path=tmp_path / "x", resume_model=tmp_path / "EcapaTdnn_MelSpectrogram" / "last_model")


@pytest.mark.slow
def test_torchrun_two_processes_gloo(corpus, tmp_path):
    flags = [f"--{k}={v}" for k, v in _overrides(corpus, **{"train_conf.max_epoch": 1}).items()]
    proc = _cli(
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            str(ROOT / "train.py"),
            "--configs",
            "ecapa_tdnn",
            "--use_gpu",
            "False",
            "--save_model_path",
            str(tmp_path),
            *flags,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout
    # 36 utterances / 2 ranks = 18 each → 2 batches of 8 per rank
    assert "step 2/2" in proc.stdout
    assert (tmp_path / "EcapaTdnn_MelSpectrogram" / "last_model" / "model.pt").is_file()


def _absolute_rows(corpus) -> list[str]:
    """The training list's lines with absolute paths, so a rewritten copy can live anywhere."""
    base = Path(corpus["train"]).parent
    rows = []
    for line in Path(corpus["train"]).read_text().splitlines():
        path, label = line.split("\t")
        rows.append(f"{base / path}\t{label}")
    return rows


def test_unreadable_file_mid_epoch_is_skipped_and_reported(corpus, tmp_path, monkeypatch, capsys):
    # The file passes the start-up checks (header readable, long enough) and only fails when decoded during the
    # epoch, as a file damaged or removed after training started does.
    rows = _absolute_rows(corpus)
    bad_path = rows[0].split("\t")[0]
    (tmp_path / "list.txt").write_text("\n".join(rows) + "\n")
    real_load = dataset_module.load_audio

    def failing_load(source, *args, **kwargs):
        if str(source) == bad_path:
            raise AudioError(f"{source}: decoding failed (simulated damage)")
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "load_audio", failing_load)
    trainer = MVectorTrainer(
        "ecapa_tdnn",
        use_gpu=False,
        overrides=_overrides(corpus, **{"dataset_conf.train_list": tmp_path / "list.txt", "train_conf.max_epoch": 1}),
    )
    result = trainer.train(save_model_path=tmp_path / "m")
    out = capsys.readouterr().out
    assert "skipped 1 unreadable files" in out and bad_path in out and "simulated damage" in out
    assert np.isfinite(result["eer"])  # the epoch finished and was evaluated


def test_label_out_of_range_names_the_line(corpus, tmp_path):
    rows = _absolute_rows(corpus)
    rows[3] = rows[3].rsplit("\t", 1)[0] + "\t99"
    (tmp_path / "list.txt").write_text("\n".join(rows) + "\n")
    trainer = MVectorTrainer(
        "ecapa_tdnn",
        use_gpu=False,
        overrides=_overrides(
            corpus, **{"dataset_conf.train_list": tmp_path / "list.txt", "dataset_conf.num_speakers": 6}
        ),
    )
    with pytest.raises(DataListError, match="line 4"):
        trainer.train(save_model_path=tmp_path / "m")


def test_trial_file_evaluation_scores_every_listed_trial(corpus, tmp_path):
    # Trial-file evaluation path (label enroll test, relative paths).
    test_list = Path(corpus["test"])
    rows = [line.split("\t") for line in test_list.read_text().splitlines()]
    trials = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            trials.append(f"{int(rows[i][1] == rows[j][1])} {rows[i][0]} {rows[j][0]}")
    (test_list.parent / "trials.txt").write_text("\n".join(trials) + "\n")
    trainer = MVectorTrainer(
        "ecapa_tdnn",
        use_gpu=False,
        overrides=_overrides(
            corpus, **{"dataset_conf.trials_list": test_list.parent / "trials.txt", "train_conf.max_epoch": 1}
        ),
    )
    result = trainer.train(save_model_path=tmp_path)
    assert result["num_trials"] == len(trials)
    assert np.isfinite(result["eer"])


def test_pretrained_model_lists_skipped_weights_and_augmentation_runs(corpus, tmp_path, capsys):
    first = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=_overrides(corpus, **{"train_conf.max_epoch": 1}))
    first.train(save_model_path=tmp_path / "a")
    capsys.readouterr()
    # Another speaker count: the backbone loads, the classifier head does not fit and must be listed as skipped.
    aug = tmp_path / "aug.yml"
    aug.write_text(
        "speed: {prob: 0.5}\nvolume: {prob: 0.5}\nnoise: {prob: 0.5, noise_dir: "
        + str(tmp_path / "no_noise_here")
        + "}\nspec_aug: {prob: 1.0}\n"
    )
    second = MVectorTrainer(
        "ecapa_tdnn",
        use_gpu=False,
        overrides=_overrides(corpus, **{"train_conf.max_epoch": 1, "dataset_conf.num_speakers": 8}),
        augment_conf_path=aug,
    )
    with pytest.warns(UserWarning, match="no_noise_here"):
        pretrained = tmp_path / "a" / "EcapaTdnn_MelSpectrogram" / "last_model"
        second.train(save_model_path=tmp_path / "b", pretrained_model=pretrained)
    out = capsys.readouterr().out
    assert "pretrained" in out and "loaded" in out
    assert re.search(r"loaded [1-9][0-9]* backbone tensors", out)
    # 6 speakers × 3 speed groups (the default trains speeds as speakers) against 8 speakers (labels kept here)
    assert "skipped head.weight: shape (18, 32) != (8, 32)" in out
