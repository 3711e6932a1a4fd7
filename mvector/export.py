"""Waveform → embedding in one module, and its export to TorchScript and ONNX.

:class:`EmbeddingModel` puts the featurizer in front of the backbone, so an exported model takes raw audio
(float32 ``[batch, samples]`` at the model's sample rate, plus each row's length in samples) and returns
embeddings ``[batch, embd_dim]``; no feature code is needed where the model is used.

- :func:`export_torchscript` traces the model (on the CPU) and checks the trace against the eager model on
  other batch sizes and lengths than the example; :func:`~mvector.embedding.backends.load_torchscript` loads it back.
- :func:`export_onnx` writes an ONNX graph with dynamic batch and length axes (TorchScript-based exporter,
  ``dynamo=False``), stores ``sample_rate`` and ``embd_dim`` in its metadata, and by default checks it with
  ONNX Runtime against PyTorch; :class:`~mvector.embedding.backends.OnnxEmbedder` runs it with numpy in and out.

ONNX needs the optional packages ``onnx`` and ``onnxruntime``: ``pip install "mvector[export]"``.

>>> import torch
>>> model = EmbeddingModel(_DemoFeaturizer(), _DemoBackbone()).eval()
>>> emb = model(torch.randn(2, 4000), torch.tensor([4000, 2500]))
>>> tuple(emb.shape), model.embd_dim, model.sample_rate
((2, 8), 8, 16000)
"""

from __future__ import annotations

import copy
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from torch import nn

from mvector.build import model_from_checkpoint, model_name, resolve_model_dir
from mvector.checkpoint import file_sha256
from mvector.embedding.backends import (
    ONNX_INPUT_NAMES,
    ONNX_OUTPUT_NAMES,
    OnnxEmbedder,
    require,
)
from mvector.errors import CheckpointError, MVectorError
from mvector.models.embedding_model import EmbeddingModel
from mvector.utils.files import atomic_write_bytes, atomic_write_json

__all__ = [
    "export_torchscript",
    "export_onnx",
    "EXPORT_FORMATS",
    "export_checkpoint",
]

PathLike = Union[str, os.PathLike]

_INPUT_NAMES = ONNX_INPUT_NAMES
_OUTPUT_NAMES = ONNX_OUTPUT_NAMES


# ---------------------------------------------------------------------------------------------- helpers


def _example_inputs(sample_rate: int, seconds: float, lengths_frac: Sequence[float]) -> tuple[torch.Tensor, ...]:
    """A padded batch of noise-like waveforms, one row per fraction of ``seconds``."""
    total = max(int(round(seconds * sample_rate)), 1)
    lengths = torch.tensor([max(int(total * f), 1) for f in lengths_frac], dtype=torch.long)
    gen = torch.Generator().manual_seed(1234)
    waves = 0.1 * torch.randn(len(lengths_frac), int(lengths.max()), generator=gen)
    mask = torch.arange(waves.shape[1])[None, :] < lengths[:, None]
    return waves * mask, lengths


