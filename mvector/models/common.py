"""Length masks and small building blocks shared by the backbones.

Every backbone keeps padded frames at exactly zero in front of each operation that mixes frames (convolutions
with a kernel longer than one frame, squeeze-excitation means, pooling), so a clip padded inside a batch gives
the embedding it gets alone. Point-wise operations (1×1 convolutions, batch norm, activations) cannot leak
across frames and are left unmasked. A mask is a float tensor broadcastable over channels (``[B, 1, T]``,
``[B, T, 1]`` for the time-major 1-D backbones, ``[B, 1, 1, T]`` for the 2-D ones); multiplying by it costs
one element-wise product. Strided 2-D layers carry the frame counts through :func:`conv_out_lengths`.

>>> import torch
>>> mask = length_mask(torch.tensor([2, 4]), 4, torch.zeros(1))
>>> mask.tolist()
[[[1.0, 1.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]]]
>>> x = torch.tensor([[[1.0, 3.0, 100.0, 100.0]], [[1.0, 2.0, 3.0, 6.0]]])
>>> masked_mean(x, mask).flatten().tolist()
[2.0, 3.0]
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "length_mask",
    "prepare_lengths",
    "conv_out_lengths",
    "masked_mean",
    "masked_mean_std",
    "EmbeddingHead",
    "time_mask",
    "batch_norm_tm",
    "TimeConv",
]


def prepare_lengths(lengths: Optional[Tensor], num_frames: int, device: torch.device) -> Optional[Tensor]:
    """Frame counts as int64 on ``device``, clipped to ``[1, num_frames]``; None stays None.

    >>> prepare_lengths(torch.tensor([0.0, 7.0, 3.0]), 5, torch.device("cpu")).tolist()
    [1, 5, 3]
    """
    if lengths is None:
        return None
    lengths = lengths.to(device=device, dtype=torch.int64).reshape(-1)
    return lengths.clamp(min=1, max=num_frames)


def length_mask(lengths: Optional[Tensor], num_frames: int, like: Tensor, ndim: int = 3) -> Optional[Tensor]:
    """Float mask ``[B, 1, T]`` (or ``[B, 1, 1, T]`` when ``ndim=4``): 1 on real frames, 0 on padding.

    Returns None when ``lengths`` is None (no padding: nothing to mask). The dtype and device follow ``like``.

    >>> length_mask(torch.tensor([1, 2]), 3, torch.zeros(1), ndim=4).shape
    torch.Size([2, 1, 1, 3])
    """
    if lengths is None:
        return None
    frames = torch.arange(num_frames, device=lengths.device)
    mask = (frames.unsqueeze(0) < lengths.unsqueeze(1)).to(like.dtype)
    shape = (mask.shape[0],) + (1,) * (ndim - 2) + (mask.shape[1],)
    return mask.reshape(shape)


def conv_out_lengths(lengths: Optional[Tensor], kernel_size: int, stride: int, padding: int, dilation: int = 1):
    """Output frame counts of a convolution (or pooling) along time for input frame counts ``lengths``.

    >>> conv_out_lengths(torch.tensor([7, 8, 1]), 3, 2, 1).tolist()
    [4, 4, 1]
    """
    if lengths is None:
        return None
    span = dilation * (kernel_size - 1) + 1
    return torch.div(lengths + 2 * padding - span, stride, rounding_mode="floor") + 1


def masked_mean(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean over the last (time) axis counting only real frames; keeps the time axis (size 1).

    Works for ``[B, C, T]`` with a ``[B, 1, T]`` mask and ``[B, C, F, T]`` with a ``[B, 1, 1, T]`` mask (the
    mean is then also taken over frequency). The masked sum is a batched matrix product.

    >>> x = torch.arange(8.0).reshape(1, 2, 4)
    >>> masked_mean(x, torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])).flatten().tolist()
    [0.5, 4.5]
    """
    if x.dim() == 4:
        b, c, f, t = x.shape
        if mask is None:
            return x.mean(dim=(2, 3), keepdim=True)
        total = torch.bmm(x.reshape(b, c * f, t), mask.reshape(b, t, 1)).reshape(b, c, f).sum(2)
        count = mask.reshape(b, t).sum(1).reshape(b, 1) * f
        return (total / count).reshape(b, c, 1, 1)
    if mask is None:
        return x.mean(dim=-1, keepdim=True)
    b, _, t = x.shape
    total = torch.bmm(x, mask.reshape(b, t, 1))
    return total / mask.sum(dim=-1, keepdim=True)


