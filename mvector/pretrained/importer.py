"""Turn a third-party checkpoint into an ordinary mvector model folder.

:func:`import_checkpoint` reads a 3D-Speaker CAM++ state dict (``torch.load(weights_only=True)``: no code runs),
checks every tensor name, shape, dtype and value against :class:`~mvector.models.campplus.CAMPPlus` built with the
catalogue's settings, and writes a folder with :func:`mvector.checkpoint.save_checkpoint`: ``model.pt`` (the
backbone state dict, unchanged names), ``config.yml`` (the model and the exact front end it was trained with) and
``state.json`` (hashes; ``extra.pretrained`` records the name, source, licence and the imported file's sha256).
Every mvector tool then works on the folder unchanged (evaluation, inference, export, fine-tuning).

3D-Speaker's front end, as the configuration states it: 16 kHz audio, no level normalisation, an 80-bin Kaldi
fbank (25 ms Povey window, 10 ms shift, pre-emphasis 0.97, DC removal, ``snip_edges``, no dither) of samples in
int16 units, and the per-utterance mean subtracted (no variance normalisation).

>>> import tempfile, torch
>>> from mvector.models import build_backbone
>>> entry = dict(catalogue_entry("campplus_zh_en"), model_conf={"embd_dim": 8, "fcm_channels": 4,
...     "init_channels": 16, "growth_rate": 8, "bn_size": 2, "num_layers": [1, 1, 1]})
>>> state = build_backbone("CAMPPlus", 80, **entry["model_conf"]).state_dict()
>>> report = import_checkpoint(state, tempfile.mkdtemp() + "/m", entry=entry, check_hash=False)
>>> report.tensors, report.output_dir.name
(153, 'm')
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch

from mvector.checkpoint import file_sha256, save_checkpoint
from mvector.config import load_config
from mvector.errors import CheckpointError, ConfigError
from mvector.models import build_backbone
from mvector.pretrained.catalogue import Catalogue, catalogue_entry

__all__ = [
    "ImportReport",
    "read_state_dict",
    "check_state_dict",
    "pretrained_config",
    "import_checkpoint",
    "MAX_CHECKPOINT_BYTES",
]

PathLike = Union[str, os.PathLike]

#: Files larger than this are refused before reading (a CAM++ checkpoint is 28 MB).
MAX_CHECKPOINT_BYTES = 1 << 30


@dataclass
class ImportReport:
    """What :func:`import_checkpoint` did: the folder, the counts, and the file's hash."""

    output_dir: Path
    name: str
    tensors: int
    parameters: int
    sha256: str | None
    notes: list[str] = field(default_factory=list)


def read_state_dict(path: PathLike, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, torch.Tensor]:
    """Load a checkpoint file safely (``weights_only``) and return its flat ``name -> tensor`` state dict.

    A wrapper holding the state dict under ``state_dict`` or ``model`` is unwrapped and a ``module.`` prefix
    (DistributedDataParallel) removed. A missing, oversized, damaged or non-checkpoint file is a
    :class:`~mvector.errors.CheckpointError` naming it.

    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/x.pt"
    >>> torch.save({"state_dict": {"module.w": torch.ones(2)}}, path)
    >>> read_state_dict(path)
    {'w': tensor([1., 1.])}
    """
    path = checked_file(path, max_bytes)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever a damaged or foreign file raises, one clear error
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (damaged, another format, or holding objects other than "
            "tensors, which safe loading refuses)"
        ) from err
    return flat_state(data, str(path))


