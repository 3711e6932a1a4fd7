"""Inference backends behind one small interface: a waveform batch in, embeddings out.

Every backend is an :class:`Embedder`: it knows its ``sample_rate``, ``embd_dim``, ``fingerprint`` (the identity
of the weights that speaker databases are tied to) and ``config`` (the configuration the model was trained with),
and ``embedder(waves [B, T] float32, lengths [B] int64)`` returns float32 embeddings ``[B, embd_dim]`` as numpy.
A new runtime is one class registered in :data:`BACKENDS`.

=============== ============================ ==================================================================
``torch``       a trainer checkpoint folder  ``model.pt`` + ``config.yml`` + ``state.json`` (weights only)
``onnx``        an export folder             ``model.onnx`` + ``config.yml`` + ``meta.json`` (a graph, no code)
``torchscript`` an export folder             ``model.ts`` — **TorchScript is code**: loading one runs what it
                                             holds, so load only files you trust. ``auto`` never picks it when
                                             ONNX or the checkpoint is there.
=============== ============================ ==================================================================

>>> import tempfile, numpy as np
>>> from mvector.demo import tiny_checkpoint
>>> embedder = open_backend(tiny_checkpoint(tempfile.mkdtemp()))
>>> embedder.name, embedder.embd_dim, embedder.sample_rate
('torch', 32, 16000)
>>> embedder(np.zeros((2, 8000), "float32"), np.array([8000, 4000])).shape
(2, 32)
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from mvector.build import model_from_checkpoint, resolve_model_dir, stored_config
from mvector.checkpoint import file_sha256
from mvector.errors import CheckpointError, ConfigError, MVectorError
from mvector.registry import Registry

__all__ = [
    "BACKENDS",
    "BACKEND_FILES",
    "ONNX_INPUT_NAMES",
    "ONNX_OUTPUT_NAMES",
    "EXPORT_INSTALL_HINT",
    "ExportDependencyError",
    "Embedder",
    "TorchBackend",
    "TorchScriptBackend",
    "OnnxBackend",
    "OnnxEmbedder",
    "load_torchscript",
    "open_backend",
    "pick_backend",
    "read_export_meta",
]

PathLike = Union[str, os.PathLike]

#: How to install the optional ONNX dependencies.
EXPORT_INSTALL_HINT = 'pip install "mvector[export]"'
ONNX_INPUT_NAMES = ["waveforms", "lengths"]
ONNX_OUTPUT_NAMES = ["embeddings"]

#: Backend name -> the model file it loads.
BACKEND_FILES = {"torch": "model.pt", "onnx": "model.onnx", "torchscript": "model.ts"}
#: Backends by name (``backend=`` of the predictor, ``--backend`` of the scripts).
BACKENDS = Registry("backend", section="backend")


class ExportDependencyError(MVectorError, ImportError):
    """An optional export dependency (``onnx``, ``onnxruntime``) is missing."""


def require(module: str) -> Any:
    """Import an optional ONNX dependency or raise :class:`ExportDependencyError` saying how to install it."""
    try:
        return __import__(module)
    except ImportError as err:
        raise ExportDependencyError(
            f"ONNX export and inference need the '{module}' package: {EXPORT_INSTALL_HINT}"
        ) from err


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=dtype)


class Embedder:
    """The interface every backend implements (see the module docstring)."""

    name = ""
    sample_rate: int = 16000
    embd_dim: int = 0
    fingerprint: str = ""
    config: dict[str, Any] = {}
    folder: Path

    def __call__(self, waveforms: Any, lengths: Any) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, embd_dim={self.embd_dim}, sample_rate={self.sample_rate})"


@BACKENDS.register("torch", aliases=("pytorch", "checkpoint"))
class TorchBackend(Embedder):
    """A trainer checkpoint folder run with PyTorch on ``device`` (weights loaded with ``weights_only``)."""

    name = "torch"

    def __init__(self, folder: PathLike, device: str | torch.device = "cpu") -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.model, self.config, self.fingerprint = model_from_checkpoint(self.folder, self.device)
        self.embd_dim = int(self.model.embd_dim)
        self.sample_rate = int(self.model.sample_rate)

    @torch.inference_mode()
    def __call__(self, waveforms: Any, lengths: Any) -> np.ndarray:
        waves = torch.as_tensor(_numpy(waveforms, np.float32)).to(self.device, non_blocking=True)
        lens = torch.as_tensor(_numpy(lengths, np.int64)).to(self.device, non_blocking=True)
        return self.model(waves, lens).float().cpu().numpy()


def read_export_meta(folder: PathLike) -> dict[str, Any]:
    """The ``meta.json`` of an export folder, checked for the fields inference needs."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(
            f"{path}: missing or damaged export metadata ({err}); export the model again with export_model.py"
        ) from err
    missing = [k for k in ("fingerprint", "embd_dim", "sample_rate") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"{path}: export metadata lacks {', '.join(missing)}; export the model again")
    return meta


