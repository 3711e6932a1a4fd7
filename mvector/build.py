"""The build layer: configuration → embedding model, head, optimiser and schedule; model folder → embedding model.

Everything that turns a configuration or a folder into a working object goes through here, so training,
evaluation, the predictor and export build models the same way. It depends on nothing above it.

* :data:`EMBEDDING_KEYS` is the one list of configuration keys that change an embedding (model, features, audio
  preprocessing): a checkpoint's values win over a user's for these, and two configurations that differ in one of
  them make different embeddings.
* :func:`build_embedding_model` (featurizer + backbone), :func:`build_head_for`, :func:`build_optimizer_for`,
  :func:`build_scheduler_for` build from a whole configuration (``*_for``, like :func:`build_featurizer_for`);
  the registries' ``build_head`` / ``build_optimizer`` / ``build_scheduler`` build from a name or one section.
  The featurizer's sample rate is the dataset's.
* :func:`resolve_model_dir` finds a model folder (recovering an interrupted save the same way for every reader);
  :func:`model_from_checkpoint` rebuilds the model of a checkpoint folder with its stored configuration.

>>> import tempfile
>>> from mvector.demo import tiny_checkpoint
>>> model, config, fingerprint = model_from_checkpoint(tiny_checkpoint(tempfile.mkdtemp()))
>>> model.embd_dim, config["use_model"], len(fingerprint)
(32, 'TDNN', 64)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import torch

from mvector.checkpoint import load_checkpoint, model_fingerprint, recover_checkpoint
from mvector.config import load_config
from mvector.errors import CheckpointError, ConfigError
from mvector.features import build_featurizer
from mvector.models import EmbeddingModel, build_backbone, build_head
from mvector.optim import build_optimizer, build_scheduler

__all__ = [
    "EMBEDDING_KEYS",
    "MODEL_FILES",
    "config_differences",
    "model_name",
    "build_featurizer_for",
    "build_embedding_model",
    "build_head_for",
    "build_optimizer_for",
    "build_scheduler_for",
    "resolve_model_dir",
    "stored_config",
    "model_from_checkpoint",
    "merge_model_config",
]

PathLike = Union[str, os.PathLike]

#: Configuration keys that change an embedding: a whole section, or ``section.key``.
EMBEDDING_KEYS: tuple[str, ...] = (
    "use_model",
    "preprocess_conf",
    "feature_conf",
    "model_conf",
    "dataset_conf.sample_rate",
    "dataset_conf.use_dB_normalization",
    "dataset_conf.target_dB",
    "dataset_conf.vad",
)

#: Files that make a folder a model folder: a trainer checkpoint, a TorchScript or an ONNX export.
MODEL_FILES = ("model.pt", "model.ts", "model.onnx")


def _lookup(conf: Mapping[str, Any], dotted: str) -> Any:
    node: Any = conf
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str] = EMBEDDING_KEYS) -> list[str]:
    """``"key: a vs b"`` for every key (a section or ``section.key``) where the two configurations differ.

    >>> config_differences({"use_model": "TDNN", "model_conf": {"channels": 8}},
    ...                    {"use_model": "TDNN", "model_conf": {"channels": 16}})
    ['model_conf.channels: 8 vs 16']
    """
    diffs = []
    for key in keys:
        va, vb = _lookup(a, key), _lookup(b, key)
        if isinstance(va, Mapping) or isinstance(vb, Mapping):
            va, vb = dict(va or {}), dict(vb or {})
            for sub in sorted(set(va) | set(vb)):
                if va.get(sub) != vb.get(sub):
                    diffs.append(f"{key}.{sub}: {va.get(sub)!r} vs {vb.get(sub)!r}")
        elif va != vb:
            diffs.append(f"{key}: {va!r} vs {vb!r}")
    return diffs


def model_name(conf: Mapping[str, Any]) -> str:
    """``<Model>_<Feature>``: the folder a run's checkpoints go to.

    >>> model_name({"use_model": "EcapaTdnn", "preprocess_conf": {"feature_method": "Fbank"}})
    'EcapaTdnn_Fbank'
    """
    return f"{conf['use_model']}_{conf['preprocess_conf']['feature_method']}"


def build_featurizer_for(conf: Mapping[str, Any]) -> torch.nn.Module:
    """The featurizer of a configuration; its sample rate is ``dataset_conf.sample_rate`` (one rate per run)."""
    feature_conf = dict(conf.get("feature_conf") or {})
    method = conf["preprocess_conf"]["feature_method"]
    rate = int((conf.get("dataset_conf") or {}).get("sample_rate") or feature_conf.get("sample_rate") or 16000)
    if "sample_frequency" not in feature_conf:
        feature_conf["sample_rate"] = rate
    return build_featurizer(method, feature_conf, normalize=conf["preprocess_conf"]["normalize"])


def build_embedding_model(conf: Mapping[str, Any]) -> EmbeddingModel:
    """Featurizer + backbone (waveform → embedding) for a configuration.

    >>> from mvector.config import load_config
    >>> conf = load_config("tdnn", {"model_conf.channels": "16", "model_conf.stats_channels": "32"})
    >>> build_embedding_model(conf).embd_dim
    192
    """
    featurizer = build_featurizer_for(conf)
    backbone = build_backbone(conf["use_model"], featurizer.feature_dim, **(conf.get("model_conf") or {}))
    return EmbeddingModel(featurizer, backbone)


def build_head_for(conf: Mapping[str, Any], embd_dim: int, num_speakers: int) -> tuple[torch.nn.Module, dict | None]:
    """The classifier head of ``use_loss``/``loss_conf`` and the margin-schedule settings (or None).

    >>> head, schedule = build_head_for({"use_loss": "AAM", "loss_conf": {"margin_scheduler": {"end_epoch": 2}}}, 8, 3)
    >>> type(head).__name__, schedule
    ('AAMHead', {'end_epoch': 2})
    """
    loss_conf = dict(conf.get("loss_conf") or {})
    schedule = loss_conf.pop("margin_scheduler", None)
    return build_head(conf["use_loss"], embd_dim, num_speakers, **loss_conf), schedule


def build_optimizer_for(params: Iterable[torch.nn.Parameter], conf: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimiser of a configuration's ``optimizer_conf`` (:func:`mvector.optim.build_optimizer`).

    >>> from mvector.config import load_config
    >>> type(build_optimizer_for([torch.nn.Parameter(torch.zeros(1))], load_config(validate=False))).__name__
    'Adam'
    """
    return build_optimizer(params, conf["optimizer_conf"])