def checked_file(path: PathLike, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Path:
    """``path`` as a Path, refusing a missing file or one larger than ``max_bytes`` (before anything is read).

    >>> checked_file("/no/such.pt")
    Traceback (most recent call last):
    ...
    mvector.errors.CheckpointError: /no/such.pt: no such checkpoint file
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{path}: {size} bytes, larger than the {max_bytes}-byte limit for a checkpoint")
    return path


def load_checked_state(
    checkpoint: Union[PathLike, Mapping[str, Any]],
    entry: Mapping[str, Any],
    check_hash: bool,
    reader: Callable[[PathLike], dict[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """The flat state dict of ``checkpoint`` (a file read by ``reader``, or a loaded state dict), where it came
    from, and the file's sha256 (None for a state dict); a file without the entry's sha256 is refused when
    ``check_hash``."""
    name = entry.get("name", "?")
    if isinstance(checkpoint, Mapping):
        return flat_state(checkpoint, "<state dict>"), "<state dict>", None
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{checkpoint}: no such checkpoint file")
    sha = file_sha256(checkpoint)
    if check_hash and sha != entry["sha256"]:
        raise CheckpointError(
            f"{checkpoint}: sha256 {sha} is not that of {name} ({entry['sha256']}); this is another file "
            "(pass check_hash=False / --check_sha256 false to import a compatible checkpoint of your own)"
        )
    return reader(checkpoint), str(checkpoint), sha


def refuse_misfit(model: torch.nn.Module, state: Mapping[str, Any], where: str, arch: str, name: str) -> None:
    """Raise a CheckpointError listing every difference between ``state`` and ``model`` (:func:`check_state_dict`)."""
    problems = check_state_dict(model, state)
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise CheckpointError(f"{where} does not fit {arch} ({name}): {len(problems)} problem(s):\n  {shown}{more}")


def pretrained_record(
    entry: Mapping[str, Any], name: str, checkpoint: Any, sha: str | None, tensors: int
) -> dict[str, Any]:
    """What a model folder records about its import (``state.json``'s ``extra.pretrained``)."""
    return {
        "name": name,
        "kind": entry.get("kind", "embedding"),
        "architecture": entry["architecture"],
        "description": entry.get("description", ""),
        "licence": entry["licence"],
        "source": entry.get("source", {}),
        "imported_file": None if isinstance(checkpoint, Mapping) else os.path.basename(str(checkpoint)),
        "imported_sha256": sha,
        "catalogue_sha256": entry["sha256"],
        "tensors": tensors,
    }


def flat_state(data: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensor mapping of a loaded checkpoint (unwrapping ``state_dict`` / ``model``); a ``CheckpointError``
    naming ``where`` when there is none.

    >>> list(flat_state({"state_dict": {"w": torch.zeros(1)}}, "ckpt.pt"))
    ['w']
    """
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping) and len(data) <= 8:
            data = data[key]
            break
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"{where}: expected a state dict (a mapping of tensor names to tensors)")
    state = {str(k): v for k, v in data.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_state_dict(model: torch.nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Every difference between ``state`` and ``model.state_dict()``: names, shapes, dtypes, non-finite values.

    Returns one line per problem (empty: the state loads without loss).

    >>> m = torch.nn.Linear(3, 2)
    >>> check_state_dict(m, {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)})
    ['weight: shape (2, 4) in the checkpoint, (2, 3) expected', 'bias: missing from the checkpoint', \
'extra: not part of the model (unexpected)']
    """
    own = model.state_dict()
    problems = []
    for name, ref in own.items():
        if name not in state:
            continue
        value = state[name]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{name}: a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(ref.shape):
            problems.append(f"{name}: shape {tuple(value.shape)} in the checkpoint, {tuple(ref.shape)} expected")
        elif value.dtype.is_floating_point != ref.dtype.is_floating_point:
            problems.append(f"{name}: dtype {value.dtype} in the checkpoint, {ref.dtype} expected")
        elif value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            problems.append(f"{name}: holds NaN or infinite values (damaged)")
    problems += [f"{name}: missing from the checkpoint" for name in own if name not in state]
    problems += [f"{name}: not part of the model (unexpected)" for name in state if name not in own]
    return problems


def pretrained_config(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The mvector configuration of a catalogue entry: the model, its front end, and fine-tuning defaults.

    >>> conf = pretrained_config(catalogue_entry("campplus_zh_en"))
    >>> conf["use_model"], conf["preprocess_conf"], conf["feature_conf"]["dither"]
    ('CAMPPlus', {'feature_method': 'Fbank', 'normalize': 'mean'}, 0.0)
    """
    inp = entry["input"]
    if inp.get("feature_method", "Fbank") != "Fbank":
        raise ConfigError(f"pretrained model {entry.get('name')}: only Fbank inputs are supported")
    feature_conf = {
        "sample_rate": int(inp["sample_rate"]),
        "num_mel_bins": int(inp["num_mel_bins"]),
        "frame_length": float(inp.get("frame_length", 25.0)),
        "frame_shift": float(inp.get("frame_shift", 10.0)),
        "dither": float(inp.get("dither", 0.0)),
        "preemphasis_coefficient": float(inp.get("preemphasis_coefficient", 0.97)),
        "window_type": str(inp.get("window_type", "povey")),
        "snip_edges": bool(inp.get("snip_edges", True)),
    }
    conf = {
        "use_model": entry["architecture"],
        "use_loss": "AAM",
        "dataset_conf": {
            "sample_rate": int(inp["sample_rate"]),
            "use_dB_normalization": bool(inp.get("use_dB_normalization", False)),
            "eval_max_duration": 60.0,
        },
        "preprocess_conf": {"feature_method": "Fbank", "normalize": inp.get("normalize", "mean")},
        "feature_conf": feature_conf,
        "model_conf": copy.deepcopy(dict(entry["model_conf"])),
        # 3D-Speaker's recipe: ArcFace, scale 32, margin 0.2.
        "loss_conf": {"margin": 0.2, "scale": 32},
    }
    return load_config(conf)


def import_checkpoint(
    checkpoint: Union[PathLike, Mapping[str, Any]],
    output_dir: PathLike,
    name: str = "campplus_zh_en",
    *,
    entry: Mapping[str, Any] | None = None,
    catalogue: Catalogue = None,
    check_hash: bool = True,
    overwrite: bool = False,
) -> ImportReport:
    """Import ``checkpoint`` (a file path, or an already loaded state dict) as catalogue model ``name``.

    With ``check_hash`` (the default) a file must have the catalogue's sha256: another file is refused, naming
    both hashes (pass ``check_hash=False`` to import a compatible checkpoint of your own; every tensor is still
    checked). Every name and shape must match the architecture: the error lists each difference. An existing
    ``output_dir`` is replaced only when it is an mvector model folder and ``overwrite`` is set.
    """
    entry = dict(entry) if entry is not None else catalogue_entry(name, catalogue)
    name = str(entry.get("name", name))
    entry["name"] = name
    state, where, sha = load_checked_state(checkpoint, entry, check_hash, read_state_dict)
    arch = str(entry["architecture"])
    model = build_backbone(arch, int(entry["input"]["num_mel_bins"]), **dict(entry["model_conf"]))
    refuse_misfit(model, state, where, arch, name)
    conf = pretrained_config(entry)
    model.load_state_dict({k: state[k] for k in model.state_dict()}, strict=True)
    out = Path(output_dir).expanduser()
    check_target_folder(out, overwrite)
    own = model.state_dict()
    extra = {"pretrained": pretrained_record(entry, name, checkpoint, sha, len(own))}
    folder = save_checkpoint(
        out, model_state=own, config=conf, epoch=0, step=0, best_eer=None, extra=extra
    )
    params = sum(p.numel() for p in model.parameters())
    notes = [] if sha is not None else ["imported from an in-memory state dict: no file hash recorded"]
    stated = write_default_calibration(folder, entry)
    if stated:
        notes.append(stated)
    return ImportReport(folder, name, len(own), params, sha, notes)


def write_default_calibration(folder: Path, entry: Mapping[str, Any]) -> str | None:
    """Write the catalogue's stated default calibration (``default_calibration``: score → LLR map, a 1 %-FAR
    operating point and the non-target distribution, with where they were fitted and how they held on other
    voices) as ``calibration.json`` of the imported ``folder``, tied to its fingerprint. Returns a note saying
    so, or ``None`` when the entry has none. Its operating point is a stated default, not a fit to your speakers.
    """
    from mvector.checkpoint import model_fingerprint
    from mvector.utils.files import atomic_write_json

    block = entry.get("default_calibration")
    if not block:
        return None
    data = {"format": "mvector-calibration", "version": 1, "kind": "linear-logistic", **copy.deepcopy(dict(block))}
    data["model_fingerprint"] = model_fingerprint(folder)
    atomic_write_json(Path(folder) / "calibration.json", data)
    fitted = block.get("fitted_on", {})
    return (
        f"wrote a stated default calibration.json, fitted on {fitted.get('data')}; {fitted.get('held_out', '')}"
    ).rstrip("; ")


def check_target_folder(out: Path, overwrite: bool) -> None:
    """Refuse to write a model folder over a file, a folder that is not an mvector model, or (without
    ``overwrite``) an existing model folder; a missing or empty folder is fine.

    >>> import tempfile
    >>> check_target_folder(Path(tempfile.mkdtemp()) / "new", overwrite=False) is None
    True
    """
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "state.json").is_file():
            raise CheckpointError(f"{out}: exists and is not an mvector model folder; refusing to replace it")
        if not overwrite:
            raise CheckpointError(f"{out}: already holds a model; pass overwrite=True (--overwrite true) to replace it")
