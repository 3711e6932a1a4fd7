"""YAML configuration: bundled names or paths, documented defaults, dotted overrides, strict validation.

A configuration is a plain nested ``dict`` with the sections ``dataset_conf``, ``preprocess_conf``,
``feature_conf``, ``model_conf``, ``loss_conf``, ``optimizer_conf`` and ``train_conf`` plus the top-level
names ``use_model`` and ``use_loss``. Every fixed key has a documented default (see :data:`SCHEMA` or
``python -m mvector.config`` for the table); ``feature_conf``, ``model_conf`` and ``loss_conf`` hold the
arguments of the chosen featurizer, backbone and loss and are checked against them.

>>> conf = load_config("ecapa_tdnn", overrides={"dataset_conf.batch_size": "32"})
>>> conf["dataset_conf"]["batch_size"], conf["use_model"]
(32, 'EcapaTdnn')
>>> load_config({"dataset_conf": {"batchsize": 8}})
Traceback (most recent call last):
...
mvector.errors.ConfigError: unknown key 'batchsize' in dataset_conf; did you mean 'batch_size'? ...
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import yaml

from mvector.errors import ConfigError, check_keys, nearest
from mvector.registry import canonical_name
from mvector.utils.files import atomic_write_text
from mvector.utils.yaml_io import load_yaml, read_yaml_file

__all__ = [
    "SCHEMA",
    "FREE_SECTIONS",
    "Key",
    "load_config",
    "parse_overrides",
    "apply_overrides",
    "bundled_configs",
    "save_config",
    "describe_schema",
    "check_cohort_speeds",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Key:
    """One documented configuration key: accepted type and meaning (its default is in :data:`DEFAULT_CONFIG`).

    >>> Key(int, "utterances per batch").type
    <class 'int'>
    """

    type: Union[type, tuple]
    doc: str


OptStr = (str, type(None))
OptInt = (int, type(None))
OptFloat = (float, type(None))

#: The bundled configuration that holds every default: it lists every fixed key, and every other configuration is
#: completed from it (:func:`load_config`). ``tests/test_config.py`` checks that it lists the whole schema.
DEFAULT_CONFIG = "ecapa_tdnn"

#: Where the bundled default recipe (``ecapa_tdnn``) saves its best model: the commands' default model folder.
DEFAULT_MODEL_PATH = "models/EcapaTdnn_MelSpectrogram/best_model"

#: The fixed sections and their keys (types and meanings; the values are in :data:`DEFAULT_CONFIG`). Free
#: sections (:data:`FREE_SECTIONS`) are checked against the featurizer, backbone and loss they configure.
SCHEMA: dict[str, Any] = {
    "use_model": Key(str, "backbone: EcapaTdnn, TDNN, Res2Net or ResNetSE"),
    "use_loss": Key(str, "loss head: AAM (ArcFace), AM (CosFace), ARM or CE"),
    "dataset_conf": {
        "train_list": Key(str, "training list (path<TAB>label) or Kaldi folder"),
        "test_list": Key(str, "evaluation list (path<TAB>label) or Kaldi folder"),
        "trials_list": Key(OptStr, "trial file 'label enroll test'; None: pairs from test_list"),
        "trials_root": Key(OptStr, "folder the trial paths are relative to; None: the trial file's"),
        "num_eval_trials": Key(OptInt, "with no trial file: number of balanced pairs to draw; None: every pair"),
        "num_speakers": Key(OptInt, "speakers in train_list; None: taken from the list"),
        "sample_rate": Key(int, "audio is resampled to this rate (Hz)"),
        "max_duration": Key(float, "training crop length (s); shorter clips are used whole"),
        "short_clips": Key(str, "training clips shorter than max_duration: pad (zeros, masked) or repeat"),
        "min_duration": Key(float, "training clips shorter than this (s) are left out and counted"),
        "eval_max_duration": Key(float, "evaluation/inference utterances are cut to this length (s)"),
        "batch_size": Key(int, "training utterances per batch (per process under torchrun)"),
        "eval_batch_size": Key(int, "evaluation utterances per batch (batched by length)"),
        "num_workers": Key(
            OptInt, "data-loading worker processes; None: 0 on CPU (faster there), min(4, CPUs) on CUDA"
        ),
        "prefetch_factor": Key(int, "batches each worker loads ahead"),
        "use_dB_normalization": Key(bool, "bring every clip to target_dB RMS"),
        "target_dB": Key(float, "target level of dB normalisation (dBFS)"),
        "vad": Key(bool, "trim leading/trailing silence with an energy VAD"),
    },
    "preprocess_conf": {
        "feature_method": Key(str, "Fbank, MelSpectrogram, Spectrogram or MFCC"),
        "normalize": Key((bool, str), "per-utterance CMVN over valid frames: true (mean+variance), mean, false"),
    },
    "optimizer_conf": {
        "optimizer": Key(str, "Adam, AdamW or SGD"),
        "learning_rate": Key(float, "peak learning rate"),
        "weight_decay": Key(float, "weight decay"),
        "momentum": Key(float, "SGD momentum (SGD only)"),
        "nesterov": Key(bool, "Nesterov momentum (SGD only)"),
        "scheduler": Key(str, "WarmupCosine (stepped per batch) or Constant"),
        "warmup_epochs": Key(float, "linear warm-up length in epochs (fractions allowed)"),
        "min_lr": Key(float, "learning rate at the end of the cosine decay"),
        "backbone_lr_scale": Key(
            float, "the backbone's rate as a fraction of the head's (fine-tuning a pretrained backbone: e.g. 0.1)"
        ),
    },
    "train_conf": {
        "max_epoch": Key(int, "training epochs"),
        "log_interval": Key(int, "log every this many batches"),
        "eval_interval": Key(int, "evaluate every this many epochs (0: only at the end)"),
        "seed": Key(int, "random seed (Python, numpy, torch, data order)"),
        "amp": Key(bool, "automatic mixed precision on CUDA"),
        "amp_dtype": Key(str, "bfloat16 or float16 (float16 uses a gradient scaler)"),
        "grad_clip": Key(OptFloat, "clip the gradient norm to this; None: no clipping"),
        "keep_last_epochs": Key(int, "epoch_N checkpoints to keep"),
        "log_backend": Key(str, "visualdl, tensorboard or none"),
        "log_dir": Key(str, "folder for training logs (scalars)"),
        "log_seconds": Key(float, "also log at least this often (s), whatever log_interval says"),
        "freeze_backbone_epochs": Key(int, "train only the head for this many first epochs (fine-tuning)"),
        "freeze_backbone_bn": Key(
            bool, "keep the backbone's batch-norm statistics as loaded for the whole run (fine-tuning)"
        ),
        "head_init": Key(
            str,
            "random, or class_means: each speaker's head row starts as the mean embedding of its training clips "
            "from the loaded backbone (fine-tuning)",
        ),
        "large_margin_epochs": Key(
            int,
            "large-margin fine-tuning: the last N epochs train at large_margin on crops of large_margin_crop s "
            "(only when max_epoch > N); 0: off",
        ),
        "large_margin": Key(float, "the AAM / AM / ARM margin of the large-margin epochs"),
        "large_margin_crop": Key(OptFloat, "training crop (s) of the large-margin epochs; None: max_duration"),
        "dist_timeout_minutes": Key(float, "how long ranks wait for each other before failing (torchrun)"),
        "gpu_augment": Key((bool, str), "waveform augmentation as batched ops on the device: auto (on CUDA)"),
    },
    "score_norm_conf": {
        "cohort": Key(
            str,
            "AS-norm cohort stored with the model (score_norm.npz; used by evaluation, the predictor and "
            "the service): speakers (one row per training speaker), utterances (training clips), none: plain cosine",
        ),
        "top_k": Key(int, "AS-norm: how many of the best cohort scores of each side are used"),
        "centre": Key(bool, "subtract the training embeddings' mean before scoring"),
        "whiten": Key(bool, "also whiten the embeddings with the training covariance (PCA, slight shrinkage)"),
        "max_per_speaker": Key(int, "training utterances per speaker embedded for the cohort at each evaluation"),
        "cohort_speeds": Key(
            list,
            "each cohort clip is also embedded at these speeds (resampled as the speed augmentation does; each "
            "speed a cohort speaker of its own); [1.0]: as recorded",
        ),
    },
}

#: Longest training crop ``train_conf.large_margin_crop`` may ask for (s): a bound on one batch's memory.
MAX_TRAIN_CROP_SECONDS = 60.0

#: Values of ``train_conf.head_init``: how the classifier head starts.
HEAD_INITS = ("random", "class_means")

#: Largest backbone a configuration may describe (parameters; 4 GB in float32 before optimiser state).
MAX_MODEL_PARAMETERS = 1_000_000_000
#: Largest classifier row block per speaker (embd_dim × sub_centers).
MAX_HEAD_PARAMETERS_PER_SPEAKER = 1_000_000
#: Feature sizes beyond any speech front end; larger ones would only allocate huge filter banks.
FEATURE_SIZE_LIMITS = {
    "n_fft": 65536, "win_length": 65536, "hop_length": 65536, "n_mels": 4096, "num_mel_bins": 4096,
    "n_mfcc": 4096, "frame_length": 4000.0, "frame_shift": 4000.0,
}  # fmt: skip

#: Sections whose keys belong to the chosen featurizer, backbone and loss.
FREE_SECTIONS = ("feature_conf", "model_conf", "loss_conf", "augment_conf")

#: What each free section holds, for the configuration table.
FREE_SECTION_DOCS = {
    "feature_conf": "arguments of the chosen featurizer (see Features)",
    "model_conf": "arguments of the chosen backbone (see Models)",
    "loss_conf": "arguments of the chosen loss, and margin_scheduler",
    "augment_conf": "training augmentation: keys of configs/augmentation.yml (empty: none)",
}

#: The name that decides whether a free section a configuration leaves out is the default's: it is when the
#: configuration names the same featurizer, backbone or loss.
FREE_SECTION_OWNERS = {
    "feature_conf": ("preprocess_conf", "feature_method"),
    "model_conf": ("use_model",),
    "loss_conf": ("use_loss",),
}

#: Keys of the loss section handled by the trainer rather than the loss head.
MARGIN_SCHEDULER_KEYS = ("initial_margin", "final_margin", "start_epoch", "end_epoch")

_SECTION_ORDER = (
    "use_model",
    "use_loss",
    "dataset_conf",
    "preprocess_conf",
    "feature_conf",
    "model_conf",
    "loss_conf",
    "optimizer_conf",
    "train_conf",
    "score_norm_conf",
    "augment_conf",
)


def bundled_configs() -> list[str]:
    """Names of the configurations shipped with the package.

    >>> "ecapa_tdnn" in bundled_configs()
    True
    """
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yml") if p.stem != "augmentation")


def defaults() -> dict[str, Any]:
    """A fresh copy of the default configuration (:data:`DEFAULT_CONFIG`), every key filled.

    >>> conf = defaults()
    >>> conf["train_conf"]["max_epoch"], conf["preprocess_conf"]["feature_method"], conf["dataset_conf"]["batch_size"]
    (30, 'MelSpectrogram', 32)
    """
    return copy.deepcopy(_default_config())


@functools.lru_cache(maxsize=1)
def _default_config() -> dict[str, Any]:
    """The bundled default read once and checked to list every fixed key with a value of the key's type."""
    path = CONFIG_DIR / f"{DEFAULT_CONFIG}.yml"
    data = _read_yaml(path)
    check_keys(data, _SECTION_ORDER, f"the top level of {path}")
    out: dict[str, Any] = {}
    for name in _SECTION_ORDER:
        spec, value = SCHEMA.get(name), data.get(name)
        if isinstance(spec, Key):
            if name not in data:
                raise ConfigError(f"{path}: the default config must set {name}")
            out[name] = _coerce(value, spec, name)
        elif isinstance(spec, dict):
            section = value if isinstance(value, Mapping) else {}
            check_keys(section, spec, name)
            missing = [key for key in spec if key not in section]
            if missing:
                raise ConfigError(f"{path}: the default config must set {name}.{missing[0]}")
            out[name] = {key: _coerce(section[key], spec[key], f"{name}.{key}") for key in spec}
        else:
            out[name] = copy.deepcopy(dict(value or {}))
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_file(path, "config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _resolve_source(source: Union[str, os.PathLike, Mapping, None]) -> tuple[dict[str, Any], str]:
    if source is None:
        return {}, "<defaults>"
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), "<dict>"
    path = Path(source)
    if path.is_file():
        return _read_yaml(path), str(path)
    name = str(source)
    for candidate in (CONFIG_DIR / f"{name}.yml", CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return _read_yaml(candidate), str(candidate)
    guess = nearest(path.stem, bundled_configs())
    hint = f"; did you mean {guess!r}?" if guess else ""
    raise ConfigError(
        f"config {name!r} is neither a file nor a bundled config{hint} Bundled: {', '.join(bundled_configs())}"
    )


def _upgrade_legacy(conf: dict[str, Any]) -> dict[str, Any]:
    """Map key spellings of earlier mvector releases onto the current ones (documented in the README)."""
    ds = conf.get("dataset_conf")
    if isinstance(ds, dict):
        if "chunk_duration" in ds and "max_duration" not in ds:
            ds["max_duration"] = ds.pop("chunk_duration")
        eval_conf = ds.pop("eval_conf", None)
        if isinstance(eval_conf, dict):
            for old, new in (("batch_size", "eval_batch_size"), ("max_duration", "eval_max_duration")):
                if old in eval_conf:
                    ds.setdefault(new, eval_conf.pop(old))
            if eval_conf:
                check_keys(eval_conf, (), "dataset_conf.eval_conf")
    mc = conf.get("model_conf")
    if isinstance(mc, dict) and "model" in mc:
        conf.setdefault("use_model", mc.pop("model"))
        args = mc.pop("model_args", None) or {}
        mc.update(args)
    lc = conf.get("loss_conf")
    if isinstance(lc, dict) and "loss" in lc:
        conf.setdefault("use_loss", lc.pop("loss"))
        args = lc.pop("loss_args", None) or {}
        lc.update(args)
        use_sched = lc.pop("use_margin_scheduler", False)
        sched_args = lc.pop("margin_scheduler_args", None) or {}
        if use_sched:
            lc["margin_scheduler"] = dict(sched_args)
    pc = conf.get("preprocess_conf")
    if isinstance(pc, dict) and "method_args" in pc:
        conf.setdefault("feature_conf", {}).update(pc.pop("method_args") or {})
    return conf


def _coerce(value: Any, key: Key, where: str) -> Any:
    types = key.type if isinstance(key.type, tuple) else (key.type,)
    if value is None:
        if type(None) in types:
            return None
        raise ConfigError(f"{where} must not be empty (expected {_type_names(types)})")
    if bool in types:
        if isinstance(value, bool):
            return value
        if str not in types:
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    if float in types and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if int in types and isinstance(value, int) and not isinstance(value, bool):
        return value
    if int in types and isinstance(value, float) and value.is_integer():
        return int(value)
    if str in types and isinstance(value, str):
        return value
    if list in types and isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"{where} must be {_type_names(types)}, got {value!r} ({type(value).__name__})")