def _check_cases(model: EmbeddingModel, seconds: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs unlike the example: another batch size, other lengths, a padded batch, and a single clip."""
    return [
        _example_inputs(model.sample_rate, seconds * 1.7, (1.0, 0.55, 0.8)),
        _example_inputs(model.sample_rate, seconds * 0.6, (1.0,)),
    ]


def _cpu_eval_copy(model: nn.Module) -> EmbeddingModel:
    if not isinstance(model, EmbeddingModel):
        raise TypeError(f"expected an EmbeddingModel (featurizer + backbone), got {type(model).__name__}")
    return copy.deepcopy(model).cpu().eval()


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> tuple[bool, float]:
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return a.shape == b.shape and diff <= tol * max(1.0, float(b.abs().max()) if b.numel() else 0.0), diff


def _atomic_target(path: PathLike) -> tuple[Path, Path]:
    """``path`` and a fresh temporary name beside it (created by the writer with the umask's permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


_require = require


def _metadata(model: EmbeddingModel) -> dict[str, str]:
    from mvector import __version__

    return {"sample_rate": str(model.sample_rate), "embd_dim": str(model.embd_dim), "mvector_version": __version__}


# ---------------------------------------------------------------------------------------------- TorchScript


def export_torchscript(model: EmbeddingModel, path: PathLike, example_seconds: float = 2.0) -> Path:
    """Trace ``model`` (a CPU copy in eval mode) to a TorchScript file at ``path`` and return the path.

    The trace is taken on a padded batch of two clips (``example_seconds`` long and 3/4 of that) and then
    compared with the eager model on a batch of three other lengths and on a single clip; a mismatch (a
    length or batch size baked into the trace) raises :class:`~mvector.errors.MVectorError` with the tracer's
    warnings, which point at the line responsible. The file also holds ``mvector.json`` (sample rate,
    embedding size, version) as an extra file. The traced model runs on the CPU.

    >>> import tempfile, os
    >>> model = EmbeddingModel(_DemoFeaturizer(), _DemoBackbone())
    >>> path = export_torchscript(model, os.path.join(tempfile.mkdtemp(), "model.pt"), example_seconds=0.5)
    >>> from mvector.embedding.backends import load_torchscript
    >>> ts = load_torchscript(path)
    >>> w, n = torch.randn(3, 5000), torch.tensor([5000, 4000, 3000])
    >>> bool(torch.allclose(ts(w, n), model.eval()(w, n), atol=1e-5))
    True
    """
    if not example_seconds > 0:
        raise ValueError(f"example_seconds must be > 0, got {example_seconds!r}")
    model = _cpu_eval_copy(model)
    example = _example_inputs(model.sample_rate, example_seconds, (1.0, 0.75))
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    tracer_notes = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    with torch.no_grad():
        for waves, lengths in _check_cases(model, example_seconds):
            ok, diff = _close(traced(waves, lengths), model(waves, lengths), 1e-4)
            if not ok:
                notes = "; ".join(dict.fromkeys(tracer_notes)) or "none"
                raise MVectorError(
                    f"the traced model does not generalise to batch {waves.shape[0]} × {waves.shape[1]} samples "
                    f"(max abs diff {diff:.3g}); something in the featurizer or backbone depends on the example's "
                    f"shape. Tracer warnings: {notes}"
                )
    path, tmp = _atomic_target(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.save.* is deprecated", category=DeprecationWarning)
            torch.jit.save(traced, str(tmp), _extra_files={"mvector.json": json.dumps(_metadata(model))})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------- ONNX


def export_onnx(
    model: EmbeddingModel,
    path: PathLike,
    opset: int = 17,
    example_seconds: float = 2.0,
    verify: bool = True,
) -> Path:
    """Export ``model`` to ONNX at ``path`` with dynamic batch and length axes; returns the path.

    Inputs ``waveforms`` (float32 ``[batch, samples]``) and ``lengths`` (int64 ``[batch]``), output
    ``embeddings`` (float32 ``[batch, embd_dim]``). Uses the TorchScript-based exporter (``dynamo=False``;
    opset 17 is the first with an STFT operator). With ``verify`` the graph is run with ONNX Runtime on other
    batch sizes and lengths (including a padded batch) and must match PyTorch within 1e-4; otherwise an
    :class:`~mvector.errors.MVectorError` says by how much. Needs ``onnx`` and ``onnxruntime``.

    >>> import tempfile, os
    >>> import numpy as np
    >>> model = EmbeddingModel(_DemoFeaturizer(), _DemoBackbone())
    >>> path = export_onnx(model, os.path.join(tempfile.mkdtemp(), "model.onnx"), example_seconds=0.5)
    >>> embedder = OnnxEmbedder(path)
    >>> w = np.random.default_rng(0).standard_normal((2, 3000)).astype("float32")
    >>> out = embedder(w, np.array([3000, 2000]))
    >>> ref = model.eval()(torch.from_numpy(w), torch.tensor([3000, 2000])).detach().numpy()
    >>> out.shape, embedder.sample_rate, bool(np.abs(out - ref).max() < 1e-4)
    ((2, 8), 16000, True)
    """
    onnx = _require("onnx")
    if verify:
        _require("onnxruntime")
    if not example_seconds > 0:
        raise ValueError(f"example_seconds must be > 0, got {example_seconds!r}")
    model = _cpu_eval_copy(model)
    example = _example_inputs(model.sample_rate, example_seconds, (1.0, 0.75))
    path, tmp = _atomic_target(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*return_complex=False.*")
            _onnx_export(
                model,
                example,
                str(tmp),
                input_names=_INPUT_NAMES,
                output_names=_OUTPUT_NAMES,
                dynamic_axes={
                    "waveforms": {0: "batch", 1: "samples"},
                    "lengths": {0: "batch"},
                    "embeddings": {0: "batch"},
                },
                opset_version=int(opset),
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        for key, value in _metadata(model).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if verify:
            embedder = OnnxEmbedder(tmp)
            with torch.no_grad():
                for waves, lengths in [example, *_check_cases(model, example_seconds)]:
                    ref = model(waves, lengths)
                    got = torch.from_numpy(embedder(waves.numpy(), lengths.numpy()))
                    ok, diff = _close(got, ref, 1e-4)
                    if not ok:
                        raise MVectorError(
                            f"ONNX Runtime output differs from PyTorch for batch {waves.shape[0]} × "
                            f"{waves.shape[1]} samples (max abs diff {diff:.3g}); the export is not usable"
                        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _onnx_export(*args: Any, **kwargs: Any) -> None:
    """``torch.onnx.export`` with its (very long) failure messages cut to the reason."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*feature will be removed", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            torch.onnx.export(*args, **kwargs)
    except Exception as err:  # the exporter raises many types (SymbolicValueError, RuntimeError, ...)
        reason = str(err).split(" [Caused by", 1)[0].strip().splitlines()
        raise MVectorError(
            f"ONNX export failed: {reason[0] if reason else type(err).__name__} "
            "(an operator in the featurizer or backbone has no ONNX form for dynamic shapes)"
        ) from err


# ---------------------------------------------------------------------------------------------- model folders

#: Files of a model folder that travel with it into an export when present: its calibration and operating point.
CARRIED_FILES = ("calibration.json", "score_norm.npz")

#: Formats :func:`export_checkpoint` writes, and the file each one becomes in the output folder.
EXPORT_FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}


def _stored_threshold(folder: Path) -> float | None:
    path = folder / "result.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("threshold")
    except (ValueError, AttributeError, RecursionError) as err:
        raise CheckpointError(f"{path}: damaged JSON ({err})") from err
    return None if value is None else float(value)


def export_checkpoint(
    model_path: PathLike,
    output_dir: PathLike,
    formats: Sequence[str] = ("torchscript", "onnx"),
    opset: int = 17,
    example_seconds: float = 2.0,
) -> Path:
    """Export a trainer checkpoint folder to a self-contained inference folder; returns ``output_dir``.

    ``output_dir`` receives ``model.ts`` (TorchScript) and/or ``model.onnx`` (see :func:`export_torchscript`
    and :func:`export_onnx`, which check the exported model against PyTorch), ``config.yml`` (a byte copy of
    the checkpoint's config) and ``meta.json``: ``fingerprint`` (the sha256 of the checkpoint's ``model.pt``,
    so a speaker database made with the checkpoint also works with the export), ``threshold`` (from the
    checkpoint's ``result.json``; null when it was never evaluated), ``embd_dim``, ``sample_rate``,
    ``library_version``, ``formats``, ``model`` and ``source``. ``meta.json`` is removed first and written last,
    so an interrupted export is never taken for a complete one; a model file of a format not asked for this time
    is removed. :class:`~mvector.inference.predictor.MVectorPredictor` loads the folder (``backend="torchscript"`` or
    ``"onnx"``).

    >>> import tempfile, os
    >>> from mvector.demo import tiny_checkpoint
    >>> out = export_checkpoint(tiny_checkpoint(tempfile.mkdtemp()), os.path.join(tempfile.mkdtemp(), "export"),
    ...                         formats=["torchscript"], example_seconds=0.5)
    >>> sorted(p.name for p in out.iterdir())
    ['config.yml', 'meta.json', 'model.ts']
    >>> meta = json.loads((out / "meta.json").read_text())
    >>> meta["embd_dim"], meta["sample_rate"], meta["threshold"], meta["formats"]
    (32, 16000, 0.5, ['torchscript'])
    """
    from mvector import __version__
    from mvector.errors import unknown_name_error

    if isinstance(formats, str):
        formats = [formats]
    wanted = list(dict.fromkeys(str(f).lower() for f in formats))
    if not wanted:
        raise unknown_name_error("export format", "", EXPORT_FORMATS)
    for fmt in wanted:
        if fmt not in EXPORT_FORMATS:
            raise unknown_name_error("export format", fmt, EXPORT_FORMATS)
    if "onnx" in wanted:
        _require("onnx")
        _require("onnxruntime")
    source = resolve_model_dir(model_path)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise MVectorError(f"output folder {out} is a file")
    if out.is_dir() and ((out / "state.json").exists() or out.resolve() == source.resolve()):
        raise MVectorError(f"{out} is a training checkpoint folder; export into a folder of its own")
    model, config, fingerprint = model_from_checkpoint(source)
    threshold = _stored_threshold(source)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    for fmt, filename in EXPORT_FORMATS.items():
        if fmt not in wanted:
            (out / filename).unlink(missing_ok=True)
    if "torchscript" in wanted:
        export_torchscript(model, out / EXPORT_FORMATS["torchscript"], example_seconds=example_seconds)
    if "onnx" in wanted:
        export_onnx(model, out / EXPORT_FORMATS["onnx"], opset=opset, example_seconds=example_seconds)
    atomic_write_bytes(out / "config.yml", (source / "config.yml").read_bytes())
    for name in CARRIED_FILES:
        if (source / name).is_file():
            atomic_write_bytes(out / name, (source / name).read_bytes())
        else:
            (out / name).unlink(missing_ok=True)
    meta = {
        "fingerprint": fingerprint,
        "threshold": threshold,
        "embd_dim": model.embd_dim,
        "sample_rate": model.sample_rate,
        "library_version": __version__,
        "formats": [f for f in EXPORT_FORMATS if f in wanted],
        "model": model_name(config),
        "source": str(source.absolute()),
        # The exported files' own hashes: a model file swapped after export is refused when loading.
        "files": {EXPORT_FORMATS[f]: file_sha256(out / EXPORT_FORMATS[f]) for f in EXPORT_FORMATS if f in wanted},
    }
    atomic_write_json(out / "meta.json", meta)
    return out


# ---------------------------------------------------------------------------------------------- doc examples


class _DemoFeaturizer(nn.Module):
    """Tiny length-aware featurizer for the examples: 25 ms frames every 10 ms, 8 log-energy sub-bands.

    Framing is a strided convolution (exportable with dynamic lengths, unlike ``Tensor.unfold``).
    """

    sample_rate = 16000
    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        bands = torch.zeros(8, 1, 400)
        for k in range(8):
            bands[k, 0, k * 50 : (k + 1) * 50] = 1.0 / 50
        self.register_buffer("bands", bands, persistent=False)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energy = torch.nn.functional.conv1d(waveforms[:, None, :].pow(2), self.bands, stride=160)
        feats = torch.log(energy + 1e-6).transpose(1, 2)  # [B, frames, 8]
        frame_lengths = torch.div(lengths - 400, 160, rounding_mode="floor") + 1
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None]
        return feats * mask[..., None], frame_lengths


class _DemoBackbone(nn.Module):
    """Tiny backbone for the examples: a linear layer per frame and a length-masked mean."""

    embd_dim = 8

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Linear(8, 8)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(8, 8, generator=gen) * 0.3)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]).float()
        hidden = torch.tanh(self.proj(features)) * mask[..., None]
        return hidden.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
