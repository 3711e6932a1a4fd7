"""Speaker-embedding models: backbones, pooling layers, classifier heads, and the waveform→embedding model.

Every backbone maps features ``[B, frames, input_size]`` and optional frame counts ``[B]`` (int64) to
embeddings ``[B, embd_dim]``; padded frames never change a result. Backbones, poolings and heads are looked up in
registries (:mod:`mvector.models.registries`); names are case-insensitive and ignore ``_``/``-``
(``"ecapa_tdnn"`` works for ``EcapaTdnn``). A new backbone is one module that decorates its class with
``@BACKBONES.register("Name")``, plus an import line below.

>>> import torch
>>> model = build_backbone("EcapaTdnn", 40, channels=32, embd_dim=16).eval()
>>> model(torch.randn(2, 25, 40), torch.tensor([25, 10])).shape, model.embd_dim
(torch.Size([2, 16]), 16)
>>> sorted(BACKBONES)
['CAMPPlus', 'EcapaTdnn', 'Res2Net', 'ResNetSE', 'TDNN']
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mvector.errors import ConfigError
from mvector.models import campplus, ecapa_tdnn, res2net, resnet_se, tdnn  # noqa: F401  (they register themselves)
from mvector.models.ecapa_tdnn import EcapaTdnn
from mvector.models.embedding_model import EmbeddingModel
from mvector.models.heads import build_head
from mvector.models.pooling import build_pooling
from mvector.models.registries import BACKBONES, HEADS, POOLINGS
from mvector.models.res2net import Res2Net
from mvector.models.resnet_se import ResNetSE
from mvector.models.tdnn import TDNN

__all__ = [
    "BACKBONES",
    "POOLINGS",
    "HEADS",
    "EcapaTdnn",
    "TDNN",
    "Res2Net",
    "ResNetSE",
    "EmbeddingModel",
    "backbone_keys",
    "build_backbone",
    "build_pooling",
    "build_head",
]


def backbone_keys(name: str) -> list[str]:
    """The ``model_conf`` keys backbone ``name`` accepts (its constructor's arguments but ``input_size``).

    >>> backbone_keys("TDNN")
    ['embd_dim', 'pooling_type', 'channels', 'stats_channels', 'attention_channels', 'pooling_conf']
    """
    return BACKBONES.keys_of(name)


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
    key = BACKBONES.resolve(name)
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
        raise ConfigError(f"{key}: input_size must be a positive integer, got {input_size!r}")
    if "pooling_type" in model_conf and not isinstance(model_conf["pooling_type"], str):
        POOLINGS.resolve(model_conf["pooling_type"])
    return BACKBONES.build(key, model_conf, input_size)