def _type_names(types: Iterable[type]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             type(None): "null"}  # fmt: skip
    return " or ".join(names.get(t, t.__name__) for t in types)


def _merge(base: dict[str, Any], update: Mapping[str, Any], source: str) -> None:
    """Complete ``update`` from ``base`` (the defaults) into ``base``: fixed keys one by one, then free sections.

    A free section is taken whole: one the configuration writes is its own (the class's defaults fill the keys it
    leaves out, so a saved model's configuration always means what it meant); one it leaves out is the default's
    when the configuration names the same featurizer, backbone or loss (:data:`FREE_SECTION_OWNERS`), and empty
    otherwise. ``augment_conf: {}`` or ``null`` means no augmentation.
    """
    check_keys(update, _SECTION_ORDER, f"the top level of {source}")
    for name, value in update.items():
        spec = SCHEMA.get(name)
        if isinstance(spec, Key):
            base[name] = _coerce(value, spec, name)
        elif value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{name} in {source} must be a mapping, got {type(value).__name__}")
        elif isinstance(spec, dict) and value is not None:
            check_keys(value, spec, name)
            for key, item in value.items():
                base[name][key] = _coerce(item, spec[key], f"{name}.{key}")
    reference = _default_config()
    for name in FREE_SECTIONS:
        owner = FREE_SECTION_OWNERS.get(name)
        if name in update:
            base[name] = copy.deepcopy(dict(update[name] or {}))
        elif owner is not None and canonical_name(_lookup(base, owner)) != canonical_name(_lookup(reference, owner)):
            base[name] = {}


