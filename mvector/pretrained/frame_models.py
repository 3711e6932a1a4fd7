"""Import and load the pretrained *frame* models: speaker segmentation (and speech detection) networks.

Silero VAD's weights come as safetensors, read by :func:`read_safetensors` (no pickle at all).

Unlike the embedding models of :mod:`mvector.pretrained.importer`, these say something about every ~17 ms frame
of audio. Their catalogue entries have ``kind: segmentation`` (or ``vad``); the import checks every tensor name,
shape and value against the architecture built with the entry's ``model_conf`` and writes an ordinary checkpoint
folder (:func:`mvector.checkpoint.save_checkpoint`: ``model.pt``, ``config.yml`` naming the kind, architecture
and settings, ``state.json`` with hashes and the imported file's sha256), which :func:`load_frame_model` reads
back with every hash checked.

pyannote's segmentation-3.0 checkpoint is a PyTorch Lightning file: next to the tensors it pickles three small
pyannote task objects (``Specifications``, ``Problem``, ``Resolution``) and torch's version string. Safe loading
(``weights_only=True``) refuses unknown classes, so :func:`read_checkpoint_state` lets exactly those names through
as *inert* placeholders (plain attribute holders that run no code of their own) and keeps only ``state_dict``.

>>> import tempfile, torch
>>> from mvector.models.segmentation import PyanNet
>>> entry = catalogue_entry("segmentation_3_0")
>>> report = import_frame_model(PyanNet().state_dict(), tempfile.mkdtemp() + "/seg", entry=entry, check_hash=False)
>>> report.tensors, type(load_frame_model(report.output_dir)).__name__
(54, 'PyanNet')
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch

from mvector.checkpoint import load_checkpoint, save_checkpoint
from mvector.errors import CheckpointError, ConfigError
from mvector.pretrained.catalogue import Catalogue, catalogue_entry
from mvector.pretrained.importer import (
    MAX_CHECKPOINT_BYTES,
    ImportReport,
    check_state_dict,
    check_target_folder,
    checked_file,
    flat_state,
    load_checked_state,
    pretrained_record,
    refuse_misfit,
)

__all__ = [
    "FRAME_ARCHITECTURES",
    "read_checkpoint_state",
    "read_safetensors",
    "build_frame_model",
    "import_frame_model",
    "load_frame_model",
]

PathLike = Union[str, os.PathLike]

#: Globals that third-party frame-model checkpoints pickle besides tensors; loaded as inert placeholders.
INERT_GLOBALS = (
    ("pyannote.audio.core.task", "Specifications"),
    ("pyannote.audio.core.task", "Problem"),
    ("pyannote.audio.core.task", "Resolution"),
)


def _architectures() -> dict[str, type]:
    from mvector.models.segmentation import PyanNet
    from mvector.models.silero_vad import SileroVAD

    return {"PyanNet": PyanNet, "SileroVAD": SileroVAD}


#: Names of the frame-model architectures (the catalogue's ``architecture`` of a non-embedding entry).
FRAME_ARCHITECTURES = ("PyanNet", "SileroVAD")

_SAFETENSOR_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def read_safetensors(path: PathLike, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file (an 8-byte header length, a JSON header, raw little-endian data).

    Parsed here with the standard library and numpy (no code in the file can run); every offset, shape and
    dtype is checked against the file. Float tensors only (what the supported models hold).

    >>> import json, struct, tempfile
    >>> head = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    >>> p = tempfile.mkdtemp() + "/x.safetensors"
    >>> _ = open(p, "wb").write(struct.pack("<Q", len(head)) + head + np.array([1, 2], "<f4").tobytes())
    >>> read_safetensors(p)
    {'w': tensor([1., 2.])}
    """
    path = checked_file(path, max_bytes)
    data = path.read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if not 0 < length <= len(data) - 8:
            raise ValueError(f"header length {length} does not fit the file")
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        body = memoryview(data)[8 + length :]
        out: dict[str, torch.Tensor] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSOR_DTYPES.get(str(info.get("dtype")))
            if dtype is None:
                raise ValueError(f"tensor {name}: unsupported dtype {info.get('dtype')!r}")
            start, end = (int(x) for x in info["data_offsets"])
            shape = [int(x) for x in info["shape"]]
            count = int(np.prod(shape)) if shape else 1
            if not 0 <= start <= end <= len(body) or end - start != count * np.dtype(dtype).itemsize:
                raise ValueError(f"tensor {name}: offsets {start}..{end} do not fit its shape {shape} or the file")
            array = np.frombuffer(body[start:end], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
            out[str(name)] = torch.from_numpy(array.astype(dtype, copy=True))
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if not out:
        raise CheckpointError(f"{path}: holds no tensors")
    return out


def _inert(module: str, name: str) -> type:
    """A placeholder class that records what it is given and does nothing else."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def setstate(self: Any, state: Any) -> None:
        self.state = state

    cls = type(name, (), {"__init__": init, "__setstate__": setstate, "__module__": module})
    cls.__qualname__ = name
    return cls


def read_checkpoint_state(path: PathLike, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, torch.Tensor]:
    """The flat state dict of a frame-model checkpoint, read with ``torch.load(weights_only=True)``.

    Only the names in :data:`INERT_GLOBALS` and torch's ``TorchVersion`` are allowed beyond what safe loading
    accepts anyway; anything else (or a damaged file) is a :class:`~mvector.errors.CheckpointError`.

    >>> import tempfile
    >>> p = tempfile.mkdtemp() + "/x.bin"
    >>> torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {}}, p)
    >>> read_checkpoint_state(p)
    {'w': tensor([1.])}
    """
    from torch.torch_version import TorchVersion

    path = checked_file(path, max_bytes)
    allowed = [TorchVersion] + [_inert(m, n) for m, n in INERT_GLOBALS]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever a damaged or foreign file raises, one clear error
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (damaged, another format, or holding objects other than "
            "tensors and the few known pyannote task records, which safe loading refuses)"
        ) from err
    return flat_state(data, str(path))


def build_frame_model(entry: Mapping[str, Any]) -> torch.nn.Module:
    """An untrained network of the entry's architecture and ``model_conf``.

    >>> type(build_frame_model(catalogue_entry("segmentation_3_0"))).__name__
    'PyanNet'
    """
    arch = str(entry.get("architecture"))
    classes = _architectures()
    if arch not in classes:
        raise ConfigError(f"unknown frame-model architecture {arch!r}; valid: {', '.join(classes)}")
    try:
        return classes[arch](**dict(entry.get("model_conf") or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model_conf of {arch}: {err}") from err


def import_frame_model(
    checkpoint: Union[PathLike, Mapping[str, Any]],
    output_dir: PathLike,
    name: str = "segmentation_3_0",
    *,
    entry: Mapping[str, Any] | None = None,
    catalogue: Catalogue = None,
    check_hash: bool = True,
    overwrite: bool = False,
) -> ImportReport:
    """Import a segmentation / VAD checkpoint (a file or a loaded state dict) as a checked model folder.

    The same rules as :func:`mvector.pretrained.importer.import_checkpoint`: a file must carry the catalogue's
    sha256 unless ``check_hash`` is False, every tensor must fit, and an existing folder is only replaced when it
    is an mvector model folder and ``overwrite`` is set.
    """
    entry = dict(entry) if entry is not None else catalogue_entry(name, catalogue)
    name = str(entry.get("name", name))
    entry["name"] = name

    def reader(path: PathLike) -> dict[str, torch.Tensor]:
        return read_safetensors(path) if str(path).endswith(".safetensors") else read_checkpoint_state(path)

    state, where, sha = load_checked_state(checkpoint, entry, check_hash, reader)
    model = build_frame_model(entry)
    refuse_misfit(model, state, where, str(entry["architecture"]), name)
    model.load_state_dict({k: state[k] for k in model.state_dict()}, strict=True)
    out = Path(output_dir).expanduser()
    check_target_folder(out, overwrite)
    config = {
        "kind": entry.get("kind", "segmentation"),
        "use_model": entry["architecture"],
        "model_conf": dict(entry.get("model_conf") or {}),
        "input": dict(entry.get("input") or {}),
    }
    extra = {"pretrained": pretrained_record(entry, name, checkpoint, sha, len(model.state_dict()))}
    folder = save_checkpoint(
        out, model_state=model.state_dict(), config=config, epoch=0, step=0, best_eer=None, extra=extra
    )
    params = sum(p.numel() for p in model.parameters())
    notes = [] if sha is not None else ["imported from an in-memory state dict: no file hash recorded"]
    return ImportReport(folder, name, len(model.state_dict()), params, sha, notes)


def load_frame_model(folder: PathLike, kind: str | None = None) -> torch.nn.Module:
    """The network of an imported frame-model folder, in eval mode (every file's hash checked).

    ``kind`` (``"segmentation"`` / ``"vad"``) refuses a folder holding another kind of model.
    """
    ckpt = load_checkpoint(folder)
    conf = ckpt.config
    found = conf.get("kind")
    if found not in ("segmentation", "vad"):
        raise CheckpointError(f"{folder}: not a segmentation or VAD model folder (an embedding model?)")
    if kind is not None and found != kind:
        raise CheckpointError(f"{folder}: holds a {found} model, not a {kind} model")
    model = build_frame_model({"architecture": conf.get("use_model"), "model_conf": conf.get("model_conf")})
    problems = check_state_dict(model, ckpt.model_state)
    if problems:
        raise CheckpointError(f"{folder}/model.pt does not fit {conf.get('use_model')}: {problems[0]}")
    model.load_state_dict(ckpt.model_state, strict=True)
    return model.eval()
