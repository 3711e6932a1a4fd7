"""TDNN x-vector backbone (Snyder et al., ICASSP 2018), length-masked.

Five frame layers (time-delay convolutions, each followed by ReLU and batch norm) with contexts
[t-2, t+2], {t-2, t, t+2}, {t-3, t, t+3}, {t}, {t}; widths ``channels`` (512) and ``stats_channels`` (1500)
for the last one; then pooling, a segment layer (linear → ReLU → batch norm, ``channels`` wide) and the
embedding layer (linear → batch norm) of size ``embd_dim``. Convolutions are padded so every frame layer keeps
the number of frames (short clips work).

>>> import torch
>>> model = TDNN(input_size=40, channels=32, stats_channels=64, embd_dim=16).eval()
>>> model(torch.randn(2, 30, 40), torch.tensor([30, 12])).shape
torch.Size([2, 16])
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from mvector.models.common import TimeConv, batch_norm_tm, prepare_lengths, time_mask
from mvector.models.pooling import build_pooling
from mvector.models.registries import BACKBONES

__all__ = ["TDNN"]

# (kernel size, dilation) of the five frame layers: contexts [-2..2], {-2,0,2}, {-3,0,3}, {0}, {0}.
_FRAME_LAYERS = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))


@BACKBONES.register("TDNN", aliases=("xvector",))
class TDNN(nn.Module):
    """x-vector TDNN: ``[B, frames, input_size]`` (+ frame counts) → ``[B, embd_dim]``.

    Args:
        input_size: feature dimension.
        embd_dim: embedding size.
        pooling_type: ASP, SAP, TSP or TAP.
        channels: width of the frame layers 1-4 and of the segment layer (512).
        stats_channels: width of frame layer 5, the pooling input (1500).
        attention_channels: width of the pooling attention (ASP, SAP).
        pooling_conf: other pooling keyword arguments, e.g. ``{"global_context": False}``.

    >>> TDNN(24, channels=16, stats_channels=32, embd_dim=8, pooling_type="TSP").embd_dim
    8
    """

    def __init__(
        self,
        input_size: int,
        embd_dim: int = 192,
        pooling_type: str = "ASP",
        channels: int = 512,
        stats_channels: int = 1500,
        attention_channels: int = 128,
        pooling_conf: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        self.input_size = int(input_size)
        self.embd_dim = int(embd_dim)
        widths = [self.input_size] + [int(channels)] * 4 + [int(stats_channels)]
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for i, (kernel, dilation) in enumerate(_FRAME_LAYERS):
            self.convs.append(TimeConv(widths[i], widths[i + 1], kernel, dilation))
            self.bns.append(nn.BatchNorm1d(widths[i + 1]))
        pool_kwargs = dict(pooling_conf or {})
        if pooling_type.upper() in ("ASP", "SAP"):
            pool_kwargs.setdefault("attention_channels", attention_channels)
        self.pooling = build_pooling(pooling_type, int(stats_channels), **pool_kwargs)
        self.segment = nn.Linear(self.pooling.output_size, int(channels))
        self.segment_bn = nn.BatchNorm1d(int(channels))
        self.embedding = nn.Linear(int(channels), self.embd_dim)
        self.embedding_bn = nn.BatchNorm1d(self.embd_dim)

    def forward(self, features: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        x = features
        lengths = prepare_lengths(lengths, x.shape[1], x.device)
        mask = time_mask(lengths, x.shape[1], x)
        for (kernel, _), conv, bn in zip(_FRAME_LAYERS, self.convs, self.bns):
            if mask is not None and kernel > 1:
                x = x * mask
            x = batch_norm_tm(bn, torch.relu_(conv(x)))
        pooled = self.pooling.forward_tm(x, mask)
        h = self.segment_bn(torch.relu(self.segment(pooled)))
        return self.embedding_bn(self.embedding(h))