def _lookup(conf: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = conf
    for part in path:
        node = node[part]
    return node


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str, where: str = "") -> Any:
    """Turn a command-line string into a typed value (bool, int, float such as ``1e-5``, null, list).

    ``where`` names the value in errors (``override --loss_conf.margin``).

    >>> parse_value("1e-5"), parse_value("32"), parse_value("False"), parse_value("[0.9, 1.1]")
    (1e-05, 32, False, [0.9, 1.1])
    >>> parse_value("none") is None, parse_value("MelSpectrogram")
    (True, 'MelSpectrogram')
    >>> parse_value("9" * 5000, "override --x")
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: override --x: an integer of 5000 digits is too long (at most 4300)
    """
    stripped = text.strip()
    lowered = stripped.lower()
    where = where or "value"
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null", "~"):
        return None
    if re.fullmatch(r"[+-]?\d+", stripped):
        try:
            return int(stripped)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            digits = len(stripped.lstrip("+-"))
            raise ConfigError(f"{where}: an integer of {digits} digits is too long (at most 4300)") from None
    if _FLOAT_RE.match(stripped):
        return float(stripped)
    if stripped.startswith(("[", "{")):
        return load_yaml(stripped, where)
    return stripped


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """Collect ``--section.key=value`` / ``--section.key value`` arguments into a dotted-key mapping.

    Returns the raw strings; :func:`apply_overrides` converts them with :func:`parse_value`.

    >>> parse_overrides(["--dataset_conf.batch_size=32", "--train_conf.max_epoch", "2"])
    {'dataset_conf.batch_size': '32', 'train_conf.max_epoch': '2'}
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg!r} has no value")
            key, value = body, args[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def apply_overrides(conf: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply dotted overrides (``{"dataset_conf.batch_size": "32"}``) in place, with type conversion.

    String values are parsed with :func:`parse_value`; values of fixed keys are converted to the key's type.
    Nested free keys work too: ``loss_conf.margin_scheduler.final_margin``.

    >>> conf = defaults()
    >>> _ = apply_overrides(conf, {"optimizer_conf.learning_rate": "1e-4", "use_model": "TDNN"})
    >>> conf["optimizer_conf"]["learning_rate"], conf["use_model"]
    (0.0001, 'TDNN')
    """
    for dotted, raw in overrides.items():
        value = parse_value(raw, f"override --{dotted}") if isinstance(raw, str) else raw
        parts = dotted.split(".")
        section = parts[0]
        key_spec = _fixed_key(parts)
        if isinstance(raw, str) and key_spec is not None and key_spec.type is str:
            value = raw.strip()  # a plain string key keeps words such as "none" as they are
        check_keys({section: None}, _SECTION_ORDER, "the config (override --" + dotted + ")")
        spec = SCHEMA.get(section)
        if len(parts) == 1:
            if not isinstance(spec, Key):
                raise ConfigError(f"override --{dotted} names a whole section; use --{section}.KEY=VALUE")
            conf[section] = _coerce(value, spec, section)
            continue
        if isinstance(spec, Key):
            raise ConfigError(f"{section} is a single value, not a section (override --{dotted})")
        if isinstance(spec, dict):
            if len(parts) != 2:
                raise ConfigError(f"override --{dotted}: {section} keys are not nested")
            check_keys({parts[1]: None}, spec, section)
            conf[section][parts[1]] = _coerce(value, spec[parts[1]], dotted)
            continue
        node = conf.setdefault(section, {})
        for part in parts[1:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override --{dotted}: {part} is not a mapping")
            node = child
        node[parts[-1]] = value
    return conf


def _fixed_key(parts: Sequence[str]) -> Key | None:
    spec = SCHEMA.get(parts[0])
    if isinstance(spec, Key) and len(parts) == 1:
        return spec
    if isinstance(spec, dict) and len(parts) == 2:
        return spec.get(parts[1])
    return None


def validate_free_sections(conf: Mapping[str, Any]) -> None:
    """Check names and the keys of ``feature_conf``, ``model_conf`` and ``loss_conf`` against the code.

    Builds the featurizer (cheap) and inspects the backbone and head constructors, so a misspelt key or name is
    reported with the nearest valid one before any training starts.

    >>> validate_free_sections(load_config("ecapa_tdnn", validate=False))
    """
    from mvector.features import build_featurizer
    from mvector.models import BACKBONES, HEADS, build_backbone
    from mvector.models.heads import LOSS_CONF_KEYS

    method = conf["preprocess_conf"]["feature_method"]
    feature_conf = dict(conf.get("feature_conf") or {})
    for key, value in feature_conf.items():
        limit = FEATURE_SIZE_LIMITS.get(key)
        if limit is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise ConfigError(f"feature_conf.{key} is {value}; at most {limit} makes sense for speech features")
    try:
        featurizer = build_featurizer(method, feature_conf, conf["preprocess_conf"]["normalize"])
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError, ZeroDivisionError, MemoryError, RuntimeError) as err:
        raise ConfigError(f"feature_conf ({method}): {_first_line(err)}") from None
    model_conf = dict(conf.get("model_conf") or {})
    name = conf["use_model"]
    if name not in BACKBONES:
        # build_backbone raises the error that lists the valid names (and accepts other spellings).
        build_backbone(name, featurizer.feature_dim, **model_conf)
    else:
        params = inspect.signature(BACKBONES[name].__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            valid = [p for p in params if p not in ("self", "input_size")]
            check_keys(model_conf, valid, f"model_conf ({name})")
    loss_conf = dict(conf.get("loss_conf") or {})
    sched = loss_conf.pop("margin_scheduler", None)
    if sched is not None:
        if not isinstance(sched, Mapping):
            raise ConfigError("loss_conf.margin_scheduler must be a mapping")
        check_keys(sched, MARGIN_SCHEDULER_KEYS, "loss_conf.margin_scheduler")
    # Before the call: a key such as embd_dim would clash with build_head's own arguments (a TypeError).
    check_keys(loss_conf, LOSS_CONF_KEYS, f"loss_conf ({HEADS.resolve(str(conf['use_loss']).strip())})")
    _check_sizes(conf, featurizer.feature_dim, model_conf, loss_conf)
    if conf.get("augment_conf"):
        from mvector.audio.augment import load_augmentation_config

        load_augmentation_config(conf["augment_conf"])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _check_sizes(conf: Mapping[str, Any], feature_dim: int, model_conf: dict, loss_conf: dict) -> None:
    """Build the backbone and a two-speaker head on torch's "meta" device (shapes only, no memory): a width that
    cannot build (negative, zero) or that would allocate too much is a :class:`ConfigError` naming the section."""
    import torch

    from mvector.models import build_backbone
    from mvector.models.heads import build_head

    name = conf["use_model"]
    try:
        with torch.device("meta"):
            backbone = build_backbone(name, feature_dim, **model_conf)
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError, ZeroDivisionError, MemoryError, RuntimeError) as err:
        raise ConfigError(f"model_conf ({name}): cannot build the backbone: {_first_line(err)}") from None
    count = sum(p.numel() for p in backbone.parameters())
    if count > MAX_MODEL_PARAMETERS:
        raise ConfigError(
            f"model_conf ({name}) makes a backbone of {count:,} parameters (at most {MAX_MODEL_PARAMETERS:,}); "
            "check the widths (channels, embd_dim, ...)"
        )
    try:
        with torch.device("meta"):
            head = build_head(conf["use_loss"], int(getattr(backbone, "embd_dim", 8)), 2, **loss_conf)
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError, ZeroDivisionError, MemoryError, RuntimeError) as err:
        raise ConfigError(f"loss_conf ({conf['use_loss']}): {_first_line(err)}") from None
    per_speaker = sum(p.numel() for p in head.parameters()) // 2
    if per_speaker > MAX_HEAD_PARAMETERS_PER_SPEAKER:
        raise ConfigError(
            f"loss_conf ({conf['use_loss']}) gives each speaker {per_speaker:,} classifier parameters (at most "
            f"{MAX_HEAD_PARAMETERS_PER_SPEAKER:,}); check sub_centers"
        )


