"""2-D ResNet building blocks over the (frequency, time) plane, shared by :class:`Res2Net` and :class:`ResNetSE`.

>>> ResNet2dBase.freq_out(80)
10
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from mvector.errors import ConfigError
from mvector.models.common import EmbeddingHead, conv_out_lengths, length_mask, masked_mean, prepare_lengths, time_mask
from mvector.models.pooling import build_pooling

__all__ = ["SqueezeExcite2d", "ResNet2dBase", "strided_lengths_mask"]


class SqueezeExcite2d(nn.Module):
    """Squeeze-excitation for ``[B, C, F, T]`` maps: masked mean over frequency and time → channel gate.

    >>> se = SqueezeExcite2d(8, reduction=4)
    >>> se(torch.randn(2, 8, 5, 6), None).shape
    torch.Size([2, 8, 5, 6])
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        b, c = x.shape[0], x.shape[1]
        squeezed = masked_mean(x, mask).reshape(b, c)
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(squeezed))))
        return x * gate.reshape(b, c, 1, 1)


class ResNet2dBase(nn.Module):
    """Shared 2-D ResNet trunk over the (frequency, time) plane, for :class:`Res2Net` and :class:`ResNetSE`.

    ``[B, frames, F]`` features become a one-channel image ``[B, 1, F, frames]``; a 3×3 stem conv and four
    stages of residual blocks follow (stage strides 1, 2, 2, 2 on both axes). Frame counts go through the
    strides with :func:`conv_out_lengths`; each block zeroes padded frames before its 3×3 convolutions. The
    last map ``[B, C, F', T']`` is flattened to ``[B, C·F', T']`` for pooling, where ``F'`` follows from
    ``input_size`` (see :meth:`freq_out`), so any feature size works.

    Subclasses implement ``make_block(in_channels, planes, stride, first) -> (block, out_channels)``; a block's
    ``forward(x, lengths, mask)`` returns ``(x, lengths, mask)`` at its output resolution.

    >>> ResNet2dBase.freq_out(80), ResNet2dBase.freq_out(513), ResNet2dBase.freq_out(40)
    (10, 65, 5)
    """

    strides = (1, 2, 2, 2)

    def __init__(
        self,
        input_size: int,
        embd_dim: int,
        pooling_type: str,
        channels: int,
        layers: Any,
        attention_channels: int,
        pooling_conf: Optional[Mapping[str, Any]],
    ):
        super().__init__()
        layers = [int(n) for n in layers]
        if len(layers) != len(self.strides) or min(layers) < 1:
            raise ConfigError(f"{type(self).__name__}: layers must be 4 positive block counts, got {layers}")
        self.input_size = int(input_size)
        self.embd_dim = int(embd_dim)
        self.channels = int(channels)
        self.stem = nn.Conv2d(1, self.channels, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(self.channels)
        blocks = []
        in_ch = self.channels
        for stage, (count, stride) in enumerate(zip(layers, self.strides)):
            planes = self.channels * 2**stage
            for i in range(count):
                block, in_ch = self.make_block(in_ch, planes, stride if i == 0 else 1, i == 0)
                blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.stats_channels = in_ch * self.freq_out(self.input_size)
        pool_kwargs = dict(pooling_conf or {})
        if pooling_type.upper() in ("ASP", "SAP"):
            pool_kwargs.setdefault("attention_channels", attention_channels)
        self.pooling = build_pooling(pooling_type, self.stats_channels, **pool_kwargs)
        self.head = EmbeddingHead(self.pooling.output_size, self.embd_dim)

    @classmethod
    def freq_out(cls, input_size: int) -> int:
        """Frequency bins left after the stage strides (3×3 convs, padding 1)."""
        f = int(input_size)
        for s in cls.strides:
            f = (f - 1) // s + 1
        return f

    def make_block(self, in_channels: int, planes: int, stride: int, first: bool) -> tuple[nn.Module, int]:
        raise NotImplementedError

    def forward(self, features: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        # Channels-last (NHWC) activations: faster 2-D convolutions on CPU (oneDNN) and on GPU tensor cores.
        x = features.transpose(1, 2).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        lengths = prepare_lengths(lengths, x.shape[-1], x.device)
        mask = length_mask(lengths, x.shape[-1], x, ndim=4)
        if mask is not None:
            x = x * mask
        x = torch.relu_(self.stem_bn(self.stem(x)))
        if mask is not None:
            x = x * mask
        for block in self.blocks:
            x, lengths, mask = block(x, lengths, mask)
        b, c, f, t = x.shape
        x = x.reshape(b, c * f, t).transpose(1, 2)
        return self.head(self.pooling.forward_tm(x, time_mask(lengths, t, x)))


def strided_lengths_mask(
    h: Tensor, lengths: Optional[Tensor], mask: Optional[Tensor], stride: int
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Frame counts and 4-D mask after a 3×3 (padding 1) or 1×1 conv of ``stride`` whose output is ``h``.

    >>> h = torch.zeros(2, 1, 1, 4)
    >>> n, m = strided_lengths_mask(h, torch.tensor([7, 3]), None, 2)
    >>> n.tolist(), m.flatten().tolist()
    ([4, 2], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    """
    if stride == 1 or lengths is None:
        return lengths, mask
    lengths = conv_out_lengths(lengths, 3, stride, 1)
    return lengths, length_mask(lengths, h.shape[-1], h, ndim=4)
