"""Length-masked temporal pooling layers: ``[B, C, T]`` frames (+ frame counts) → ``[B, output_size]``.

Padded frames get exactly zero weight: statistics use masked sums and the attention softmax fills padded
logits with ``-inf``. Each layer reports its ``output_size``. Internally the layers work time-major
(``[B, T, C]``, channels contiguous, see :meth:`AttentiveStatsPool.forward_tm`), the layout the 1-D backbones
use, so that 1×1 projections are plain matrix products.

=======  ==============================================================  ===========
name     what                                                            output_size
=======  ==============================================================  ===========
ASP      attentive statistics (Okabe et al. 2018); ``global_context``    2·C
         adds the utterance mean/std to the attention input (ECAPA)
SAP      self-attentive weighted mean (Cai et al. 2018)                  C
TSP      temporal mean and standard deviation (x-vector)                 2·C
TAP      temporal mean                                                   C
=======  ==============================================================  ===========

>>> import torch
>>> pool = build_pooling("TSP", 4)
>>> x = torch.randn(2, 4, 10)
>>> pool(x, torch.tensor([6, 10])).shape, pool.output_size
(torch.Size([2, 8]), 8)
>>> bool(torch.allclose(pool(x[:1, :, :6]), pool(x, torch.tensor([6, 10]))[:1], atol=1e-6))
True
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvector.errors import ConfigError
from mvector.models.common import batch_norm_tm, masked_mean_std, prepare_lengths, time_mask
from mvector.models.registries import POOLINGS

__all__ = [
    "AttentiveStatsPool",
    "SelfAttentivePool",
    "TemporalStatsPool",
    "TemporalAveragePool",
    "POOLINGS",
    "build_pooling",
]


def _masked_softmax(logits: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Softmax over time (dim 1) of time-major logits; padded frames get exactly zero weight."""
    if mask is not None:
        logits = logits.masked_fill(mask == 0, float("-inf"))
    return torch.softmax(logits, dim=1)


class _Pooling(nn.Module):
    """Common entry point: ``forward(x [B, C, T], lengths)`` → ``forward_tm(x [B, T, C], mask [B, T, 1])``."""

    output_size: int

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        lengths = prepare_lengths(lengths, x.shape[-1], x.device)
        xt = x.transpose(1, 2)
        return self.forward_tm(xt, time_mask(lengths, x.shape[-1], x))

    def forward_tm(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@POOLINGS.register("ASP", aliases=("AttentiveStatsPool",))
class AttentiveStatsPool(_Pooling):
    """Attentive statistics pooling: per-channel attention over frames, weighted mean and std (2·C outputs).

    The attention is ``softmax_t(W2 · tanh(BN(ReLU(W1 · h_t + b1))) + b2)`` with one weight per channel and
    frame. With ``global_context=True`` (ECAPA-TDNN) ``h_t`` is ``[x_t, mean, std]``; ``W1`` is applied to the
    three parts separately, so the ``3C × T`` concatenation is never built. The weighted variance is taken of
    centred values, for precision.

    >>> pool = AttentiveStatsPool(8, attention_channels=4).eval()
    >>> pool(torch.randn(3, 8, 20), torch.tensor([20, 5, 11])).shape
    torch.Size([3, 16])
    """

    def __init__(self, in_channels: int, attention_channels: int = 128, global_context: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.global_context = global_context
        context = 3 * in_channels if global_context else in_channels
        self.attention_in = nn.Linear(context, attention_channels)
        self.attention_bn = nn.BatchNorm1d(attention_channels)
        self.attention_out = nn.Linear(attention_channels, in_channels)
        self.output_size = 2 * in_channels

    def forward_tm(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Pool a time-major ``x [B, T, C]`` with a ``[B, T, 1]`` mask (or None)."""
        c = self.in_channels
        weight = self.attention_in.weight
        if self.global_context:
            mean, std = masked_mean_std(x, mask)
            context = F.linear(torch.cat([mean, std], dim=-1), weight[:, c:], self.attention_in.bias)
            h = F.linear(x, weight[:, :c]) + context
        else:
            h = self.attention_in(x)
        h = torch.tanh(batch_norm_tm(self.attention_bn, torch.relu_(h)))
        alpha = _masked_softmax(self.attention_out(h), mask)
        mean = (alpha * x).sum(dim=1, keepdim=True)
        centred = x - mean
        var = (alpha * centred * centred).sum(dim=1)
        return torch.cat([mean.squeeze(1), var.clamp(min=1e-6).sqrt()], dim=1)


@POOLINGS.register("SAP", aliases=("SelfAttentivePool",))
class SelfAttentivePool(_Pooling):
    """Self-attentive pooling: one scalar attention weight per frame, attention-weighted mean (C outputs).

    >>> pool = SelfAttentivePool(8, attention_channels=4)
    >>> pool(torch.randn(2, 8, 7)).shape
    torch.Size([2, 8])
    """

    def __init__(self, in_channels: int, attention_channels: int = 128):
        super().__init__()
        self.attention_in = nn.Linear(in_channels, attention_channels)
        self.attention_out = nn.Linear(attention_channels, 1)
        self.output_size = in_channels

    def forward_tm(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Pool a time-major ``x [B, T, C]`` with a ``[B, T, 1]`` mask (or None)."""
        alpha = _masked_softmax(self.attention_out(torch.tanh(self.attention_in(x))), mask)
        return torch.bmm(alpha.transpose(1, 2), x).squeeze(1)


@POOLINGS.register("TSP", aliases=("TemporalStatsPool",))
class TemporalStatsPool(_Pooling):
    """Temporal statistics pooling (x-vector): mean and standard deviation over real frames (2·C outputs).

    >>> TemporalStatsPool(3)(torch.ones(1, 3, 5)).tolist()[0][:3]
    [1.0, 1.0, 1.0]
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.output_size = 2 * in_channels

    def forward_tm(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Pool a time-major ``x [B, T, C]`` with a ``[B, T, 1]`` mask (or None)."""
        mean, std = masked_mean_std(x, mask)
        return torch.cat([mean, std], dim=-1).squeeze(1)


@POOLINGS.register("TAP", aliases=("TemporalAveragePool",))
class TemporalAveragePool(_Pooling):
    """Temporal average pooling: mean over real frames (C outputs).

    >>> TemporalAveragePool(2)(torch.tensor([[[1.0, 3.0, 50.0]]]), torch.tensor([2])).tolist()
    [[2.0]]
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.output_size = in_channels

    def forward_tm(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Pool a time-major ``x [B, T, C]`` with a ``[B, T, 1]`` mask (or None)."""
        if mask is None:
            return x.mean(dim=1)
        weights = mask.transpose(1, 2)
        return (torch.bmm(weights, x) / weights.sum(dim=-1, keepdim=True)).squeeze(1)


def build_pooling(name: str, in_channels: int, **kwargs: Any) -> nn.Module:
    """Pooling layer ``name`` (ASP, SAP, TSP, TAP; any case) over ``in_channels`` channels.

    Unknown names and keyword arguments raise :class:`~mvector.errors.ConfigError` naming the valid ones.

    >>> build_pooling("asp", 16, attention_channels=8, global_context=False).output_size
    32
    >>> build_pooling("ASP", 16, global_contxt=False)
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: unknown key 'global_contxt' in pooling_conf (ASP); did you mean 'global_context'? \
Valid keys: attention_channels, global_context
    """
    key = POOLINGS.resolve(name)
    if int(in_channels) < 1:
        raise ConfigError(f"pooling {key}: in_channels must be positive, got {in_channels}")
    return POOLINGS.build(key, kwargs, int(in_channels))
