"""Speaker-embedding backbones and pooling layers, looked up by name.

Every backbone maps features ``[B, frames, input_size]`` and optional frame counts ``[B]`` (int64) to
embeddings ``[B, embd_dim]``; padded frames never change a result. Names are case-insensitive and ignore
``_``/``-`` (``"ecapa_tdnn"`` works for ``EcapaTdnn``).

>>> import torch
>>> model = build_backbone("EcapaTdnn", 40, channels=32, embd_dim=16).eval()
>>> model(torch.randn(2, 25, 40), torch.tensor([25, 10])).shape, model.embd_dim
(torch.Size([2, 16]), 16)
>>> sorted(BACKBONES)
['EcapaTdnn', 'Res2Net', 'ResNetSE', 'TDNN']
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from mvector.errors import ConfigError, check_keys, unknown_name_error
from mvector.models.ecapa_tdnn import EcapaTdnn
from mvector.models.pooling import POOLINGS, build_pooling
from mvector.models.res2net import Res2Net
from mvector.models.resnet_se import ResNetSE
from mvector.models.tdnn import TDNN

__all__ = [
    "BACKBONES",
    "POOLINGS",
    "EcapaTdnn",
    "TDNN",
    "Res2Net",
    "ResNetSE",
    "backbone_keys",
    "build_backbone",
    "build_pooling",
    "build_head",
]

BACKBONES: dict[str, type] = {
    "EcapaTdnn": EcapaTdnn,
    "TDNN": TDNN,
    "Res2Net": Res2Net,
    "ResNetSE": ResNetSE,
}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def backbone_keys(name: str) -> list[str]:
    """The ``model_conf`` keys backbone ``name`` accepts (its constructor's arguments but ``input_size``).

    >>> backbone_keys("TDNN")
    ['embd_dim', 'pooling_type', 'channels', 'stats_channels', 'attention_channels', 'pooling_conf']
    """
    cls = _lookup(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "input_size")]


def _lookup(name: str) -> type:
    if isinstance(name, str):
        for key, cls in BACKBONES.items():
            if _canonical(key) == _canonical(name):
                return cls
    raise unknown_name_error("backbone", str(name), BACKBONES)


def build_backbone(name: str, input_size: int, **model_conf: Any) -> nn.Module:
    """Backbone ``name`` for ``input_size``-dim features, configured by ``model_conf`` (the config section).

    Unknown names and keys raise :class:`~mvector.errors.ConfigError` naming the valid ones.

    >>> build_backbone("tdnn", 24, channels=16, stats_channels=32, embd_dim=8).embd_dim
    8
    >>> build_backbone("EcapaTdnn", 80, chanels=256)
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: unknown key 'chanels' in model_conf (EcapaTdnn); did you mean 'channels'? \
Valid keys: attention_channels, channels, embd_dim, pooling_conf, pooling_type, scale, se_channels
    """
    cls = _lookup(name)
    check_keys(model_conf, backbone_keys(name), f"model_conf ({cls.__name__})")
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
        raise ConfigError(f"{cls.__name__}: input_size must be a positive integer, got {input_size!r}")
    conf = dict(model_conf)
    if "pooling_type" in conf and not isinstance(conf["pooling_type"], str):
        raise unknown_name_error("pooling_type", str(conf["pooling_type"]), POOLINGS)
    try:
        return cls(input_size, **conf)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model_conf ({cls.__name__}): {err}") from err


def build_head(*args: Any, **kwargs: Any) -> nn.Module:
    """Classification head + loss for training; forwards to :func:`mvector.losses.build_head`.

    Imported on call, so ``mvector.models`` and ``mvector.losses`` do not import each other at import time.

    >>> callable(build_head)
    True
    """
    from mvector.losses import build_head as _build_head

    return _build_head(*args, **kwargs)
