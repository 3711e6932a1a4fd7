"""ECAPA-TDNN (Desplanques, Thienpondt and Demuynck, Interspeech 2020), length-masked.

Layout, for ``C = channels``: a 5-frame convolution to C channels; three SE-Res2Net blocks (3-frame dilated
convolutions with dilations 2, 3, 4, Res2Net scale 8, squeeze-excitation bottleneck 128, residual
connection); multi-layer feature aggregation (the three block outputs concatenated, 1×1 convolution to 3·C
channels); pooling (attentive statistics with global context by default); batch norm, linear layer to
``embd_dim``, batch norm. Each convolution is followed by ReLU then batch norm, as in the paper.

The network runs time-major (``[B, T, C]``, channels contiguous): 1×1 convolutions are plain matrix products
and the dilated convolutions one matrix product over stacked time shifts
(:class:`~mvector.models.common.TimeConv`), which on CPU beats ``conv1d`` on ``[B, C, T]``.

At C=512, 80 input features, embd_dim 192 and ASP pooling the model has 6.19 M parameters (paper: 6.2 M).

>>> import torch
>>> model = EcapaTdnn(input_size=40, channels=64, embd_dim=32).eval()
>>> feats = torch.randn(2, 50, 40)
>>> model(feats, torch.tensor([50, 30])).shape
torch.Size([2, 32])
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from mvector.errors import ConfigError
from mvector.models.common import EmbeddingHead, TimeConv, batch_norm_tm, prepare_lengths, time_mask
from mvector.models.pooling import build_pooling
from mvector.models.registries import BACKBONES

__all__ = ["EcapaTdnn", "SERes2Block"]


class _ConvReluBn(nn.Module):
    """Time-major conv (same-length padding) → ReLU → BatchNorm1d, on ``[B, T, C]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = TimeConv(in_channels, out_channels, kernel_size, dilation)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        # In place: the matrix product's output is not needed by its backward, so this saves a pass over memory.
        return batch_norm_tm(self.bn, torch.relu_(self.conv(x)))


class _SqueezeExcite(nn.Module):
    """Squeeze-excitation over time: masked mean → bottleneck → per-channel sigmoid gate (time-major)."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.reduce = nn.Linear(channels, bottleneck)
        self.expand = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        if mask is None:
            mean = x.mean(dim=1, keepdim=True)
        else:
            weights = mask.transpose(1, 2)
            mean = torch.bmm(weights, x) / weights.sum(dim=-1, keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(mean))))


class SERes2Block(nn.Module):
    """SE-Res2Net block of ECAPA-TDNN: 1×1 conv, Res2Net dilated convs, 1×1 conv, squeeze-excitation, residual.

    Works time-major: ``x [B, T, C]`` with an optional ``[B, T, 1]`` mask. The first ``channels/scale`` slice
    passes through; slice i>1 goes through its own 3-frame conv after adding the previous slice's output
    (hierarchical residual). Padded frames are zeroed in front of each 3-frame conv, so they never leak.

    >>> block = SERes2Block(16, dilation=2, scale=4, se_channels=8).eval()
    >>> block(torch.randn(1, 9, 16)).shape
    torch.Size([1, 9, 16])
    """

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1, scale: int = 8, se_channels: int = 128):
        super().__init__()
        if scale < 2 or channels % scale:
            raise ConfigError(f"EcapaTdnn: channels ({channels}) must be divisible by scale ({scale}), scale >= 2")
        self.width = channels // scale
        self.conv_in = _ConvReluBn(channels, channels, 1)
        self.res2 = nn.ModuleList(_ConvReluBn(self.width, self.width, kernel_size, dilation) for _ in range(scale - 1))
        self.conv_out = _ConvReluBn(channels, channels, 1)
        self.se = _SqueezeExcite(channels, se_channels)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        parts = self.conv_in(x).split(self.width, dim=-1)
        outs = [parts[0]]
        y: Optional[Tensor] = None
        for i, layer in enumerate(self.res2):
            inp = parts[i + 1] if y is None else parts[i + 1] + y
            if mask is not None:
                inp = inp * mask
            y = layer(inp)
            outs.append(y)
        h = self.conv_out(torch.cat(outs, dim=-1))
        return self.se(h, mask) + x


@BACKBONES.register("EcapaTdnn", aliases=("ECAPA", "ECAPA-TDNN"))
class EcapaTdnn(nn.Module):
    """ECAPA-TDNN speaker-embedding backbone: ``[B, frames, input_size]`` (+ frame counts) → ``[B, embd_dim]``.

    Args:
        input_size: feature dimension (e.g. 80 mel bins).
        embd_dim: embedding size.
        pooling_type: ASP, SAP, TSP or TAP (see :mod:`mvector.models.pooling`).
        channels: C, the width of the frame layers (512 or 1024 in the paper).
        scale: Res2Net scale (number of channel slices).
        se_channels: squeeze-excitation bottleneck.
        attention_channels: width of the pooling attention (ASP, SAP).
        pooling_conf: other pooling keyword arguments, e.g. ``{"global_context": False}``.

    >>> m = EcapaTdnn(80, channels=32, embd_dim=8).eval()
    >>> m.embd_dim, m(torch.randn(1, 20, 80)).shape
    (8, torch.Size([1, 8]))
    """

    def __init__(
        self,
        input_size: int,
        embd_dim: int = 192,
        pooling_type: str = "ASP",
        channels: int = 512,
        scale: int = 8,
        se_channels: int = 128,
        attention_channels: int = 128,
        pooling_conf: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        self.input_size = int(input_size)
        self.embd_dim = int(embd_dim)
        self.channels = int(channels)
        self.conv_in = _ConvReluBn(self.input_size, self.channels, kernel_size=5)
        self.blocks = nn.ModuleList(
            SERes2Block(self.channels, 3, dilation, scale, se_channels) for dilation in (2, 3, 4)
        )
        self.mfa = _ConvReluBn(3 * self.channels, 3 * self.channels, 1)
        pool_kwargs = dict(pooling_conf or {})
        if pooling_type.upper() in ("ASP", "SAP"):
            pool_kwargs.setdefault("attention_channels", attention_channels)
        self.pooling = build_pooling(pooling_type, 3 * self.channels, **pool_kwargs)
        self.head = EmbeddingHead(self.pooling.output_size, self.embd_dim)

    def forward(self, features: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        x = features
        lengths = prepare_lengths(lengths, x.shape[1], x.device)
        mask = time_mask(lengths, x.shape[1], x)
        if mask is not None:
            x = x * mask
        x = self.conv_in(x)
        outs = []
        for block in self.blocks:
            x = block(x, mask)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=-1))
        return self.head(self.pooling.forward_tm(x, mask))
