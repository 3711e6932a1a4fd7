"""Checkpoint folders: atomic save, safe load (``weights_only``), fingerprints, RNG state, pruning, repair.

A checkpoint is a folder (``models/<Model>_<Feature>/{best_model,last_model,epoch_N}``) holding
``model.pt`` (backbone ``state_dict``), ``head.pt`` (classifier head), ``optimizer.pt``, ``scheduler.pt``,
``scaler.pt`` (optional), ``rng.pt`` (random-generator states), ``state.json`` (epoch, step, best EER,
library version, time, sha256 fingerprints of the files), ``config.yml`` (the full configuration) and, for
evaluated weights, ``result.json`` (their metrics; not fingerprinted, as ``eval.py`` may rewrite it).

Saving is atomic. Everything, ``result.json`` included, is written and fsync'ed into a sibling
``.<name>.tmp`` folder, then swapped in with two renames: ``<name>`` → ``<name>.old``, ``.<name>.tmp`` →
``<name>``, then ``<name>.old`` is deleted. A process killed at any moment leaves a complete checkpoint
behind: a folder named ``<name>`` is never missing a file. Recovery rule, applied by the next save of that
folder (:func:`recover_checkpoint`) and by :func:`repair_model_folder` at the start of training: when
``<name>`` is missing but ``<name>.old`` exists (killed between the renames), ``<name>.old`` is renamed back;
when both exist (killed before the clean-up), ``<name>.old`` is deleted; a leftover ``.<name>.tmp`` is
incomplete and deleted, and so is a ``.<name>.deleting`` folder (a prune or removal killed half-way).
:func:`load_checkpoint` changes nothing on disk (another process may be saving): it reads ``<name>.old``
when ``<name>`` is missing. One process saves a given folder at a time (rank 0 under torchrun).

Order of the saves of one epoch (the training callback): an epoch that improves the EER writes
``best_model`` FIRST, then ``last_model`` (a clone of it), then ``epoch_N`` (a clone of ``last_model``);
any other epoch writes ``last_model``, then ``epoch_N``. Why: ``last_model`` and ``epoch_N`` record the
best EER so far in their ``state.json``, so they may only do so once the weights that reached it are safely
in ``best_model``. At every kill point ``best_model``'s EER is therefore no worse than the best EER any
checkpoint on disk records (a kill between the saves leaves ``last_model`` one epoch behind; the resumed run
redoes that epoch and the training start-up takes ``best_model``'s EER as the one to beat). A missing
``epoch_N`` of ``last_model``'s epoch (a kill between the two clones) is cloned again when training resumes.
Clones are hard links where the file system allows (no extra disk), else copies; files in a checkpoint are
never rewritten in place, only replaced by rename, so linked copies never change under each other.

For tests only, ``MVECTOR_TEST_SAVE_PAUSE`` makes a save stop at a named point so that a test can SIGKILL it
there (:func:`_pause_point`); unset, as in every normal run, it does nothing.

>>> import tempfile, pathlib, torch
>>> folder = pathlib.Path(tempfile.mkdtemp()) / "last_model"
>>> _ = save_checkpoint(folder, model_state={"w": torch.ones(2)}, config={"use_model": "TDNN"},
...                     epoch=3, step=30, best_eer=0.1)
>>> ckpt = load_checkpoint(folder)
>>> ckpt.epoch, ckpt.step, ckpt.model_state["w"].tolist(), ckpt.config["use_model"]
(3, 30, [1.0, 1.0], 'TDNN')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch
import yaml

from mvector.errors import CheckpointError
from mvector.utils.files import atomic_write_text, dumps_json
from mvector.utils.yaml_io import read_yaml_file

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "prune_epoch_checkpoints",
    "load_matching_weights",
    "model_fingerprint",
    "file_sha256",
    "recover_checkpoint",
    "clone_checkpoint",
    "remove_checkpoint",
    "repair_model_folder",
    "recorded_eer",
    "CHECKPOINT_FORMAT",
    "PAUSE_POINTS",
]

PathLike = Union[str, os.PathLike]

#: Version of the folder layout written into ``state.json``.
CHECKPOINT_FORMAT = 1

# Indirection so tests can simulate a crash between the two renames of the swap.
_rename = os.rename

_TENSOR_FILES = ("model", "head", "optimizer", "scheduler", "scaler", "rng")
_EPOCH_RE = re.compile(r"^epoch_(\d+)$")
_EPOCH_LEFTOVER_RE = re.compile(r"^(?:epoch_(\d+)\.old|\.epoch_(\d+)\.tmp)$")
# What a killed save, clone, prune or removal leaves beside the checkpoint folders of a model folder.
_LEFTOVER_RE = re.compile(r"^(?:\.(?P<tmp>.+)\.tmp|(?P<old>.+)\.old|\.(?P<deleting>.+)\.deleting)$")

#: Test-only (the kill-loop tests): ``<folder>:<point>[:<n>]`` makes the n-th save of ``<folder>``
#: (``best_model``, ``last_model``, ``epoch_7``, or ``epoch`` for any ``epoch_N``) in this process stop at
#: ``<point>`` (one of :data:`PAUSE_POINTS`), write :data:`TEST_PAUSE_MARKER_ENV`'s file and sleep until killed.
TEST_PAUSE_ENV = "MVECTOR_TEST_SAVE_PAUSE"
#: Test-only: the file a paused save writes (atomically) to say where it stopped.
TEST_PAUSE_MARKER_ENV = "MVECTOR_TEST_SAVE_PAUSE_MARKER"
#: The points of a save where the test hook can pause: files half written, all written (before the swap),
#: between the two renames, swapped (before the old folder is deleted), done; ``pruning``: an epoch folder
#: renamed to ``.epoch_N.deleting`` and not yet deleted.
PAUSE_POINTS = ("writing", "written", "swapping", "swapped", "saved", "pruning")
_pause_counts: dict[tuple[str, str], int] = {}


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns. Training parts are None unless present and asked for.

    >>> Checkpoint(Path("m"), {"w": None}, config={}, epoch=1, step=2, best_eer=None).epoch
    1
    """

    directory: Path
    model_state: dict[str, Any]
    head_state: dict[str, Any] | None = None
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    best_eer: float | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def extra(self) -> dict[str, Any]:
        """The ``extra`` mapping given to :func:`save_checkpoint`."""
        return dict(self.state.get("extra") or {})


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file's bytes.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"abc")
    >>> file_sha256(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(obj: Any) -> Any:
    """A copy of ``obj`` that ``yaml.safe_dump`` / ``json`` accept (paths → str, numpy → Python, tuples → lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, writer) -> None:
    with open(path, "wb") as fh:
        writer(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _side_paths(directory: Path) -> tuple[Path, Path]:
    return directory.with_name(f".{directory.name}.tmp"), directory.with_name(f"{directory.name}.old")


def recover_checkpoint(directory: PathLike) -> None:
    """Finish or undo an interrupted :func:`save_checkpoint` of ``directory`` (see the module's recovery rule).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "last_model.old").mkdir()
    >>> recover_checkpoint(d / "last_model")
    >>> sorted(p.name for p in d.iterdir())
    ['last_model']
    """
    directory = Path(directory)
    tmp, old = _side_paths(directory)
    if old.is_dir():
        if directory.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, directory)
            _fsync_dir(directory.parent)
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(
    directory: PathLike,
    *,
    model_state: Mapping[str, Any],
    head_state: Mapping[str, Any] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    scaler_state: Mapping[str, Any] | None = None,
    rng_state: Mapping[str, Any] | None = None,
    config: Mapping[str, Any],
    epoch: int,
    step: int,
    best_eer: float | None,
    extra: Mapping[str, Any] | None = None,
    result: Mapping[str, Any] | None = None,
    side_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (old complete or new complete, never half) and return its path.

    The states must hold only tensors and plain Python values (what ``torch.load(weights_only=True)`` reads
    back). ``config`` is stored as ``config.yml``; ``extra`` (JSON-able) goes into ``state.json``; ``result``
    (the metrics of these weights, when evaluated) becomes ``result.json``, written before the swap so that the
    folder never appears without it; ``side_files`` (name -> bytes, e.g. ``score_norm.npz``) likewise.

    >>> import tempfile, pathlib, torch
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "best_model"
    >>> path = save_checkpoint(d, model_state={"w": torch.zeros(1)}, config={}, epoch=1, step=5, best_eer=None)
    >>> sorted(p.name for p in path.iterdir())
    ['config.yml', 'model.pt', 'state.json']
    """
    from mvector import __version__

    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_checkpoint(directory)
    tmp, old = _side_paths(directory)
    tmp.mkdir()
    parts = {
        "model": model_state,
        "head": head_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler_state,
        "scaler": scaler_state,
        "rng": rng_state,
    }
    hashes: dict[str, str] = {}
    for name in _TENSOR_FILES:
        value = parts[name]
        if value is None:
            continue
        filename = f"{name}.pt"
        _write_file(tmp / filename, lambda fh, v=value: torch.save(v, fh))
        hashes[filename] = file_sha256(tmp / filename)
        if name == "model":
            _pause_point(directory, "writing")
    config_text = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    _write_file(tmp / "config.yml", lambda fh: fh.write(config_text.encode("utf-8")))
    hashes["config.yml"] = file_sha256(tmp / "config.yml")
    now = time.time()
    best = None if best_eer is None or not math.isfinite(float(best_eer)) else float(best_eer)
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "step": int(step),
        "best_eer": best,
        "library_version": __version__,
        "timestamp": now,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
        "model_sha256": hashes["model.pt"],
        "files": hashes,
        "extra": _plain(dict(extra or {})),
    }
    state_text = json.dumps(state, indent=2)
    _write_file(tmp / "state.json", lambda fh: fh.write(state_text.encode("utf-8")))
    if result is not None:
        result_text = dumps_json(dict(result), indent=2) + "\n"
        _write_file(tmp / "result.json", lambda fh: fh.write(result_text.encode("utf-8")))
    for name, data in (side_files or {}).items():
        if Path(name).name != name or name.startswith("."):
            raise CheckpointError(f"side file {name!r}: a plain file name is needed")
        _write_file(tmp / name, lambda fh, d=data: fh.write(d))
    _swap_in(tmp, directory)
    return directory


def _swap_in(tmp: Path, directory: Path) -> None:
    """Replace ``directory`` by the complete folder ``tmp``; after each step the recovery rule holds."""
    old = _side_paths(directory)[1]
    _fsync_dir(tmp)
    _pause_point(directory, "written")
    if directory.exists():
        _rename(directory, old)
        _pause_point(directory, "swapping")
    _rename(tmp, directory)
    _fsync_dir(directory.parent)
    _pause_point(directory, "swapped")
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    _pause_point(directory, "saved")


def clone_checkpoint(source: PathLike, directory: PathLike) -> Path:
    """Make ``directory`` an atomic copy of the checkpoint folder ``source`` (hard links where possible).

    Every file of ``source`` (not its sub-folders, nor the hidden temporary file of a write in progress) is
    hard-linked, or copied where the file system has no hard links, into ``.<name>.tmp``, which is then swapped
    in like a save. Checkpoint files are only ever replaced by rename, never rewritten, so the two folders can
    share them safely.

    >>> import tempfile, pathlib, torch
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = save_checkpoint(root / "last_model", model_state={"w": torch.ones(1)}, config={}, epoch=4, step=8,
    ...                     best_eer=0.2, result={"eer": 0.2, "epoch": 4})
    >>> copy = clone_checkpoint(root / "last_model", root / "epoch_4")
    >>> load_checkpoint(copy).epoch, recorded_eer(copy)
    (4, 0.2)
    """
    source = Path(source).absolute()
    directory = Path(directory).absolute()
    if not (source / "state.json").is_file():
        raise CheckpointError(f"{source}: not a checkpoint folder (no state.json); cannot copy it to {directory}")
    recover_checkpoint(directory)
    tmp = _side_paths(directory)[0]
    tmp.mkdir()
    for child in sorted(source.iterdir()):
        if child.name.startswith(".") or not child.is_file():
            continue
        try:
            os.link(child, tmp / child.name)
        except OSError:  # no hard links here (some network and FAT file systems): a real copy
            shutil.copyfile(child, tmp / child.name)
            with open(tmp / child.name, "rb") as fh:
                os.fsync(fh.fileno())
        if child.name == "model.pt":
            _pause_point(directory, "writing")
    _swap_in(tmp, directory)
    return directory


def remove_checkpoint(directory: PathLike) -> bool:
    """Delete a checkpoint folder so that a kill half-way leaves no half folder under its name.

    The folder is renamed to the hidden ``.<name>.deleting`` first (which :func:`repair_model_folder` removes if
    the deletion is interrupted). Returns False when there was nothing to delete.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "best_model").mkdir()
    >>> remove_checkpoint(d / "best_model"), list(d.iterdir())
    (True, [])
    """
    directory = Path(directory)
    if not directory.exists() and not directory.is_symlink():
        return False
    trash = directory.with_name(f".{directory.name}.deleting")
    _delete(trash)
    os.rename(directory, trash)
    _pause_point(directory, "pruning")
    _delete(trash)
    return True


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def repair_model_folder(model_dir: PathLike) -> list[str]:
    """Finish or undo what killed saves, clones, prunes and removals left in a model folder; returns notes.

    ``<name>.old`` beside a missing ``<name>`` is put back, every other ``<name>.old``, ``.<name>.tmp`` and
    ``.<name>.deleting`` folder is deleted (see the module's recovery rule). Run at the start of training, when
    no other process saves into the folder.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in (".best_model.tmp", ".epoch_3.deleting", "last_model.old"):
    ...     (d / name).mkdir()
    >>> len(repair_model_folder(d)), sorted(p.name for p in d.iterdir())
    (3, ['last_model'])
    """
    root = Path(model_dir)
    if not root.is_dir():
        return []
    notes = []
    targets: list[str] = []
    for name in sorted(os.listdir(root)):
        match = _LEFTOVER_RE.match(name)
        path = root / name
        if not match or not path.is_dir() or path.is_symlink():
            continue
        if match.group("deleting"):
            shutil.rmtree(path, ignore_errors=True)
            notes.append(f"removed {path} (a deletion interrupted by a kill)")
        elif (match.group("tmp") or match.group("old")) not in targets:
            targets.append(match.group("tmp") or match.group("old"))
    for name in targets:
        target = root / name
        tmp, old = _side_paths(target)
        if old.is_dir():
            done = f"removed {old}" if target.exists() else f"put {old} back as {name}"
            notes.append(f"{done} (a save interrupted by a kill)")
        if tmp.exists():
            notes.append(f"removed {tmp} (a save interrupted by a kill)")
        recover_checkpoint(target)
    return notes


def recorded_eer(directory: PathLike, own_only: bool = False) -> float | None:
    """The EER a checkpoint folder records: the ``eer`` of the ``result.json`` training wrote for these weights
    (its ``epoch`` equals the one in ``state.json``), else, unless ``own_only``, the run's best EER in
    ``state.json``; None when there is neither. (A ``result.json`` that ``eval.py`` rewrote on other data does
    not count: training compares EERs of its own evaluation only.)

    >>> import tempfile, pathlib, torch
    >>> d = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "m", model_state={"w": torch.ones(1)}, config={},
    ...                     epoch=2, step=4, best_eer=0.25)
    >>> recorded_eer(d), recorded_eer(d, own_only=True)
    (0.25, None)
    """
    directory = Path(directory)
    state, result = _json_mapping(directory / "state.json"), _json_mapping(directory / "result.json")
    if "epoch" in result and result.get("epoch") == state.get("epoch"):
        eer = _finite(result.get("eer"))
        if eer is not None:
            return eer
    return None if own_only else _finite(state.get("best_eer"))


def _json_mapping(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _pause_point(directory: Path, point: str) -> None:
    """TEST-ONLY hook: stop at ``point`` of a save when :data:`TEST_PAUSE_ENV` asks for it (see there).

    Inert in normal use: without the environment variable it returns at once. With it, the matching save
    writes the marker file and sleeps (up to 10 minutes) so that the test can SIGKILL the process exactly there.
    """
    spec = os.environ.get(TEST_PAUSE_ENV)
    if not spec:
        return
    kind = "epoch" if _EPOCH_RE.match(directory.name) else directory.name
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in (kind, directory.name) or parts[1] != point:
        return
    wanted = int(parts[2]) if len(parts) == 3 else 1
    key = (parts[0], point)
    count = _pause_counts[key] = _pause_counts.get(key, 0) + 1
    if count != wanted:
        return
    marker = os.environ.get(TEST_PAUSE_MARKER_ENV)
    if marker:
        atomic_write_text(marker, f"{spec} {directory.name} pid {os.getpid()}\n")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise RuntimeError(f"test pause at {kind}:{point} was never ended by a kill ({TEST_PAUSE_ENV} is test-only)")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def _load_tensor_file(path: Path, map_location: Any, expected_sha: str | None) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint folder")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise CheckpointError(
                f"{path}: holds objects other than tensors and plain values; refusing to load it "
                "(only weights_only checkpoints are read, for safety)"
            ) from err
        raise CheckpointError(f"{path}: damaged (truncated or not a checkpoint): {_short(err)}") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as err:
        raise CheckpointError(
            f"{path}: damaged (truncated or not a checkpoint); save it again or use another checkpoint ({_short(err)})"
        ) from err
    if expected_sha is not None and file_sha256(path) != expected_sha:
        raise CheckpointError(
            f"{path}: does not match the fingerprint in state.json; the file was replaced or modified after "
            "saving (restore the original or save the checkpoint again)"
        )
    return data


def _read_state(directory: Path) -> dict[str, Any]:
    state_path = directory / "state.json"
    if not state_path.is_file():
        raise CheckpointError(
            f"{state_path}: missing; {directory} is not an mvector checkpoint folder "
            "(expected model.pt, state.json and config.yml)"
        )
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{state_path}: damaged (not valid JSON): {err}") from err
    if not isinstance(state, dict) or "epoch" not in state or "model_sha256" not in state:
        raise CheckpointError(f"{state_path}: not an mvector checkpoint state (no epoch / model_sha256)")
    return state


def load_checkpoint(directory: PathLike, map_location: Any = "cpu", need_training_state: bool = False) -> Checkpoint:
    """Load a checkpoint folder with ``torch.load(weights_only=True)``, checking every file's fingerprint.

    ``directory`` may also name the ``model.pt`` inside it. The model, head (if saved), config and state are
    always loaded; ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` and ``rng.pt`` only with
    ``need_training_state`` (then optimizer and scheduler are required). A missing, damaged or altered file is
    a :class:`CheckpointError` naming it. Loading changes nothing on disk: when a save was interrupted between
    its two renames, the intact ``<name>.old`` is read (the next save puts it back). A save that swaps the
    folder while it is being read is noticed (``state.json`` changed) and the load is retried.

    >>> import tempfile, pathlib
    >>> load_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "nothing")
    Traceback (most recent call last):
    ...
    mvector.errors.CheckpointError: .../nothing: checkpoint folder not found ...
    """
    directory = Path(directory).expanduser().absolute()
    if directory.is_file() and directory.name == "model.pt":
        directory = directory.parent
    for attempt in range(3):
        folder = directory
        if not folder.is_dir():
            old = _side_paths(directory)[1]
            if old.is_dir() and (old / "state.json").is_file():
                folder = old
            else:
                raise CheckpointError(
                    f"{directory}: checkpoint folder not found (expected a folder such as "
                    "models/EcapaTdnn_MelSpectrogram/best_model holding model.pt, state.json and config.yml)"
                )
        before = _state_bytes(folder)
        try:
            return _load_folder(folder, map_location, need_training_state)
        except CheckpointError:
            if attempt == 2 or _state_bytes(folder) == before and _state_bytes(directory) == before:
                raise
            time.sleep(0.05)  # a save swapped the folder while we read it: read the new one
    raise AssertionError("unreachable")  # pragma: no cover


def _state_bytes(folder: Path) -> bytes | None:
    try:
        return (folder / "state.json").read_bytes()
    except OSError:
        return None


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _checked_hashes(directory: Path, state: Mapping[str, Any]) -> dict[str, str]:
    """The ``files`` fingerprints of ``state.json``, checked: present, well-formed, covering model.pt and
    config.yml, and agreeing with ``model_sha256`` (a hand-edited state.json cannot switch a check off)."""
    where = directory / "state.json"
    files = state.get("files")
    if not isinstance(files, Mapping) or not files:
        raise CheckpointError(
            f"{where}: the 'files' fingerprint map is missing or empty (state.json edited?); every file of a "
            "checkpoint must be fingerprinted: restore the original state.json or save the checkpoint again"
        )
    for name, digest in files.items():
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise CheckpointError(f"{where}: the fingerprint of {name!r} is not a sha256 hex digest: {digest!r}")
    for needed in ("model.pt", "config.yml"):
        if needed not in files:
            raise CheckpointError(f"{where}: {needed} is not fingerprinted in 'files' (state.json edited?)")
    if state.get("model_sha256") != files["model.pt"]:
        raise CheckpointError(
            f"{where}: model_sha256 does not match the fingerprint of model.pt in 'files' (state.json edited?)"
        )
    return {str(k): str(v) for k, v in files.items()}


def _load_folder(directory: Path, map_location: Any, need_training_state: bool) -> Checkpoint:
    state = _read_state(directory)
    hashes = _checked_hashes(directory, state)

    def part(name: str, required: bool) -> Any:
        filename = f"{name}.pt"
        if not (directory / filename).is_file():
            if required or filename in hashes:
                raise CheckpointError(f"{directory / filename}: missing from the checkpoint folder")
            return None
        if filename not in hashes:
            raise CheckpointError(
                f"{directory / filename}: not fingerprinted in state.json (added or state.json edited after "
                "saving); refusing to load it"
            )
        return _load_tensor_file(directory / filename, map_location, hashes[filename])

    model_state = part("model", True)
    if not isinstance(model_state, Mapping):
        raise CheckpointError(f"{directory / 'model.pt'}: expected a state_dict (a mapping of tensors)")
    head_state = part("head", False)
    training = {}
    if need_training_state:
        for name in ("optimizer", "scheduler"):
            if not (directory / f"{name}.pt").is_file():
                raise CheckpointError(
                    f"{directory / (name + '.pt')}: missing; this checkpoint cannot resume training "
                    "(use it as a pretrained model instead)"
                )
        training = {name: part(name, False) for name in ("optimizer", "scheduler", "scaler", "rng")}

    config_path = directory / "config.yml"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; the checkpoint does not say which model it holds")
    if file_sha256(config_path) != hashes["config.yml"]:
        raise CheckpointError(f"{config_path}: does not match the fingerprint in state.json (edited after saving)")
    config = read_yaml_file(config_path, "checkpoint configuration", CheckpointError) or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a mapping of config sections")
    return Checkpoint(
        directory=directory,
        model_state=dict(model_state),
        head_state=head_state,
        optimizer_state=training.get("optimizer"),
        scheduler_state=training.get("scheduler"),
        scaler_state=training.get("scaler"),
        rng_state=training.get("rng"),
        config=config,
        epoch=int(state["epoch"]),
        step=int(state.get("step", 0)),
        best_eer=state.get("best_eer"),
        state=state,
    )


def model_fingerprint(directory: PathLike) -> str:
    """The sha256 of ``model.pt`` stored in the checkpoint's ``state.json`` (identifies the weights).

    >>> import tempfile, pathlib, torch
    >>> d = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "m", model_state={"w": torch.ones(1)},
    ...                     config={}, epoch=0, step=0, best_eer=None)
    >>> model_fingerprint(d) == file_sha256(d / "model.pt")
    True
    """
    directory = Path(directory).expanduser()
    if directory.is_file() and directory.name == "model.pt":
        directory = directory.parent
    return str(_read_state(directory)["model_sha256"])


def capture_rng_state() -> dict[str, Any]:
    """States of Python's ``random``, numpy's global generator and torch (CPU and every CUDA device).

    Stored as tensors, ints, floats and lists so that ``torch.load(weights_only=True)`` reads them back.

    >>> state = capture_rng_state()
    >>> a = (random.random(), np.random.rand(), torch.rand(1).item())
    >>> restore_rng_state(state)
    >>> a == (random.random(), np.random.rand(), torch.rand(1).item())
    True
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(list(internal), dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy_name": str(name),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators from :func:`capture_rng_state` (CUDA states only where devices exist).

    >>> restore_rng_state({"torch": 1})
    Traceback (most recent call last):
    ...
    mvector.errors.CheckpointError: damaged RNG state (rng.pt): ...
    """
    try:
        internal = tuple(int(v) for v in state["python_state"].tolist())
        random.setstate((int(state["python_version"]), internal, state["python_gauss"]))
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (
                str(state["numpy_name"]),
                keys,
                int(state["numpy_pos"]),
                int(state["numpy_has_gauss"]),
                float(state["numpy_cached_gaussian"]),
            )
        )
        torch.set_rng_state(state["torch"].to(device="cpu", dtype=torch.uint8))
        cuda_states = list(state.get("cuda") or [])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"damaged RNG state (rng.pt): {type(err).__name__}: {err}") from err
    if cuda_states and torch.cuda.is_available():
        count = min(len(cuda_states), torch.cuda.device_count())
        for index in range(count):
            torch.cuda.set_rng_state(cuda_states[index].to(device="cpu", dtype=torch.uint8), index)