class _ExportBackend(Embedder):
    """Shared loading of an export folder: ``config.yml`` and ``meta.json``, and the model file's own hash."""

    def _load_folder(self, folder: PathLike) -> Path:
        self.folder = Path(folder)
        meta = read_export_meta(self.folder)
        config_path = self.folder / "config.yml"
        if not config_path.is_file():
            raise CheckpointError(f"{config_path}: missing; an exported folder keeps the model's config.yml")
        from mvector.config import load_config

        try:
            raw = load_config(config_path, validate=False)
        except MVectorError as err:
            raise CheckpointError(f"{config_path}: the stored configuration is not valid: {err}") from err
        self.config = stored_config(raw, config_path)
        self.fingerprint = str(meta["fingerprint"])
        self.embd_dim = int(meta["embd_dim"])
        self.sample_rate = int(meta["sample_rate"])
        model_file = self.folder / BACKEND_FILES[self.name]
        expected = (meta.get("files") or {}).get(model_file.name)
        if expected is not None and file_sha256(model_file) != expected:
            raise CheckpointError(
                f"{model_file}: does not match the sha256 in meta.json (replaced after export); export the model "
                "again"
            )
        return model_file


def load_torchscript(path: PathLike, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load a model written by :func:`mvector.export.export_torchscript` (eval mode).

    **A TorchScript file is code**: loading it runs the TorchScript program it holds, so load only files you
    trust (prefer ONNX or the checkpoint for files received from others). A missing or unreadable file raises
    :class:`~mvector.errors.CheckpointError`.

    >>> load_torchscript("no/such/model.pt")
    Traceback (most recent call last):
    ...
    mvector.errors.CheckpointError: no/such/model.pt: TorchScript model not found
    """
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: TorchScript model not found")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location=map_location)
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a TorchScript model written by export_torchscript ({err})") from err
    return module.eval()


@BACKENDS.register("torchscript", aliases=("ts", "jit"))
class TorchScriptBackend(_ExportBackend):
    """``model.ts`` of an export folder (TorchScript: code — see :func:`load_torchscript`)."""

    name = "torchscript"

    def __init__(self, folder: PathLike, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = load_torchscript(self._load_folder(folder), map_location=self.device)

    @torch.inference_mode()
    def __call__(self, waveforms: Any, lengths: Any) -> np.ndarray:
        waves = torch.as_tensor(_numpy(waveforms, np.float32)).to(self.device)
        lens = torch.as_tensor(_numpy(lengths, np.int64)).to(self.device)
        return self.model(waves, lens).float().cpu().numpy()


class OnnxEmbedder:
    """Run an ONNX model from :func:`mvector.export.export_onnx` with ONNX Runtime: numpy in, numpy out.

    ``embedder(waveforms, lengths)`` takes float32 ``[batch, samples]`` (or one 1-D clip) and int64 lengths
    (``None``: full rows) and returns float32 ``[batch, embd_dim]``. ``sample_rate`` and ``embd_dim`` come
    from the model's metadata. ``providers`` defaults to the CPU provider.

    >>> OnnxEmbedder("no/such/model.onnx")
    Traceback (most recent call last):
    ...
    mvector.errors.CheckpointError: no/such/model.onnx: ONNX model not found
    """

    def __init__(self, path: PathLike, providers: Sequence[str] | None = None, num_threads: int | None = None):
        ort = require("onnxruntime")
        if not Path(path).is_file():
            raise CheckpointError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: cannot load the ONNX model ({err})") from err
        names = [i.name for i in self.session.get_inputs()]
        if names != ONNX_INPUT_NAMES:
            raise CheckpointError(f"{path}: expected inputs {ONNX_INPUT_NAMES} (an mvector export), got {names}")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.path = Path(path)
        self.sample_rate = int(meta.get("sample_rate", 16000))
        self.embd_dim = int(meta["embd_dim"]) if "embd_dim" in meta else None

    def __call__(self, waveforms: Any, lengths: Any = None) -> np.ndarray:
        waves = _numpy(waveforms, np.float32)
        if waves.ndim == 1:
            waves = waves[None, :]
        if waves.ndim != 2:
            raise ValueError(f"waveforms must have shape [batch, samples] or [samples], got {waves.shape}")
        if lengths is None:
            lens = np.full(waves.shape[0], waves.shape[1], dtype=np.int64)
        else:
            lens = _numpy(lengths, np.int64).reshape(-1)
            if lens.shape[0] != waves.shape[0]:
                raise ValueError(f"got {lens.shape[0]} lengths for {waves.shape[0]} waveforms")
            if lens.size and (lens.min() < 1 or lens.max() > waves.shape[1]):
                raise ValueError(f"lengths must lie in 1..{waves.shape[1]} (the padded length), got {lens.tolist()}")
        (out,) = self.session.run(ONNX_OUTPUT_NAMES, {"waveforms": waves, "lengths": lens})
        return out.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"OnnxEmbedder({str(self.path)!r}, sample_rate={self.sample_rate}, embd_dim={self.embd_dim})"


@BACKENDS.register("onnx", aliases=("onnxruntime",))
class OnnxBackend(_ExportBackend):
    """``model.onnx`` of an export folder run with ONNX Runtime (CUDA provider with ``device="cuda"``)."""

    name = "onnx"

    def __init__(self, folder: PathLike, device: str | torch.device = "cpu") -> None:
        model_file = self._load_folder(folder)
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            ort = require("onnxruntime")
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    "use_gpu with the ONNX backend needs onnxruntime-gpu (CUDAExecutionProvider); "
                    "install it or pass use_gpu=False"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = OnnxEmbedder(model_file, providers=providers)
        if self.session.embd_dim is not None and self.session.embd_dim != self.embd_dim:
            raise CheckpointError(
                f"{self.folder}: model.onnx makes {self.session.embd_dim}-dim embeddings but meta.json says "
                f"{self.embd_dim}"
            )

    def __call__(self, waveforms: Any, lengths: Any) -> np.ndarray:
        return self.session(waveforms, lengths)


#: The order ``backend="auto"`` tries: the checkpoint, then ONNX; TorchScript (code) only when nothing else is there.
AUTO_ORDER = ("torch", "onnx", "torchscript")


def pick_backend(folder: PathLike, backend: str = "auto") -> str:
    """The backend to use for a model folder: ``backend`` itself (checked), or the first of :data:`AUTO_ORDER`.

    >>> import tempfile
    >>> from mvector.demo import tiny_checkpoint
    >>> pick_backend(tiny_checkpoint(tempfile.mkdtemp()))
    'torch'
    """
    folder = Path(folder)
    if backend == "auto":
        for name in AUTO_ORDER:
            if (folder / BACKEND_FILES[name]).is_file():
                return name
        raise CheckpointError(f"{folder} holds no model.pt, model.onnx or model.ts: not a model folder")
    name = BACKENDS.resolve(backend)
    if not (folder / BACKEND_FILES[name]).is_file():
        hint = "a trainer checkpoint" if name == "torch" else "an export (export_model.py --formats ...)"
        raise CheckpointError(f"{folder} has no {BACKEND_FILES[name]} for backend {name!r}; it needs {hint}")
    return name


def open_backend(model_path: PathLike, backend: str = "auto", device: str | torch.device = "cpu") -> Embedder:
    """Open a model folder (checkpoint or export; its parent means ``best_model``) with a backend."""
    folder = resolve_model_dir(model_path)
    return BACKENDS.get_entry(pick_backend(folder, backend))(folder, device)