def masked_mean_std(x: Tensor, mask: Optional[Tensor], eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation ``[B, 1, C]`` over time of a time-major ``x [B, T, C]``, real frames only.

    ``mask`` is ``[B, T, 1]`` (see :func:`time_mask`) or None. The variance is taken of the centred values (for
    precision) and clamped at ``eps`` before the square root, so constant inputs give finite gradients.

    >>> x = torch.tensor([[[1.0], [3.0], [9.0]]])
    >>> mean, std = masked_mean_std(x, torch.tensor([[[1.0], [1.0], [0.0]]]))
    >>> mean.item(), std.item()
    (2.0, 1.0)
    """
    if mask is None:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    else:
        weights = mask.transpose(1, 2)
        count = weights.sum(dim=-1, keepdim=True)
        mean = torch.bmm(weights, x) / count
        centred = x - mean
        var = torch.bmm(weights, centred * centred) / count
    return mean, var.clamp(min=eps).sqrt()


def time_mask(lengths: Optional[Tensor], num_frames: int, like: Tensor) -> Optional[Tensor]:
    """Float mask ``[B, T, 1]`` for time-major ``[B, T, C]`` tensors (None when ``lengths`` is None).

    >>> time_mask(torch.tensor([1, 3]), 3, torch.zeros(1)).squeeze(-1).tolist()
    [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """
    mask = length_mask(lengths, num_frames, like)
    return None if mask is None else mask.transpose(1, 2)


def batch_norm_tm(bn: nn.Module, x: Tensor) -> Tensor:
    """Apply a ``BatchNorm1d`` to a time-major ``[B, T, C]`` tensor (channels last).

    >>> bn = nn.BatchNorm1d(4).eval()
    >>> batch_norm_tm(bn, torch.ones(2, 3, 4)).shape
    torch.Size([2, 3, 4])
    """
    return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class TimeConv(nn.Module):
    """1-D convolution over time for time-major ``[B, T, C_in]`` tensors, same-length (zero) padding.

    Holds a ``Conv1d``-shaped weight ``[C_out, C_in, k]``. A 1-frame kernel is one matrix product over the
    contiguous channel axis; a longer kernel gathers the ``k`` dilated time shifts side by side and does one
    matrix product, which on CPU is faster than ``conv1d`` on ``[B, C, T]`` plus the layout changes it needs.

    >>> conv = TimeConv(3, 5, kernel_size=3, dilation=2)
    >>> x = torch.randn(2, 11, 3)
    >>> ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=2, dilation=2).transpose(1, 2)
    >>> bool(torch.allclose(conv(x), ref, atol=1e-5))
    True
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1, bias: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"TimeConv: kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation = kernel_size, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_channels * kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel_size == 1:
            return F.linear(x, self.weight.reshape(self.out_channels, self.in_channels), self.bias)
        pad = self.dilation * (self.kernel_size - 1) // 2
        frames = x.shape[1]
        padded = F.pad(x, (0, 0, pad, pad))
        shifts = [padded[:, j * self.dilation : j * self.dilation + frames] for j in range(self.kernel_size)]
        weight = self.weight.permute(0, 2, 1).reshape(self.out_channels, self.kernel_size * self.in_channels)
        return F.linear(torch.cat(shifts, dim=-1), weight, self.bias)


class EmbeddingHead(nn.Module):
    """Pooled statistics → batch norm → linear → batch norm: the embedding layer shared by the backbones.

    >>> head = EmbeddingHead(10, 4).eval()
    >>> head(torch.randn(3, 10)).shape
    torch.Size([3, 4])
    """

    def __init__(self, in_features: int, embd_dim: int):
        super().__init__()
        self.bn_pool = nn.BatchNorm1d(in_features)
        self.linear = nn.Linear(in_features, embd_dim)
        self.bn_embd = nn.BatchNorm1d(embd_dim)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.bn_embd(self.linear(self.bn_pool(pooled)))
