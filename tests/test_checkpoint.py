"""Checkpoint folders: atomic save under crashes, safe loading, fingerprints, RNG state, pruning, partial loads."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mvector.checkpoint as ckpt_mod
from mvector.checkpoint import (
    capture_rng_state,
    file_sha256,
    load_checkpoint,
    load_matching_weights,
    model_fingerprint,
    prune_epoch_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from mvector.errors import CheckpointError

CONFIG = {"use_model": "TDNN", "dataset_conf": {"batch_size": 4}, "model_conf": {"embd_dim": 8}}


def tiny_training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    head = torch.nn.Linear(8, 3)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    loss = head(model(torch.randn(4, 6))).logsumexp(1).mean()
    loss.backward()
    opt.step()
    sched.step()
    return model, head, opt, sched


def save_full(directory: Path, epoch: int = 2, **overrides) -> Path:
    model, head, opt, sched = tiny_training_state()
    kwargs = dict(
        model_state=model.state_dict(),
        head_state=head.state_dict(),
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
        rng_state=capture_rng_state(),
        config=CONFIG,
        epoch=epoch,
        step=10 * epoch,
        best_eer=0.125,
        extra={"num_speakers": 3},
    )
    kwargs.update(overrides)
    return save_checkpoint(directory, **kwargs)


def test_round_trip_resumes_training_state(tmp_path: Path) -> None:
    path = save_full(tmp_path / "models" / "TDNN_Fbank" / "last_model")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.yml",
        "head.pt",
        "model.pt",
        "optimizer.pt",
        "rng.pt",
        "scheduler.pt",
        "state.json",
    ]
    ck = load_checkpoint(path, need_training_state=True)
    model, head, opt, sched = tiny_training_state()
    for name, value in model.state_dict().items():
        assert torch.equal(ck.model_state[name], value)
    fresh_model, fresh_head, fresh_opt, fresh_sched = tiny_training_state(seed=5)
    fresh_model.load_state_dict(ck.model_state)
    fresh_head.load_state_dict(ck.head_state)
    fresh_opt.load_state_dict(ck.optimizer_state)
    fresh_sched.load_state_dict(ck.scheduler_state)
    assert fresh_sched.last_epoch == sched.last_epoch == 1
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert (ck.epoch, ck.step, ck.best_eer, ck.extra) == (2, 20, 0.125, {"num_speakers": 3})
    assert ck.config == CONFIG and ck.scaler_state is None
    state = json.loads((path / "state.json").read_text())
    assert state["model_sha256"] == file_sha256(path / "model.pt") == model_fingerprint(path)
    assert state["library_version"] and state["timestamp"] > 0
    # without need_training_state the optimizer and scheduler are not read
    light = load_checkpoint(path / "model.pt")
    assert light.optimizer_state is None and light.head_state is not None


def test_config_is_stored_as_plain_yaml(tmp_path: Path) -> None:
    conf = {"dataset_conf": {"train_list": Path("/data/list.txt"), "rates": (8000, 16000), "lr": np.float32(0.5)}}
    path = save_checkpoint(tmp_path / "c", model_state={}, config=conf, epoch=0, step=0, best_eer=float("nan"))
    stored = yaml.safe_load((path / "config.yml").read_text())
    assert stored == {"dataset_conf": {"train_list": "/data/list.txt", "rates": [8000, 16000], "lr": 0.5}}
    assert load_checkpoint(path).best_eer is None


def test_truncated_model_is_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    path = save_full(tmp_path / "ck")
    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt: damaged \(truncated or not a checkpoint\)") as info:
        load_checkpoint(path)
    assert str(path / "model.pt") in str(info.value)
    (path / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model\.pt: damaged"):
        load_checkpoint(path)


def test_fingerprint_mismatch_is_detected(tmp_path: Path) -> None:
    path = save_full(tmp_path / "ck")
    state = torch.load(path / "model.pt", weights_only=True)
    state["0.weight"] = state["0.weight"] + 1.0
    torch.save(state, path / "model.pt")  # a valid file, but not the one that was saved
    with pytest.raises(CheckpointError, match=r"model\.pt: does not match the fingerprint in state\.json"):
        load_checkpoint(path)
    path2 = save_full(tmp_path / "ck2")
    torch.save({"lr": 1.0}, path2 / "optimizer.pt")
    load_checkpoint(path2)  # the optimizer is not read here ...
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: does not match"):
        load_checkpoint(path2, need_training_state=True)  # ... but is checked when it is


class NotATensor:
    pass


def test_only_weights_only_content_is_loaded(tmp_path: Path) -> None:
    path = save_full(tmp_path / "ck")
    torch.save({"w": NotATensor()}, path / "model.pt")
    state = json.loads((path / "state.json").read_text())
    state["model_sha256"] = state["files"]["model.pt"] = file_sha256(path / "model.pt")
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"model\.pt: holds objects other than tensors.*refusing"):
        load_checkpoint(path)


def test_missing_parts(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")
    path = save_full(tmp_path / "ck")
    (path / "optimizer.pt").unlink()
    load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: missing; this checkpoint cannot resume training"):
        load_checkpoint(path, need_training_state=True)
    (path / "head.pt").unlink()
    with pytest.raises(CheckpointError, match=r"head\.pt: missing"):
        load_checkpoint(path)  # listed in state.json, so its absence is damage
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state\.json: damaged"):
        load_checkpoint(path)
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"state\.json: missing; .* is not an mvector checkpoint folder"):
        load_checkpoint(path)


def test_crash_while_writing_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "last_model"
    save_full(folder, epoch=1)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "param_groups" in obj:
            raise KeyboardInterrupt("killed while writing optimizer.pt")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_full(folder, epoch=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / ".last_model.tmp").exists()  # the half-written new one
    assert load_checkpoint(folder, need_training_state=True).epoch == 1
    save_full(folder, epoch=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_model"]  # leftovers cleaned by the next save
    assert load_checkpoint(folder).epoch == 3


def test_crash_between_the_renames_is_recovered(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "best_model"
    save_full(folder, epoch=1)
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        os.rename(src, dst)

    monkeypatch.setattr(ckpt_mod, "_rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_full(folder, epoch=2)
    monkeypatch.setattr(ckpt_mod, "_rename", os.rename)
    assert not folder.exists() and (tmp_path / "best_model.old").is_dir()
    ck = load_checkpoint(folder)  # reads the intact previous checkpoint, changes nothing
    assert ck.epoch == 1 and (tmp_path / "best_model.old").is_dir()
    save_full(folder, epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]
    assert load_checkpoint(folder).epoch == 2


_PARTS = 6
_PART_SIZE = 20_000  # below torch's parallel grain: the forked child never enters an OpenMP region


def _save_forever(folder: Path, ready_fd: int) -> None:
    torch.set_num_threads(1)
    epoch = 1
    while True:
        save_checkpoint(
            folder,
            model_state={f"w{i}": torch.full((_PART_SIZE,), float(epoch)) for i in range(_PARTS)},
            head_state={"h": torch.full((3,), float(epoch))},
            config={"epoch": epoch},
            epoch=epoch,
            step=epoch,
            best_eer=None,
        )
        if epoch == 1:
            os.write(ready_fd, b"1")
        epoch += 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_while_saving_in_a_loop_always_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "last_model"
    rng = random.Random(0)
    epochs = []
    for _ in range(6):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child process
            try:
                os.close(read_fd)
                _save_forever(folder, write_fd)
            finally:
                os._exit(0)
        os.close(write_fd)
        try:
            ready, _, _ = select.select([read_fd], [], [], 30.0)
            assert ready and os.read(read_fd, 1) == b"1", "the saving child never completed a first save"
            time.sleep(rng.uniform(0.0, 0.2))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
        ck = load_checkpoint(folder)
        value = float(ck.model_state["w0"][0])
        for i in range(_PARTS):
            assert torch.equal(ck.model_state[f"w{i}"], torch.full((_PART_SIZE,), value))
        assert ck.head_state["h"].tolist() == [value] * 3
        assert ck.epoch == value == ck.config["epoch"]
        epochs.append(ck.epoch)
    assert max(epochs) > 1  # the kills landed after several saves, not only after the first


def test_rng_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in Python's generator
    np.random.randn()
    state = capture_rng_state()
    first = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    path = save_checkpoint(
        tmp_path / "r",
        model_state={},
        optimizer_state={},
        scheduler_state={},
        rng_state=state,
        config={},
        epoch=0,
        step=0,
        best_eer=None,
    )
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    restore_rng_state(load_checkpoint(path, need_training_state=True).rng_state)
    again = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    assert again == first
    with pytest.raises(CheckpointError, match="damaged RNG state"):
        restore_rng_state({"python_state": torch.zeros(3)})


def test_prune_keeps_the_last_n(tmp_path: Path) -> None:
    for n in (1, 2, 3, 9, 10, 11):
        save_checkpoint(tmp_path / f"epoch_{n}", model_state={}, config={}, epoch=n, step=n, best_eer=None)
    (tmp_path / "best_model").mkdir()
    (tmp_path / "epoch_x").mkdir()
    # an interrupted save of epoch 12 (only the .old copy left) and of epoch 11 (a half-written tmp)
    save_checkpoint(tmp_path / "epoch_12", model_state={}, config={}, epoch=12, step=12, best_eer=None)
    os.rename(tmp_path / "epoch_12", tmp_path / "epoch_12.old")
    (tmp_path / ".epoch_11.tmp").mkdir()
    (tmp_path / "epoch_4.txt").write_text("not a folder")
    removed = prune_epoch_checkpoints(tmp_path, 3)
    assert [p.name for p in removed] == ["epoch_1", "epoch_2", "epoch_3", "epoch_9"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best_model",
        "epoch_10",
        "epoch_11",
        "epoch_12",
        "epoch_4.txt",
        "epoch_x",
    ]
    assert load_checkpoint(tmp_path / "epoch_12").epoch == 12
    assert prune_epoch_checkpoints(tmp_path, 5) == []
    assert [p.name for p in prune_epoch_checkpoints(tmp_path, 0)] == ["epoch_10", "epoch_11", "epoch_12"]
    assert prune_epoch_checkpoints(tmp_path / "missing", 1) == []
    with pytest.raises(ValueError):
        prune_epoch_checkpoints(tmp_path, -1)


def test_load_matching_weights_skips_and_reports() -> None:
    torch.manual_seed(0)
    source = torch.nn.ModuleDict({"body": torch.nn.Linear(4, 6), "head": torch.nn.Linear(6, 10)})
    target = torch.nn.ModuleDict({"body": torch.nn.Linear(4, 6), "head": torch.nn.Linear(6, 20)})
    sd = dict(source.state_dict())
    sd["extra.weight"] = torch.zeros(2)
    del sd["body.bias"]
    before_bias = target["body"].bias.detach().clone()
    before_head = target["head"].weight.detach().clone()
    loaded, skipped = load_matching_weights(target, {f"module.{k}": v for k, v in sd.items()})
    assert loaded == ["body.weight"]
    assert skipped == [
        "body.bias: missing in checkpoint",
        "head.weight: shape (10, 6) != (20, 6)",
        "head.bias: shape (10,) != (20,)",
        "extra.weight: unexpected (not in the model)",
    ]
    assert torch.equal(target["body"].weight, source["body"].weight)
    assert torch.equal(target["body"].bias, before_bias)
    assert torch.equal(target["head"].weight, before_head)