def prune_epoch_checkpoints(model_dir: PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest-numbered ``epoch_N`` folders; returns the deleted paths.

    Each folder is first renamed to a hidden name, then deleted, so a half-deleted folder never looks like a
    checkpoint (:func:`remove_checkpoint`); hidden ``.epoch_N.deleting`` folders an earlier kill left are deleted.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for n in (1, 2, 10, 3):
    ...     (d / f"epoch_{n}").mkdir()
    >>> [p.name for p in prune_epoch_checkpoints(d, 2)], sorted(p.name for p in d.iterdir())
    (['epoch_1', 'epoch_2'], ['epoch_10', 'epoch_3'])
    """
    if isinstance(keep_last, bool) or int(keep_last) != keep_last or keep_last < 0:
        raise ValueError(f"keep_last must be an integer >= 0, got {keep_last!r}")
    root = Path(model_dir)
    if not root.is_dir():
        return []
    # Finish interrupted saves first, so an epoch whose only copy is "epoch_N.old" counts as epoch_N.
    leftovers = {int(m.group(1) or m.group(2)) for m in map(_EPOCH_LEFTOVER_RE.match, os.listdir(root)) if m}
    for number in sorted(leftovers):
        recover_checkpoint(root / f"epoch_{number}")
    epochs = []
    for child in root.iterdir():
        match = _EPOCH_RE.match(child.name)
        if match and child.is_dir():
            epochs.append((int(match.group(1)), child))
    epochs.sort()
    doomed = [path for _, path in epochs[: max(0, len(epochs) - int(keep_last))]]
    for name in os.listdir(root):  # an earlier prune killed half-way
        if name.startswith(".epoch_") and name.endswith(".deleting") and (root / name).is_dir():
            shutil.rmtree(root / name, ignore_errors=True)
    for path in doomed:
        remove_checkpoint(path)
    return doomed


def load_matching_weights(module: torch.nn.Module, state_dict: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Load the entries of ``state_dict`` whose names and shapes match ``module``; report the rest.

    Returns ``(loaded names, skipped)`` where each skipped item reads ``"name: shape (checkpoint) != (model)"``,
    ``"name: missing in checkpoint"`` (kept as initialised) or ``"name: unexpected (not in the model)"``.
    A ``module.`` prefix (from a DistributedDataParallel wrapper) is removed first.

    >>> src, dst = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
    >>> loaded, skipped = load_matching_weights(dst, src.state_dict())
    >>> loaded, skipped
    ([], ['weight: shape (3, 4) != (2, 4)', 'bias: shape (3,) != (2,)'])
    >>> load_matching_weights(torch.nn.Linear(4, 3), src.state_dict())[0]
    ['weight', 'bias']
    """
    given = dict(state_dict)
    if given and all(str(k).startswith("module.") for k in given):
        given = {str(k)[len("module.") :]: v for k, v in given.items()}
    own = module.state_dict()
    loaded: list[str] = []
    skipped: list[str] = []
    merged = dict(own)
    for name, current in own.items():
        if name not in given:
            skipped.append(f"{name}: missing in checkpoint")
            continue
        value = given[name]
        if not isinstance(value, torch.Tensor):
            skipped.append(f"{name}: not a tensor in the checkpoint")
            continue
        if tuple(value.shape) != tuple(current.shape):
            skipped.append(f"{name}: shape {tuple(value.shape)} != {tuple(current.shape)}")
            continue
        merged[name] = value
        loaded.append(name)
    for name in given:
        if name not in own:
            skipped.append(f"{name}: unexpected (not in the model)")
    module.load_state_dict(merged, strict=True)
    return loaded, skipped