def load_config(
    source: Union[str, os.PathLike, Mapping, None] = DEFAULT_CONFIG,
    overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Load a configuration: the default (:data:`DEFAULT_CONFIG`) ← YAML file (path or bundled name) ← dotted
    overrides; then validate. What a file leaves out comes from the default (see :func:`_merge` for free sections).

    ``overrides`` is a mapping of dotted keys to values (strings are parsed) or a list of
    ``--section.key=value`` arguments. Unknown keys raise :class:`~mvector.errors.ConfigError` naming the
    nearest valid key; wrong types name the key. ``validate=False`` skips checking the featurizer, backbone and
    loss arguments against the code (the fixed sections are always checked).

    >>> conf = load_config({"preprocess_conf": {"feature_method": "MelSpectrogram"},
    ...                     "feature_conf": {"sample_rate": 16000, "n_fft": 1024, "hop_length": 320,
    ...                                      "win_length": 1024, "f_min": 50.0, "f_max": 14000.0, "n_mels": 64}})
    >>> conf["feature_conf"]["n_mels"], conf["dataset_conf"]["sample_rate"]
    (64, 16000)
    """
    data, origin = _resolve_source(source)
    data = _upgrade_legacy(data)
    conf = defaults()
    _merge(conf, data, origin)
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(list(overrides))
        apply_overrides(conf, overrides)
    _check_consistency(conf)
    if validate:
        validate_free_sections(conf)
    return conf


def _check_consistency(conf: dict[str, Any]) -> None:
    ds = conf["dataset_conf"]
    for key in ("batch_size", "eval_batch_size", "sample_rate", "prefetch_factor"):
        if ds[key] <= 0:
            raise ConfigError(f"dataset_conf.{key} must be positive, got {ds[key]}")
    if ds["num_workers"] is not None and ds["num_workers"] < 0:
        raise ConfigError(f"dataset_conf.num_workers must be >= 0, got {ds['num_workers']}")
    if ds["max_duration"] <= 0 or ds["min_duration"] < 0:
        raise ConfigError("dataset_conf.max_duration must be > 0 and min_duration >= 0")
    if ds["min_duration"] > ds["max_duration"]:
        raise ConfigError(
            f"dataset_conf.min_duration ({ds['min_duration']}) is larger than max_duration ({ds['max_duration']})"
        )
    from mvector.data.dataset import SHORT_CLIP_MODES  # torch is imported only when a config is checked

    if ds["short_clips"] not in SHORT_CLIP_MODES:
        raise ConfigError(
            f"dataset_conf.short_clips must be one of {', '.join(SHORT_CLIP_MODES)}, got {ds['short_clips']!r}"
        )
    if ds["num_speakers"] is not None and ds["num_speakers"] < 2:
        raise ConfigError(f"dataset_conf.num_speakers must be at least 2, got {ds['num_speakers']}")
    fc = conf.get("feature_conf") or {}
    for key in ("sample_rate", "sample_frequency"):
        if key in fc and fc[key] != ds["sample_rate"]:
            raise ConfigError(
                f"feature_conf.{key} ({fc[key]}) differs from dataset_conf.sample_rate "
                f"({ds['sample_rate']}); audio is resampled to dataset_conf.sample_rate, so they must agree"
            )
    tc = conf["train_conf"]
    if tc["max_epoch"] < 1:
        raise ConfigError(f"train_conf.max_epoch must be >= 1, got {tc['max_epoch']}")
    if tc["gpu_augment"] not in (True, False, "auto"):
        raise ConfigError(f"train_conf.gpu_augment must be true, false or auto, got {tc['gpu_augment']!r}")
    if tc["amp_dtype"] not in ("bfloat16", "float16"):
        raise ConfigError(f"train_conf.amp_dtype must be bfloat16 or float16, got {tc['amp_dtype']!r}")
    if tc["log_backend"] not in ("visualdl", "tensorboard", "none"):
        raise ConfigError(f"train_conf.log_backend must be visualdl, tensorboard or none, got {tc['log_backend']!r}")
    oc = conf["optimizer_conf"]
    from mvector.optim import OPTIMIZERS, SCHEDULERS  # torch is imported only when a config is checked

    OPTIMIZERS.resolve(oc["optimizer"])
    SCHEDULERS.resolve(oc["scheduler"])
    if oc["learning_rate"] <= 0:
        raise ConfigError(f"optimizer_conf.learning_rate must be positive, got {oc['learning_rate']}")
    if tc["freeze_backbone_epochs"] < 0:
        raise ConfigError(f"train_conf.freeze_backbone_epochs must be >= 0, got {tc['freeze_backbone_epochs']}")
    if tc["head_init"] not in HEAD_INITS:
        raise ConfigError(f"train_conf.head_init must be one of {', '.join(HEAD_INITS)}, got {tc['head_init']!r}")
    if tc["large_margin_epochs"] < 0:
        raise ConfigError(f"train_conf.large_margin_epochs must be >= 0, got {tc['large_margin_epochs']}")
    if not 0 <= tc["large_margin"] < math.pi / 2:
        raise ConfigError(f"train_conf.large_margin must be in [0, pi/2), got {tc['large_margin']}")
    crop = tc["large_margin_crop"]
    if crop is not None and not (crop > 0 and ds["min_duration"] <= crop <= MAX_TRAIN_CROP_SECONDS):
        raise ConfigError(
            f"train_conf.large_margin_crop must be null or between dataset_conf.min_duration ({ds['min_duration']}) "
            f"and {MAX_TRAIN_CROP_SECONDS:g} s (and > 0), got {crop}"
        )
    for key in ("weight_decay", "momentum", "warmup_epochs", "min_lr", "backbone_lr_scale"):
        if oc[key] < 0:
            raise ConfigError(f"optimizer_conf.{key} must be >= 0, got {oc[key]}")
    check_cohort_speeds(conf["score_norm_conf"]["cohort_speeds"])


def check_cohort_speeds(speeds: Any) -> list[float]:
    """``score_norm_conf.cohort_speeds`` checked: a non-empty list of speed factors in [0.5, 2.0], returned sorted
    without repeats (a :class:`ConfigError` naming the key otherwise).

    >>> check_cohort_speeds([1.1, 0.9, 1.0, 1.0])
    [0.9, 1.0, 1.1]
    """
    if (
        not isinstance(speeds, (list, tuple))
        or not speeds
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.5 <= v <= 2.0 for v in speeds)
    ):
        raise ConfigError(
            f"score_norm_conf.cohort_speeds must be a non-empty list of speed factors in [0.5, 2.0], got {speeds!r}"
        )
    return sorted({float(v) for v in speeds})


def save_config(conf: Mapping[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write a configuration as YAML atomically (temporary file + rename).

    >>> import tempfile, os
    >>> p = save_config(defaults(), os.path.join(tempfile.mkdtemp(), "config.yml"))
    >>> load_config(p, validate=False)["use_loss"]
    'AAM'
    """
    return atomic_write_text(path, yaml.safe_dump(dict(conf), sort_keys=False, allow_unicode=True))


def _registered_names() -> dict[str, str]:
    """Docs of the keys that name a registered entry, listing what is registered now."""
    from mvector.features import FEATURIZERS
    from mvector.models import BACKBONES, HEADS
    from mvector.optim import OPTIMIZERS, SCHEDULERS

    return {
        "use_model": f"backbone: {', '.join(BACKBONES.names())}",
        "use_loss": f"loss head: {', '.join(HEADS.names())}",
        "preprocess_conf.feature_method": f"featurizer: {', '.join(sorted(FEATURIZERS))}",
        "optimizer_conf.optimizer": f"optimiser: {', '.join(OPTIMIZERS.names())}",
        "optimizer_conf.scheduler": f"learning-rate schedule, stepped per batch: {', '.join(SCHEDULERS.names())}",
    }


def describe_schema() -> str:
    """A markdown table of every fixed key, its default and meaning (the README's reference).

    >>> "| dataset_conf.batch_size | 32 |" in describe_schema()
    True
    """
    named = _registered_names()
    default = defaults()
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name in _SECTION_ORDER:
        spec = SCHEMA.get(name)
        if isinstance(spec, Key):
            rows.append(f"| {name} | {default[name]} | {named.get(name, spec.doc)} |")
        elif isinstance(spec, dict):
            for key, item in spec.items():
                value = default[name][key]
                rows.append(f"| {name}.{key} | {value} | {named.get(f'{name}.{key}', item.doc)} |")
        else:
            what = FREE_SECTION_DOCS.get(name, "arguments of the chosen featurizer / backbone / loss")
            rows.append(f"| {name}.* | — | {what} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(describe_schema())