def build_scheduler_for(optimizer: torch.optim.Optimizer, conf: Mapping[str, Any], steps_per_epoch: int) -> Any:
    """The per-step learning-rate schedule of a configuration's ``optimizer_conf`` over ``train_conf.max_epoch``
    epochs (:func:`mvector.optim.build_scheduler`).

    >>> from mvector.config import load_config
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> build_scheduler_for(opt, load_config(validate=False), steps_per_epoch=10).total_steps
    300
    """
    return build_scheduler(optimizer, conf["optimizer_conf"], steps_per_epoch, int(conf["train_conf"]["max_epoch"]))


def resolve_model_dir(model_path: PathLike) -> Path:
    """The model folder for ``model_path``: the folder itself, or its ``best_model`` when given the parent.

    ``models/EcapaTdnn_MelSpectrogram`` (which the trainer fills with ``best_model``, ``last_model``,
    ``epoch_N``) resolves to ``models/EcapaTdnn_MelSpectrogram/best_model``; a path to ``model.pt`` resolves to
    its folder. A save
    that was interrupted between its two renames is recovered first (the same rule for every reader). A missing
    folder raises :class:`~mvector.errors.CheckpointError`.

    >>> resolve_model_dir("no/such/folder")
    Traceback (most recent call last):
    ...
    mvector.errors.CheckpointError: model folder no/such/folder does not exist; train one (train.py), ...
    """
    path = Path(model_path).expanduser()
    if path.is_file() and path.name in MODEL_FILES:
        path = path.parent
    for candidate in (path, path / "best_model"):
        if not candidate.is_dir() and candidate.with_name(f"{candidate.name}.old").is_dir():
            try:
                recover_checkpoint(candidate)
            except OSError as err:
                raise CheckpointError(f"{candidate}: an interrupted save could not be recovered ({err})") from err
    if not path.is_dir():
        raise CheckpointError(
            f"model folder {path} does not exist; train one (train.py), export one (export_model.py), "
            "import one (mvector import) or pass --model_path"
        )
    if not any((path / f).is_file() for f in MODEL_FILES) and (path / "best_model" / "model.pt").is_file():
        path = path / "best_model"
    return path


def stored_config(data: Mapping[str, Any], where: PathLike) -> dict[str, Any]:
    """A stored configuration completed with today's defaults (keys added since it was written).

    A stored configuration that is no longer valid is a :class:`~mvector.errors.CheckpointError` naming ``where``.
    """
    try:
        return load_config(dict(data), validate=False)
    except ConfigError as err:
        raise CheckpointError(f"{where}: the stored configuration is not valid: {err}") from err


def model_from_checkpoint(model_path: PathLike, device: str | torch.device = "cpu"):
    """Rebuild the waveform-to-embedding model of a trainer checkpoint folder.

    Returns ``(model, config, fingerprint)``: the :class:`~mvector.models.EmbeddingModel` in eval mode on
    ``device``, the configuration stored with the weights (completed with defaults) and the sha256 of
    ``model.pt`` that speaker databases are tied to.
    """
    folder = resolve_model_dir(model_path)
    if not (folder / "model.pt").is_file():
        raise CheckpointError(
            f"{folder} holds no model.pt: not a trainer checkpoint (an exported folder is loaded with "
            "backend='torchscript' or 'onnx')"
        )
    ckpt = load_checkpoint(folder, map_location="cpu")
    config = stored_config(ckpt.config, folder / "config.yml")
    try:
        model = build_embedding_model(config)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.yml'}: cannot build the stored model: {err}") from err
    try:
        model.backbone.load_state_dict(ckpt.model_state)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{folder}: the weights do not fit the stored configuration ({reason})") from err
    return model.to(device).eval(), config, model_fingerprint(folder)


def merge_model_config(run_conf: Mapping[str, Any], stored: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``run_conf`` with every :data:`EMBEDDING_KEYS` value taken from ``stored``, and the differences it had.

    >>> merged, diffs = merge_model_config({"use_model": "TDNN", "dataset_conf": {"batch_size": 4}},
    ...                                    {"use_model": "EcapaTdnn", "dataset_conf": {"batch_size": 8}})
    >>> merged["use_model"], merged["dataset_conf"]["batch_size"], diffs
    ('EcapaTdnn', 4, ["use_model: 'TDNN' vs 'EcapaTdnn'"])
    """
    diffs = config_differences(run_conf, stored)
    merged = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in run_conf.items()}
    for key in EMBEDDING_KEYS:
        parts: Sequence[str] = key.split(".")
        value = _lookup(stored, key)
        if len(parts) == 1:
            merged[key] = dict(value) if isinstance(value, Mapping) else value
        else:
            merged.setdefault(parts[0], {})[parts[1]] = value
    return merged, diffs
