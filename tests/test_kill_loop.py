"""Crash consistency of training's checkpoints: SIGKILL real `mvector train` processes at twelve points of their
saves, resume each time, and check after every kill that best_model is the best on disk, that every checkpoint
folder is complete, and that what the previous kill left is gone; plus the start-up repairs one by one."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import kill_loop
import pytest
import torch

from mvector.checkpoint import (
    PAUSE_POINTS,
    TEST_PAUSE_ENV,
    clone_checkpoint,
    load_checkpoint,
    recorded_eer,
    repair_model_folder,
    save_checkpoint,
)
from mvector.training.callbacks import CheckpointCallback

needs_sigkill = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL") or "forkserver" not in __import__("multiprocessing").get_all_start_methods(),
    reason="needs SIGKILL and the forkserver start method (POSIX)",
)


@pytest.mark.slow
@needs_sigkill
def test_twelve_save_time_kills_keep_best_model_the_best_and_leave_nothing_behind(tmp_path):
    report = kill_loop.run_series(tmp_path)
    summary = kill_loop.summary(report)
    kills = report.observations
    assert len(kills) == 12, summary
    # SIGKILL during the 2nd, 3rd and 4th best_model save of an improving run.
    assert {o.best_save_number for o in kills if o.kill.folder == "best_model"} == {2, 3, 4}, summary
    for obs in kills:
        assert obs.stale_best is None, summary
        assert obs.incomplete == [], summary
        assert obs.stale_leftovers == [], summary  # the previous kill's leftovers are gone by this kill
        assert obs.missing_epochs == [], summary
    assert report.final_leftovers == [] and report.final_incomplete == [], summary
    epochs = kill_loop.EPOCHS
    assert report.final_names == ["best_model", f"epoch_{epochs - 1}", f"epoch_{epochs}", "last_model"], summary
    # Resume is exact, so twelve kills later the run ends with the very weights of the uninterrupted one.
    assert report.same_best_as_reference and report.same_last_as_reference, summary


def _state(seed: float = 1.0) -> dict:
    return dict(
        model_state={"w": torch.full((2,), seed)},
        head_state={"h": torch.zeros(2, 2)},
        optimizer_state={"state": {}, "param_groups": []},
        scheduler_state={"last_epoch": 0},
        config={"use_model": "TDNN"},
        step=0,
    )


def _save(folder: Path, epoch: int, eer: float, best: float) -> Path:
    return save_checkpoint(folder, **_state(epoch), epoch=epoch, best_eer=best, result={"eer": eer, "epoch": epoch})


class _Trainer:
    """What CheckpointCallback.on_train_start reads of a resumed trainer."""

    def __init__(self, best_eer: float | None) -> None:
        self.resumed_from = Path("last_model")
        self.best_eer = best_eer
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_start_up_puts_back_the_better_model_an_old_release_left_in_an_epoch_folder(tmp_path):
    # The layout of the bug: last_model says best 0.40, best_model still holds the 0.435 epoch.
    _save(tmp_path / "best_model", 1, 0.435, 0.435)
    _save(tmp_path / "epoch_2", 2, 0.40, 0.40)
    _save(tmp_path / "epoch_3", 3, 0.45, 0.40)
    _save(tmp_path / "last_model", 3, 0.45, 0.40)
    trainer = _Trainer(0.40)
    CheckpointCallback(tmp_path, keep_last=2).on_train_start(trainer)
    assert recorded_eer(tmp_path / "best_model") == 0.40
    assert load_checkpoint(tmp_path / "best_model").epoch == 2
    assert trainer.best_eer == 0.40
    assert any("best_model (EER 0.4350) replaced by epoch_2" in line for line in trainer.lines)


def test_start_up_takes_best_models_eer_when_a_kill_came_between_best_and_last(tmp_path):
    _save(tmp_path / "best_model", 4, 0.30, 0.30)  # saved; the kill came before last_model of epoch 4
    _save(tmp_path / "last_model", 3, 0.35, 0.35)
    clone_checkpoint(tmp_path / "last_model", tmp_path / "epoch_3")
    trainer = _Trainer(0.35)
    CheckpointCallback(tmp_path, keep_last=2).on_train_start(trainer)
    assert trainer.best_eer == 0.30  # epoch 4, redone, must tie it to replace best_model
    assert load_checkpoint(tmp_path / "best_model").epoch == 4


def test_start_up_writes_the_missing_snapshot_and_removes_every_leftover(tmp_path):
    _save(tmp_path / "last_model", 5, 0.3, 0.3)
    _save(tmp_path / "best_model", 5, 0.3, 0.3)
    _save(tmp_path / "epoch_4", 4, 0.31, 0.31)
    for name in (".best_model.tmp", ".epoch_2.deleting", ".epoch_6.tmp", ".last_model.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.pt").write_bytes(b"half")
    trainer = _Trainer(0.3)
    CheckpointCallback(tmp_path, keep_last=2).on_train_start(trainer)
    assert sorted(os.listdir(tmp_path)) == ["best_model", "epoch_4", "epoch_5", "last_model"]
    snapshot = load_checkpoint(tmp_path / "epoch_5", need_training_state=True)
    assert snapshot.epoch == 5 and (tmp_path / "epoch_5" / "result.json").is_file()
    assert len([line for line in trainer.lines if line.startswith("note: removed")]) == 4


def test_repair_puts_back_an_old_folder_whose_swap_was_cut_between_the_renames(tmp_path):
    _save(tmp_path / "last_model", 2, 0.3, 0.3)
    os.rename(tmp_path / "last_model", tmp_path / "last_model.old")
    (tmp_path / ".last_model.tmp").mkdir()
    notes = repair_model_folder(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["last_model"] and load_checkpoint(tmp_path / "last_model").epoch == 2
    assert len(notes) == 2


def test_result_json_is_in_the_folder_before_it_appears_and_clones_share_the_files(tmp_path):
    path = _save(tmp_path / "best_model", 3, 0.25, 0.25)
    assert json.loads((path / "result.json").read_text())["eer"] == 0.25
    copy = clone_checkpoint(path, tmp_path / "last_model")
    assert sorted(os.listdir(copy)) == sorted(os.listdir(path))
    if os.stat(copy / "model.pt").st_nlink > 1:  # hard links where the file system has them
        assert os.path.samefile(copy / "model.pt", path / "model.pt")
    assert load_checkpoint(copy, need_training_state=True).epoch == 3


def test_the_pause_hook_is_inert_without_its_variable_and_ignores_other_folders(tmp_path, monkeypatch):
    monkeypatch.delenv(TEST_PAUSE_ENV, raising=False)
    _save(tmp_path / "best_model", 1, 0.5, 0.5)  # would sleep at every point if the hook were live
    monkeypatch.setenv(TEST_PAUSE_ENV, "epoch_9:swapped:1")
    _save(tmp_path / "epoch_8", 8, 0.5, 0.5)
    assert "swapped" in PAUSE_POINTS and load_checkpoint(tmp_path / "epoch_8").epoch == 8


def test_overwrite_removes_the_old_run_through_hidden_names(tmp_path):
    _save(tmp_path / "best_model", 1, 0.5, 0.5)
    _save(tmp_path / "last_model", 1, 0.5, 0.5)
    trainer = SimpleNamespace(resumed_from=None, log=lambda message: None)
    CheckpointCallback(tmp_path, keep_last=2, overwrite=True).on_train_start(trainer)
    assert os.listdir(tmp_path) == []
